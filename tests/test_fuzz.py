"""Fuzzing the arguments: the only outcomes are a documented error or the plain loop's result.

Random shapes (zero-sized axes included), dtypes, split sizes of every Python and NumPy kind,
non-array inputs, modules of every kind and states of wrong structure go to all five functions
on every backend. A call must either raise TypeError/ValueError with a message from the
docs' table of rejected inputs (docs/errors.md), or return what a plain loop over the same
backend's arrays returns.
"""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ERROR_ROWS, error_pattern

from dualstep.testing import FUNCTIONS, STATEFUL_FUNCTIONS, TIME_LAST_FUNCTIONS, call

DOCUMENTED = [
    (kind, re.compile(error_pattern(message), re.S)) for kind, message in ERROR_ROWS.values()
]


def _double(a):
    return a * 2


def _plus_one(a):
    return a + 1


def _accumulate(a, s):
    return a + s, s + a


MODULES = {
    "function": _double,
    "list": [_double, _plus_one],
    "tuple": (_plus_one, _double),
    "empty list": [],
    "not callable": 3,
    "list with a non-callable": [_double, "x"],
}  # and on torch an nn.Module
SPLITS = [1, 2, 3, 5, 0, -1, True, 2.0, "2", None, np.int64(2), np.uint8(3), np.int16(1)]
SPLITS += [np.float32(2)]
NOT_ARRAYS = [None, 3.0, "x", [1.0, 2.0]]
DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"]


@st.composite
def calls(draw, backend):
    function = draw(st.sampled_from(FUNCTIONS))
    if draw(st.integers(0, 9)) == 0:
        x = draw(st.sampled_from(NOT_ARRAYS))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=4)))
        dtype = draw(st.sampled_from(DTYPES))
        x = backend.asarray((np.arange(int(np.prod(shape))).reshape(shape) % 3).astype(dtype))
    kinds = [*MODULES, "stateful"] + (["nn.Module"] if backend.name == "torch" else [])
    module_kind = draw(st.sampled_from(kinds))
    split = draw(st.sampled_from(SPLITS))
    state_kind = draw(st.sampled_from(["none", "array", "tuple", "short tuple"]))
    return function, x, module_kind, split, state_kind


def _state(function, x, kind, module_kind, backend):
    """A valid state for the stateful module; for module lists a state of every structure
    (valid, not a tuple, too short); None otherwise."""
    if function not in STATEFUL_FUNCTIONS or not hasattr(x, "shape") or len(x.shape) == 0:
        return None
    step_shape = tuple(x.shape[:-1] if function == "t_last_multi_step_forward" else x.shape[1:])
    one_step = backend.asarray(np.zeros(step_shape, np.float64))
    if module_kind == "stateful":
        return one_step
    if module_kind not in ("list", "tuple") or kind == "none":
        return None
    return {"array": one_step, "tuple": (None, None), "short tuple": (None,)}[kind]


def _loop(function, x, module, state, backend):
    """The plain loop, on the backend's own arrays, converted to NumPy."""
    mods = list(module) if isinstance(module, (list, tuple)) else [module]
    time_last = function in TIME_LAST_FUNCTIONS
    steps = [x[..., t] for t in range(x.shape[-1])] if time_last else list(x)
    ys = []
    for xt in steps:
        if state is None:
            for m in mods:
                xt = m(xt)
        else:
            states = list(state) if isinstance(state, tuple) else [state]
            for i, m in enumerate(mods):
                if states[i] is None:
                    xt = m(xt)
                else:
                    xt, states[i] = m(xt, states[i])
            state = tuple(states) if isinstance(state, tuple) else states[0]
        ys.append(backend.to_numpy(xt))
    return np.stack(ys, axis=-1 if time_last else 0)


@settings(max_examples=60)
@given(data=st.data())
def test_fuzzed_arguments(backend, data):
    function, x, module_kind, split, state_kind = data.draw(calls(backend))
    if module_kind == "nn.Module":
        import torch

        module = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity())
    else:
        module = _accumulate if module_kind == "stateful" else MODULES[module_kind]
    if module_kind == "stateful" and function not in STATEFUL_FUNCTIONS:
        module = _double  # the stateless functions take stateless modules
    state = _state(function, x, state_kind, module_kind, backend)
    try:
        out = call(function, module, x, state=state, split_size=split)
    except (TypeError, ValueError) as e:
        kinds = [k for k, p in DOCUMENTED if p.fullmatch(str(e))]
        assert type(e).__name__ in kinds, f"undocumented {type(e).__name__}: {e}"
        # `_accumulate` keeps its float64 state's shape and dtype: never a state change
        assert "must return it with the structure" not in str(e), str(e)
        return
    y = out if state is None else out[0]
    got = backend.to_numpy(y)
    if function == "seq_to_ann_forward" and x.shape[0] == 0:  # no step to loop over: shape only
        assert got.shape == tuple(x.shape)
        return
    want = _loop(function, x, module, state, backend)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want.astype(got.dtype))

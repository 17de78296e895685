"""`lengths=`: variable-length sequences. The rule: each batch element of a padded call gives
the outputs (up to its length) and final state of that element run alone on its own steps;
after its length its state is frozen and its outputs are `fill`."""

from __future__ import annotations

import numpy as np
import pytest
from cases import CASE_IDS, CASES
from hypothesis import given, settings
from hypothesis import strategies as st
from support import MAKERS, assert_close

import dualstep as ds
from dualstep._tree import leaves_with_path
from dualstep.testing import call_time_first
from dualstep.testing.strategies import sequences

STATEFUL = [c for c in CASES if c.initial_state is not None]
STATEFUL_IDS = [c.name for c in STATEFUL]


@st.composite
def padded(draw, dtypes=("float32", "float64")):
    """A sequence and lengths in ``[0, T]`` for each batch element (0 and T included often)."""
    x = draw(sequences(dtypes=dtypes))
    t, b = x.shape[:2]
    lengths = draw(st.lists(st.sampled_from([0, t, *range(t + 1)]), min_size=b, max_size=b))
    return x, lengths


def _select(tree, b):
    """Element `b` of every array leaf of a final state (None kept), as NumPy."""
    if tree is None:
        return None
    if isinstance(tree, tuple):
        return tuple(_select(v, b) for v in tree)
    if isinstance(tree, dict):
        return {k: _select(v, b) for k, v in tree.items()}
    return np.asarray(tree)[b : b + 1]


def _check_state(got, want, dtype, exact):
    got_leaves = list(leaves_with_path(got, "state", sort_keys=True))
    want_leaves = list(leaves_with_path(want, "state", sort_keys=True))
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (_, g), (_, w) in zip(got_leaves, want_leaves, strict=True):
        if w is not None:
            assert_close(g, w, dtype=dtype, exact=exact)


def _alone(backend, case, x, b, n):
    """Element `b` run alone on its own `n` steps: outputs and final state (NumPy). On JAX
    NumPy runs it (the comparison is within tolerance there; each length would compile)."""
    backend = MAKERS["numpy"]() if backend.name == "jax" else backend
    s0 = backend.tree(case.initial_state((1, *x.shape[2:]), x.dtype))
    if n == 0:
        return None, backend.tree_numpy(s0)
    y, s = call_time_first("multi_step_forward", case.step, backend.asarray(x[:n, b : b + 1]),
                           state=s0)  # fmt: skip
    return backend.tree_numpy(y), backend.tree_numpy(s)


FUNCTIONS = ["multi_step_forward", "t_last_multi_step_forward", "chunk_multi_step_forward"]


def _check_rule(backend, case, function, data):
    """Bit for bit on torch and NumPy; JAX within the dtype's tolerance (XLA may fuse the
    batched step otherwise)."""
    x, lengths = data
    exact = backend.name != "jax"
    state = backend.tree(case.initial_state(x.shape[1:], x.dtype))
    lengths_arg = lengths if len(lengths) % 2 else backend.asarray(np.array(lengths))
    y, final = call_time_first(
        function, case.step, backend.asarray(x), state=state, split_size=3,
        lengths=lengths_arg, fill=-1.0,
    )  # fmt: skip
    y, final = backend.tree_numpy(y), backend.tree_numpy(final)
    ys = y if isinstance(y, tuple) else (y,)
    for b, n in enumerate(lengths):
        y_alone, s_alone = _alone(backend, case, x, b, n)
        alone = () if y_alone is None else (y_alone if isinstance(y_alone, tuple) else (y_alone,))
        for i, out in enumerate(ys):
            if n:
                assert_close(out[:n, b : b + 1], alone[i], dtype=x.dtype, exact=exact)
            np.testing.assert_array_equal(out[n:, b], np.asarray(-1.0, out.dtype))
        _check_state(_select(final, b), s_alone, x.dtype, exact)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("case", STATEFUL, ids=STATEFUL_IDS)
@pytest.mark.parametrize("name", ["numpy", "torch"])
@settings(max_examples=10)
@given(data=padded())
def test_each_element_equals_itself_run_alone(name, case, function, data):
    _check_rule(MAKERS[name](), case, function, data)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("case", STATEFUL, ids=STATEFUL_IDS)
@settings(max_examples=4)  # each example compiles a program for its shapes
@given(data=padded())
def test_each_element_equals_itself_run_alone_on_jax(jax_backend, case, function, data):
    _check_rule(jax_backend, case, function, data)

"""What the tests share: each backend's array makers, the one `assert_close`, and the docs'
table of rejected inputs. Tests import this module; fixtures live in conftest."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dualstep import neurons as _neurons
from dualstep import surrogate as _surrogate
from dualstep._tree import map_with_path
from dualstep.testing import TOLERANCES


@dataclasses.dataclass(frozen=True)
class Backend:
    """How a test makes and reads arrays of one backend."""

    name: str
    asarray: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]

    def tree(self, value: Any) -> Any:
        """`asarray` over nested tuples/lists/dicts of NumPy arrays (None kept)."""
        return _tree_map(self.asarray, value)

    def tree_numpy(self, value: Any) -> Any:
        return _tree_map(self.to_numpy, value)


def _tree_map(fn: Callable, value: Any) -> Any:
    """`fn` on every array of a nesting; None stays None."""
    return map_with_path(lambda a, _: None if a is None else fn(a), value, "")


def _numpy_backend() -> Backend:
    return Backend("numpy", lambda a: np.array(a, copy=True), np.asarray)


def _torch_backend() -> Backend:
    torch = pytest.importorskip("torch")
    return Backend(
        "torch",
        lambda a: torch.from_numpy(np.array(a, copy=True)),
        lambda t: t.detach().cpu().numpy(),
    )


def _jax_backend() -> Backend:
    pytest.importorskip("jax")
    import jax.numpy as jnp

    return Backend("jax", jnp.asarray, np.asarray)


MAKERS = {"numpy": _numpy_backend, "torch": _torch_backend, "jax": _jax_backend}


def assert_close(actual: Any, expected: Any, *, dtype: Any = None, exact: bool = False) -> None:
    """Shape, then dtype, then values; tuples item by item; tolerance picked by dtype.

    `dtype` is the dtype `actual` must have (default: `expected`'s); values are compared after
    casting `expected` to it.
    """
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple), f"expected a tuple, got {type(actual).__qualname__}"
        assert len(actual) == len(expected), f"tuple length {len(actual)} != {len(expected)}"
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e, dtype=dtype, exact=exact)
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    want = np.dtype(dtype) if dtype is not None else expected.dtype
    assert actual.dtype == want, f"dtype {actual.dtype} != {want}"
    if exact:
        np.testing.assert_array_equal(actual, expected.astype(want))
        return
    rtol, atol = TOLERANCES.get(want.name, (0, 0))
    np.testing.assert_allclose(actual, expected.astype(want), rtol=rtol, atol=atol)


# The public modules, each with its `__all__`: the API reference documents every name in them.
PUBLIC_MODULES = ("dualstep", "dualstep.surrogate", "dualstep.neurons", "dualstep.interop")
PUBLIC_MODULES += ("dualstep.port", "dualstep.testing", "dualstep.testing.strategies")
PUBLIC_MODULES += ("dualstep.nir", "dualstep.export")

# The docs' table of rejected inputs (docs/errors.md): row number -> (exception name, message),
# where "..." in a message stands for the received value.
ERRORS_PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "errors.md"
_ROW = re.compile(r"^\| (\d+) \| .*? \| .*? \| `(\w+)` \| `` (.*) `` \|$")
ERROR_ROWS = {
    int(m[1]): (m[2], m[3]) for m in map(_ROW.match, ERRORS_PAGE.read_text().splitlines()) if m
}


def error_pattern(message: str) -> str:
    """A regular expression for a row's message, ``...`` matching anything."""
    return ".*".join(re.escape(part) for part in message.split("..."))


def surrogate_lifs(spikes: list) -> Callable:
    """One step holding a LIF per spike function in `spikes`: a voltage each (the state, a
    tuple), all driven by the same x; the spikes as a tuple."""

    def step(x: Any, vs: tuple) -> tuple:
        ys, new = [], []
        for spike, v in zip(spikes, vs, strict=True):
            h = v + (x - v) / 2.0
            s = spike(h - 1.0)
            ys.append(s)
            new.append(h * (1.0 - s))
        return tuple(ys), tuple(new)

    return step


def every_neuron(w: Any = None) -> tuple[list, Callable, Callable]:
    """One instance of each neuron (fixed, spiking hyperparameters; ParametricLIF's `w` given,
    or from ``init_tau=3``), and one step holding all of them: a state dict by neuron name,
    the outputs as a tuple."""
    plif = _neurons.ParametricLIF(init_tau=3.0, decay_input=False)
    each = {
        "IF": _neurons.IF(v_reset=None),
        "LIF": _neurons.LIF(tau=2.0, surrogate_function=_surrogate.ATan()),
        "ParametricLIF": plif if w is None else plif.replace(w=w),
        "QIF": _neurons.QIF(surrogate_function=_surrogate.Erf()),
        "EIF": _neurons.EIF(v_reset=None, detach_reset=True),
        "Izhikevich": _neurons.Izhikevich(a=0.3, b=0.2),
        "CubaLIF": _neurons.CubaLIF(),
        "AdaptiveLIF": _neurons.AdaptiveLIF(tau_adapt=4.0),
        "LI": _neurons.LI(),
    }
    assert set(each) == {cls.__name__ for cls in _neurons.NEURONS}

    def step(x, state):
        ys, new = [], {}
        for name, neuron in each.items():
            y, new[name] = neuron(x, state[name])
            ys.append(y)
        return tuple(ys), new

    def initial_state(x_seq):
        return {name: neuron.initial_state(x_seq) for name, neuron in each.items()}

    return list(each), step, initial_state


def variables(state: Any) -> dict:
    """A neuron's state as a dict by variable name."""
    return state if isinstance(state, dict) else {"v": state}


# What torch 2.13 warns while torch.export traces a dualstep call (docs, "Deploying"), as
# pytest's filterwarnings entries: Dynamo traces around array-api-compat's lru_cache-wrapped
# namespace lookup (a lookup by type, the same either way); its tracing of a
# torch.autograd.Function (a surrogate spike) inside a `scan` instantiates the Function base
# class, which torch deprecates; torch.onnx uses a torch pytree API that torch deprecates.
EXPORT_WARNINGS = [
    "ignore:Dynamo detected a call to a `functools.lru_cache`:UserWarning",
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
    ":DeprecationWarning",
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning",
]

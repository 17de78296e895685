"""One `backend` fixture over numpy/torch/jax, conversions, and the one `assert_close` helper."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from dualstep._tree import map_with_path
from dualstep.testing import BACKENDS, TOLERANCES

# JAX compiles on first call, so no per-example deadline. The backend fixture only flips
# configuration that it restores, so reusing it across examples is safe.
settings.register_profile(
    "dualstep",
    deadline=None,
    max_examples=int(os.environ.get("DUALSTEP_MAX_EXAMPLES", "12")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("dualstep")


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


@pytest.fixture
def jax_x64():
    """JAX with float64 enabled and full-precision float32 matmuls, restored afterwards."""
    jax = pytest.importorskip("jax")
    old = (jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision)
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    yield jax
    jax.config.update("jax_enable_x64", old[0])
    jax.config.update("jax_default_matmul_precision", old[1])


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    if request.param == "jax":
        request.getfixturevalue("jax_x64")
    return MAKERS[request.param]()


@pytest.fixture
def torch_backend() -> Backend:
    return _torch_backend()


@pytest.fixture
def jax_backend(jax_x64) -> Backend:
    return _jax_backend()


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

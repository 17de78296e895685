"""The fixtures: one `backend` over numpy/torch/jax (from `support.MAKERS`), `jax_x64`, and the
hypothesis profile."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from support import MAKERS, Backend

from dualstep.testing import BACKENDS

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
    return MAKERS["torch"]()


@pytest.fixture
def jax_backend(jax_x64) -> Backend:
    return MAKERS["jax"]()

"""The backend is chosen per call by the type of `x_seq`, cached per type."""

from __future__ import annotations

import numpy as np
import pytest

import dualstep as ds
from dualstep import _dispatch


def test_numpy_scalar_and_subclass():
    with pytest.raises(TypeError, match=r"`x_seq` must be .*; got numpy\.float64"):
        ds.multi_step_forward(np.float64(1.0), lambda x: x)
    masked = np.ma.masked_array(np.ones((2, 3)))  # an ndarray subclass stays on NumPy
    assert _dispatch.backend_for(masked).__name__ == "dualstep.backends.numpy"


def test_torch_parameter_is_torch():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.ones(3, 2))
    y = ds.multi_step_forward(p, lambda x: x * 2)
    assert isinstance(y, torch.Tensor) and y.requires_grad


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad"])
def test_jax_tracers_dispatch_to_jax(transform):
    jax = pytest.importorskip("jax")
    seen = []

    def f(x):
        seen.append(_dispatch.backend_for(x).__name__)
        return ds.multi_step_forward(x, lambda a: a * a).sum()

    x = jax.numpy.ones((3, 2))
    {"jit": jax.jit(f), "vmap": jax.vmap(f), "grad": jax.grad(f)}[transform](x)
    assert seen == ["dualstep.backends.jax"]


def test_choice_is_per_call():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    for x, kind in [(np.ones((2, 1)), np.ndarray), (torch.ones(2, 1), torch.Tensor)]:
        assert isinstance(ds.multi_step_forward(x, lambda a: a), kind)
    assert type(ds.multi_step_forward(jnp.ones((2, 1)), lambda a: a)).__module__.startswith("jax")

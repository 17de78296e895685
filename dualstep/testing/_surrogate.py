"""A spike with a sigmoid surrogate gradient, for the tests of custom-gradient steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..surrogate import Sigmoid


def surrogate_spike(framework: str, alpha: float = 4.0) -> Callable[[Any], Any]:
    """The Heaviside spike ``h >= 0`` whose gradient is that of ``sigmoid(alpha * h)``:
    :class:`dualstep.surrogate.Sigmoid`, which is a ``torch.autograd.Function`` on torch
    tensors and a ``jax.custom_vjp`` on JAX arrays, the custom-gradient steps fused kernels
    must honour. `framework` (``"torch"`` or ``"jax"``) names the one a test means.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from dualstep.testing import surrogate_spike
    >>> spike = surrogate_spike("jax")
    >>> spike(jnp.array([-1.0, 0.5])).tolist()
    [0.0, 1.0]
    >>> float(jax.grad(lambda h: spike(h).sum())(jnp.array(0.0)))  # alpha / 4 at h = 0
    1.0
    """
    if framework not in ("torch", "jax"):
        raise ValueError(f"`framework` must be 'torch' or 'jax'; got {framework!r}")
    return Sigmoid(alpha)

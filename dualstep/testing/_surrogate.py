"""A spike with a surrogate gradient, written the way each framework's users write one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def surrogate_spike(framework: str, alpha: float = 4.0) -> Callable[[Any], Any]:
    """The Heaviside spike ``h >= 0`` whose gradient is that of ``sigmoid(alpha * h)``
    (SpikingJelly's ``surrogate.Sigmoid``), as a ``torch.autograd.Function`` (``"torch"``) or a
    ``jax.custom_vjp`` (``"jax"``): the custom-gradient steps fused kernels must honour.

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
    if framework == "torch":
        import torch

        class Spike(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, h: Any) -> Any:
                ctx.save_for_backward(h)
                return (h >= 0).to(h.dtype)

            @staticmethod
            def backward(ctx: Any, g: Any) -> Any:
                (h,) = ctx.saved_tensors
                s = torch.sigmoid(alpha * h)
                return g * alpha * s * (1.0 - s)

        return Spike.apply
    if framework == "jax":
        import jax

        @jax.custom_vjp
        def spike(h: Any) -> Any:
            return (h >= 0).astype(h.dtype)

        def backward(h: Any, g: Any) -> tuple[Any]:
            s = jax.nn.sigmoid(alpha * h)
            return (g * alpha * s * (1.0 - s),)

        spike.defvjp(lambda h: (spike(h), h), backward)
        return spike
    raise ValueError(f"`framework` must be 'torch' or 'jax'; got {framework!r}")

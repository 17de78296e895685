"""The host's cost of a fused call on a cache hit, the kernel itself excluded:
`python -m benchmarks.host_cost` (about 1 minute, CPU).

torch: ``multi_step_forward(x, lif, state=v, fused=True)`` at 8x64, its kernel launch replaced
by a no-op (and the interpreter's context, which a GPU launch does not enter, by an empty one),
for inference and for training (``x`` requiring grad, through the autograd Function); on a
GPU the launch itself adds Triton's launcher and a ``torch.cuda.device`` guard, not measured
here. Eager JAX: the fused call (its kernel interpreted), against a ``jax.jit`` of the same
call made directly: the difference is what the eager call adds (its cache lookup and checks).
Beside them in the same run, as this machine's yardsticks: one ``torch.add`` of the same
tensors, a bare ``torch.autograd.Function`` that allocates and saves what the fused one does
(the floor of a training call through autograd), and one dispatch of the jitted JAX function.
The torch calls are timed without a wait after each (there is no device work to wait for;
the wait's walk of the outputs cost more than a ``torch.add``). Target: at most 20 us per
call each.
Timed in interleaved rounds, the best round each. Writes ``benchmarks/results/host_cost.md``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import dualstep as ds

from .run import publish, time_side_by_side

BOUND_US = 20.0
SIZE = (8, 64)


def _lif(x: Any, v: Any) -> tuple:
    h = v + (x - v) / 2.0
    s = (h >= 1.0) * 1.0
    return s, h * (1.0 - s)


class _NoLaunch:
    """A kernel whose launch does nothing: ``kernel[grid](*args)``."""

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _without_kernels() -> Any:
    from dualstep.fused import triton as fused_triton

    launch = fused_triton._Kernels.launch

    def no_launch(self: Any, name: str, x2d: Any) -> tuple:
        return _NoLaunch(), launch(self, name, x2d)[1]

    saved = fused_triton._Kernels.launch, fused_triton._interpreted
    fused_triton._Kernels.launch = no_launch  # type: ignore[method-assign]
    fused_triton._interpreted = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        fused_triton._Kernels.launch, fused_triton._interpreted = saved  # type: ignore[method-assign]


def _bare_function() -> Any:
    """A ``torch.autograd.Function`` that allocates what the fused forward does (output,
    final state, one saved array) and saves one: the floor of any custom-gradient call."""
    import torch

    class Bare(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, v: Any) -> Any:
            y, final, saved = torch.empty_like(x), torch.empty_like(v), torch.empty_like(x)
            ctx.save_for_backward(saved)
            return y, final

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:  # pragma: no cover - never called
            raise NotImplementedError

    return Bare.apply


def torch_us(budget: float = 6.0) -> dict:
    import torch

    x, v = torch.rand(SIZE), torch.zeros(SIZE[1:])
    xg = x.clone().requires_grad_()

    def fused(x: Any) -> Any:
        return ds.multi_step_forward(x, _lif, state=v, fused=True)

    loop = ds.multi_step_forward(x, _lif, state=v)
    for a, b in zip(fused(x), loop, strict=True):  # the real kernels first: equal to the loop
        torch.testing.assert_close(a, b)
    bare = _bare_function()
    with _without_kernels():  # nothing to wait for: no device work, no sync per call
        times = time_side_by_side(
            [lambda: fused(x), lambda: fused(xg), lambda: torch.add(x, x), lambda: bare(xg, v)],
            budget,
            block_each=False,
        )
    names = ["inference", "training", "torch.add", "bare Function"]
    return dict(zip(names, [t * 1e6 for t in times], strict=True))


def jax_us(budget: float = 6.0) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    x, v = jnp.asarray(np.random.default_rng(0).random(SIZE), jnp.float32), jnp.zeros(SIZE[1:])

    def fused(x: Any, v: Any) -> Any:
        return ds.multi_step_forward(x, _lif, state=v, fused=True)

    jitted = jax.jit(fused)
    for a, b in zip(fused(x, v), jitted(x, v), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    eager, direct = time_side_by_side([lambda: fused(x, v), lambda: jitted(x, v)], budget)
    return {"eager": eager * 1e6, "jit": direct * 1e6, "added": (eager - direct) * 1e6}


def main() -> int:
    t, j = torch_us(), jax_us()
    rows = [
        ("torch, inference (no autograd)", t["inference"]),
        ("torch, training (autograd Function)", t["training"]),
        ("eager JAX: the eager call less the jitted call", j["added"]),
    ]
    lines = [
        f"Host cost per fused call on a cache hit, kernel excluded, {SIZE[0]}x{SIZE[1]} LIF, "
        f"this CPU. Yardsticks in the same run: one torch.add {t['torch.add']:.1f} us; a bare "
        f"autograd.Function making the same arrays {t['bare Function']:.1f} us (the floor of "
        f"a training call); the jitted JAX call {j['jit']:.1f} us (eager: {j['eager']:.1f} us).",
        "",
        "| call | us | in torch.add calls | bound (us) | met |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {us:.1f} | {us / t['torch.add']:.1f} | <= {BOUND_US:g} | {us <= BOUND_US} |"
        for label, us in rows
    ]
    publish("host_cost", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

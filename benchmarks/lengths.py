"""What ``lengths=`` costs, and what it saves: `python -m benchmarks.lengths [--quick]`.

A LIF layer (``dualstep.neurons.LIF``) over ``[T, B, N]``, alone (the cheapest step there is,
the worst case for a per-step mask) and after a dense layer (``Linear N -> N``, a typical SNN
layer), timed side by side in interleaved rounds (best round):

- cost: ``multi_step_forward(..., lengths=L)`` with every length ``T`` against the same call
  without `lengths`, on JAX under ``jax.jit`` and on the torch loop (eager); the bound is 1.1.
  The torch loop runs the steps up to the shortest length without a mask, so one more row
  gives the masked steps' cost: lengths spread uniformly over ``[T/4, T]`` (no bound);
- saving: lengths spread uniformly over ``[T/4, T]``, one call with ``lengths=`` against the
  common workaround that gives the same results: group the batch by length and run each group
  on its own steps (``x[:n, group]``), each group a jitted call of its own shape (compiled
  before timing), on JAX; the bound is 1.5x faster.

The results of each pair are checked equal before timing. The fused kernels take lengths,
but on a CPU they run in their interpreters, whose timings mean nothing: they are measured
on a GPU only (not yet). Writes ``benchmarks/results/lengths.md``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from .run import publish, time_side_by_side

COST_BOUND, SAVING_BOUND = 1.1, 1.5


def _lif() -> Any:
    from dualstep import neurons

    return neurons.LIF(tau=2.0)


class _Dense:
    """``x @ w`` then a LIF: one layer of an SNN, written against the array API."""

    def __init__(self, w: Any) -> None:
        self.w, self.lif = w, _lif()

    def __call__(self, x: Any, v: Any) -> tuple[Any, Any]:
        return self.lif(x @ self.w, v)

    def initial_state(self, x_seq: Any) -> Any:
        return self.lif.initial_state(x_seq)


def _step(dense: bool, n: int, asarray: Any) -> Any:
    if not dense:
        return _lif()
    w = (np.random.default_rng(2).normal(size=(n, n)) / np.sqrt(n)).astype(np.float32)
    return _Dense(asarray(w))


def jax_cost(t: int, b: int, n: int, dense: bool = False) -> tuple[list, list[str]]:
    import jax
    import jax.numpy as jnp

    import dualstep as ds

    lif = _step(dense, n, jnp.asarray)
    x = jnp.asarray(np.random.default_rng(0).random((t, b, n), np.float32) * 2)
    full = jnp.full((b,), t, jnp.int32)
    plain = jax.jit(lambda x: ds.multi_step_forward(x, lif, state=lif.initial_state(x)))
    masked = jax.jit(
        lambda x, lengths: ds.multi_step_forward(
            x, lif, state=lif.initial_state(x), lengths=lengths
        )
    )
    for a, c in zip(plain(x), masked(x, full), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    return [lambda: masked(x, full), lambda: plain(x)], ["lengths= (all T)", "without"]


def torch_cost(
    t: int, b: int, n: int, dense: bool = False, spread: bool = False
) -> tuple[list, list[str]]:
    """All lengths T, or with `spread` lengths uniform in [T/4, T] (the masked steps' cost:
    the call without lengths computes as many steps)."""
    import torch

    import dualstep as ds

    lif = _step(dense, n, torch.from_numpy)
    x = torch.from_numpy(np.random.default_rng(0).random((t, b, n), np.float32) * 2)
    if spread:
        lengths = torch.from_numpy(np.random.default_rng(1).integers(t // 4, t + 1, b))
    else:
        lengths = torch.full((b,), t, dtype=torch.int32)

    def plain() -> Any:
        return ds.multi_step_forward(x, lif, state=lif.initial_state(x))

    def masked() -> Any:
        return ds.multi_step_forward(x, lif, state=lif.initial_state(x), lengths=lengths)

    with torch.no_grad():
        y, _ = plain()
        got, _ = masked()
        valid = torch.arange(t)[:, None] < lengths[None, :]
        assert torch.equal(got, torch.where(valid[..., None], y, 0.0))
    return [masked, plain], ["lengths=", "without"]


def jax_saving(t: int, b: int, n: int) -> tuple[list, list[str]]:
    """One call with spread lengths, against running each group of equal length alone."""
    import jax
    import jax.numpy as jnp

    import dualstep as ds

    lif = _lif()
    rng = np.random.default_rng(1)
    x_np = rng.random((t, b, n), np.float32) * 2
    lengths = rng.integers(t // 4, t + 1, b).astype(np.int32)
    x, lengths_j = jnp.asarray(x_np), jnp.asarray(lengths)
    masked = jax.jit(
        lambda x, lengths: ds.multi_step_forward(
            x, lif, state=lif.initial_state(x), lengths=lengths
        )[1]
    )
    alone = jax.jit(lambda x: ds.multi_step_forward(x, lif, state=lif.initial_state(x))[1])
    groups = [(int(m), np.flatnonzero(lengths == m)) for m in np.unique(lengths)]
    pieces = [(jnp.asarray(x_np[:m, idx]), idx) for m, idx in groups]

    def grouped() -> Any:
        return [alone(piece) for piece, _ in pieces]

    final = np.asarray(masked(x, lengths_j))
    for (_, idx), v in zip(pieces, grouped(), strict=True):
        np.testing.assert_array_equal(final[idx], np.asarray(v))
    label = f"grouped by length ({len(groups)} groups, one jitted call each)"
    return [lambda: masked(x, lengths_j), grouped], ["lengths=", label]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lengths", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    args = parser.parse_args(argv)
    t, b, n = (8, 4, 16) if args.quick else (100, 32, 256)
    budget = 0.05 if args.quick else 1.5
    size = f"T={t}, B={b}, N={n}, float32, LIF"
    lines = [
        f"# What lengths= costs and saves ({size})",
        "",
        "Best of interleaved rounds, 2-core CPU; `python -m benchmarks.lengths`",
        "",
        "| comparison | with lengths= | the other | ratio | bound | met |",
        "|---|---|---|---|---|---|",
    ]
    import functools

    cases = [
        ("cost, LIF, JAX jax.jit (all lengths T / without)", jax_cost, COST_BOUND, False),
        ("cost, LIF, torch loop (all lengths T / without)", torch_cost, COST_BOUND, False),
        (
            "cost, Linear -> LIF, JAX jax.jit (all lengths T / without)",
            functools.partial(jax_cost, dense=True),
            COST_BOUND,
            False,
        ),
        (
            "cost, Linear -> LIF, torch loop (all lengths T / without)",
            functools.partial(torch_cost, dense=True),
            COST_BOUND,
            False,
        ),
        (
            "cost, LIF, torch loop (lengths uniform in [T/4, T] / without)",
            functools.partial(torch_cost, spread=True),
            None,
            False,
        ),
        ("saving, LIF, JAX jax.jit (lengths= / grouped by length)", jax_saving, SAVING_BOUND, True),
    ]
    for label, build, bound, saving in cases:
        fns, names = build(t, b, n)
        seconds = time_side_by_side(fns, budget, rounds=9)
        ratio = seconds[1] / seconds[0] if saving else seconds[0] / seconds[1]
        if bound is None:  # what masking costs per step, beside the bound's own case
            judged = "none (masked steps) | -"
        else:
            met = ratio >= bound if saving else ratio <= bound
            judged = f"{'>=' if saving else '<='} {bound} | {'met' if met else 'not met'}"
        lines.append(
            f"| {label} | {seconds[0] * 1e3:.3f} ms | {seconds[1] * 1e3:.3f} ms ({names[1]}) "
            f"| {ratio:.2f} | {judged} |"
        )
    lines += ["", "Fused kernels: not measured here (a CPU runs them in their interpreters)."]
    publish("lengths", "\n".join(lines), write=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

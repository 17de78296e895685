"""A NIR graph's step against a hand-written JAX step: `python -m benchmarks.nir [--quick]`.

The same Linear -> LIF network, once as a NIR graph read by `dualstep.nir.load` and once as a
JAX step written by hand with the same parameters, both run by `dualstep.multi_step_forward`
under `jax.jit` (outputs checked equal first), timed side by side; the figure is
``NIR step / hand-written step``.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import nir
import numpy as np

import dualstep as ds
from dualstep.nir import load

from .run import time_side_by_side

DT, TAU = 1e-3, 2e-3


def systems(steps: int, batch: int, n: int) -> tuple[list, list[str]]:
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(n, n)) / np.sqrt(n)).astype(np.float32)
    b = (rng.normal(size=n) * 0.1).astype(np.float32)
    ones = np.ones(n, np.float32)
    graph = nir.NIRGraph.from_list(
        nir.Affine(weight=w, bias=b),
        nir.LIF(tau=ones * TAU, r=ones, v_leak=0 * ones, v_threshold=ones, v_reset=0 * ones),
    )
    model = load(graph, dt=DT)
    x = jnp.asarray(rng.random((steps, batch, n), np.float32) * 2)
    wj, bj = jnp.asarray(w.T), jnp.asarray(b)

    def hand(x, v):
        v = v + (x @ wj + bj - v) * (DT / TAU)
        s = (v > 1.0).astype(v.dtype)
        return s, s * 0.0 + (1.0 - s) * v

    state = model.initial_state(x)
    name = next(iter(state))
    run_nir = jax.jit(lambda x: ds.multi_step_forward(x, model.step, state=state)[0])
    run_hand = jax.jit(lambda x: ds.multi_step_forward(x, hand, state=state[name]["v"])[0])
    np.testing.assert_allclose(np.asarray(run_nir(x)), np.asarray(run_hand(x)), atol=1e-6)
    return [lambda: run_nir(x), lambda: run_hand(x)], ["NIR step", "hand-written step"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nir", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a small size, short timings")
    args = parser.parse_args(argv)
    size = (8, 4, 16) if args.quick else (64, 32, 256)
    fns, names = systems(*size)
    seconds = time_side_by_side(fns, 0.05 if args.quick else 1.0)
    for name, s in zip(names, seconds, strict=True):
        print(f"{name:<20} {s * 1e3:8.3f} ms")
    ratio = seconds[0] / seconds[1]
    print(
        f"NIR step / hand-written step (Linear -> LIF, {'x'.join(map(str, size))}, jax.jit): "
        f"{ratio:.2f} (bound <= 1.2: {'met' if ratio <= 1.2 else 'not met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

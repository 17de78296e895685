"""NIR graphs on JAX: `python -m benchmarks.nir [--quick]`.

Three workloads, each timed side by side in interleaved rounds under ``jax.jit`` after checking
what can be checked:

- Linear -> LIF: a NIR graph read by `dualstep.nir.load` against a JAX step written by hand
  with the same parameters (outputs checked equal); the figure is ``NIR step / hand-written
  step`` (bound 1.2).
- CSNN: the shape of the NIR paper's N-MNIST network (Conv2d 2->16 k5, LIF, SumPool2d 2,
  Conv2d 16->32 k5, LIF, SumPool2d 2, Flatten, Affine 1568->10, LIF; T=50, batch 8), built in
  memory, against Spyx 1.0 (`spyx.nir.from_nir`, run with ``nnx.jit``) on the same graph,
  channels last as Spyx wants it. Spyx's neurons follow other equations (its own decay and
  reset), so outputs are not compared: the work per step is the same. Bound: dualstep within
  1.2x of Spyx.
- RSNN: the shape of the NIR paper's Braille network (Affine 12->38, a recurrent CubaLIF
  layer written as a subgraph, Affine 38->7, CubaLIF; T=256, batch 8), dualstep against Spyx
  the same way. Bound: dualstep no slower than Spyx.

Spyx is optional (``pip install spyx``); without it the two comparisons say so.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys

import jax
import jax.numpy as jnp
import nir
import numpy as np

import dualstep as ds
from dualstep.nir import load

from .run import time_side_by_side

DT, TAU = 1e-3, 2e-3


def _lif(shape: tuple, cuba: bool = False) -> nir.NIRNode:
    o = np.ones(shape)
    if cuba:
        return nir.CubaLIF(
            tau_syn=o * TAU,
            tau_mem=o * TAU * 2,
            r=o,
            v_leak=0 * o,
            v_threshold=o,
            v_reset=0 * o,
            w_in=o,
        )
    return nir.LIF(tau=o * TAU, r=o, v_leak=0 * o, v_threshold=o, v_reset=0 * o)


def _chain(input_shape: tuple, nodes: list, output_shape: tuple) -> nir.NIRGraph:
    named = {"input": nir.Input(input_type=np.array(input_shape))}
    named.update({f"n{i}": n for i, n in enumerate(nodes)})
    named["output"] = nir.Output(output_type=np.array(output_shape))
    names = list(named)
    return nir.NIRGraph(nodes=named, edges=list(itertools.pairwise(names)))


def csnn_graph(side: int = 34) -> nir.NIRGraph:
    rng = np.random.default_rng(0)
    s1 = side - 2  # 5x5, padding 1
    p1 = s1 // 2
    s2 = p1 - 2
    p2 = s2 // 2

    def conv(c_in: int, c_out: int, size: int, scale: float) -> nir.Conv2d:
        return nir.Conv2d(
            input_shape=(size, size),
            weight=rng.normal(size=(c_out, c_in, 5, 5)) * scale,
            stride=1,
            padding=1,
            dilation=1,
            groups=1,
            bias=np.zeros(c_out),
        )

    def pool() -> nir.SumPool2d:
        return nir.SumPool2d(
            kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])
        )

    flat = nir.Flatten(input_type={"input": np.array([32, p2, p2])}, start_dim=0, end_dim=-1)
    affine = nir.Affine(weight=rng.normal(size=(10, 32 * p2 * p2)) * 0.05, bias=np.zeros(10))
    nodes = [conv(2, 16, side, 0.3), _lif((16, s1, s1)), pool(), conv(16, 32, p1, 0.1)]
    nodes += [_lif((32, s2, s2)), pool(), flat, affine, _lif((10,))]
    return _chain((2, side, side), nodes, (10,))


def rsnn_graph(n_in: int = 12, hidden: int = 38, n_out: int = 7) -> nir.NIRGraph:
    rng = np.random.default_rng(1)
    layer = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([hidden])),
            "lif": _lif((hidden,), cuba=True),
            "w_rec": nir.Linear(weight=rng.normal(size=(hidden, hidden)) * 0.2),
            "output": nir.Output(output_type=np.array([hidden])),
        },
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )
    nodes = [
        nir.Affine(weight=rng.normal(size=(hidden, n_in)), bias=np.zeros(hidden)),
        layer,
        nir.Affine(weight=rng.normal(size=(n_out, hidden)) * 0.5, bias=np.zeros(n_out)),
        _lif((n_out,), cuba=True),
    ]
    return _chain((n_in,), nodes, (n_out,))


def dense(steps: int, batch: int, n: int) -> tuple[list, list[str]]:
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


def against_spyx(graph: nir.NIRGraph, x: np.ndarray) -> tuple[list, list[str]]:
    """dualstep and (when installed) Spyx on one graph; `x` is ``[T, B, ...]`` channels
    first, as NIR has it."""
    model = load(graph, dt=DT)
    xj = jnp.asarray(x)
    state = model.initial_state(xj)
    run_ds = jax.jit(lambda x: ds.multi_step_forward(x, model.step, state=state)[0])
    y = run_ds(xj)
    assert y.shape == (x.shape[0], x.shape[1], *model.output_shapes[model.output_names[0]])
    fns, names = [lambda: run_ds(xj)], ["dualstep"]
    if importlib.util.find_spec("spyx") is None:
        return fns, names
    import spyx.nir
    import spyx.nn
    from flax import nnx

    x_last = jnp.asarray(np.moveaxis(x, 2, -1)) if x.ndim == 5 else xj  # NCHW -> NHWC
    spyx_model, out = spyx.nir.from_nir(graph, x_last, dt=DT)
    assert out.shape == y.shape
    run_spyx = nnx.jit(lambda m, x: spyx.nn.run(m, x)[0])
    return [*fns, lambda: run_spyx(spyx_model, x_last)], [*names, "Spyx"]


def _report(title: str, names: list[str], seconds: list[float]) -> None:
    print(title)
    for name, s in zip(names, seconds, strict=True):
        print(f"  {name:<20} {s * 1e3:8.3f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nir", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    args = parser.parse_args(argv)
    budget = 0.05 if args.quick else 1.0
    print(f"jax {jax.__version__} on {jax.default_backend()}, jax.jit, best of interleaved rounds")

    size = (8, 4, 16) if args.quick else (64, 32, 256)
    fns, names = dense(*size)
    seconds = time_side_by_side(fns, budget)
    _report(f"Linear -> LIF, {'x'.join(map(str, size))}", names, seconds)
    ratio = seconds[0] / seconds[1]
    print(
        f"NIR step / hand-written step (Linear -> LIF, {'x'.join(map(str, size))}, jax.jit): "
        f"{ratio:.2f} (bound <= 1.2: {'met' if ratio <= 1.2 else 'not met'})"
    )

    rng = np.random.default_rng(2)
    side, steps = (10, 4) if args.quick else (34, 50)
    spikes = (rng.random((steps, 8, 2, side, side)) < 0.3).astype(np.float32) * 2
    braille = (rng.random((8 if args.quick else 256, 8, 12)) * 2).astype(np.float32)
    for label, graph, x, bound in (
        (f"CSNN, T={steps}, batch 8, 2x{side}x{side}", csnn_graph(side), spikes, 1.2),
        (f"RSNN, T={len(braille)}, batch 8, 12 -> 38 (recurrent) -> 7", rsnn_graph(), braille, 1.0),
    ):
        fns, names = against_spyx(graph, x)
        seconds = time_side_by_side(fns, budget, rounds=9)
        _report(label, names, seconds)
        if len(seconds) == 1:
            print(f"dualstep / Spyx ({label}): Spyx is not installed (pip install spyx)")
            continue
        ratio = seconds[0] / seconds[1]
        verdict = "met" if ratio <= bound else "not met"
        print(f"dualstep / Spyx ({label}): {ratio:.2f} (bound <= {bound}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

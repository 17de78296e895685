"""Eager JAX calls whose step holds its weights, against each library's own jit.

`python -m benchmarks.jax_cache` times, side by side in one run (interleaved rounds, best
round each), a Linear -> LIF step at 16x8x64 called eagerly through `multi_step_forward` in
the ways a user passes weights, and the same computation under the tool each library provides:

- a `functools.partial` made anew each call, and a closure made anew each call, against a
  hand-written `jax.jit` of the scan taking the weights as arguments;
- an Equinox module against `equinox.filter_jit`;
- a Flax NNX module against `flax.nnx.jit`;
- a bound method whose object's weight is replaced every call, against the same hand scan.

Then, at 64x32x512, a LIF step holding ``surrogate_spike("jax")`` (a ``jax.custom_vjp``) in a
local variable, eager against ``jax.jit`` of the same call (bound 1.2), and eager
``value_and_grad`` of ``seq_to_ann_forward`` (a Linear) then ``multi_step_forward`` of it
against its ``jax.jit`` (bound 1.3).

Each eager system's result is checked against the reference first. Prints one line per pair
with the ratio eager / reference (1.0: as fast as the library's own jit).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import dualstep as ds

from .run import time_side_by_side
from .systems import jax_lif

SIZE = (16, 8, 64)


def _linear_lif(x, v, w, b):
    return jax_lif(x @ w + b, v)


def _closure(w, b):
    def step(x, v):
        return jax_lif(x @ w + b, v)

    return step


class _Net:
    def __init__(self, w, b):
        self.w, self.b = w, b

    def step(self, x, v):
        return jax_lif(x @ self.w + self.b, v)


def main() -> None:
    import equinox as eqx
    from flax import nnx

    t, b, n = SIZE
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((t, b, n)) + 0.5, jnp.float32)
    v0 = jnp.zeros((b, n), jnp.float32)
    w = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), jnp.float32)
    bias = jnp.zeros(n, jnp.float32)

    @jax.jit
    def hand(x, v, w, bias):
        return jax.lax.scan(lambda v, xt: _linear_lif(xt, v, w, bias)[::-1], v, x)[1]

    class Cell(eqx.Module):
        w: jax.Array
        b: jax.Array

        def __call__(self, x, v):
            return jax_lif(x @ self.w + self.b, v)

    cell = Cell(w, bias)
    filter_jitted = eqx.filter_jit(lambda m, x, v: ds.multi_step_forward(x, m, state=v)[0])

    class NnxCell(nnx.Module):
        def __init__(self):
            self.w, self.b = nnx.Param(w), nnx.Param(bias)

        def __call__(self, x, v):
            return jax_lif(x @ self.w[...] + self.b[...], v)

    nnx_cell = NnxCell()
    nnx_jitted = nnx.jit(lambda m, x, v: ds.multi_step_forward(x, m, state=v)[0])
    net = _Net(w, bias)
    weights = [w, w + 0.0]  # two distinct arrays of the same values, swapped every call
    calls = [0]

    def swapped_method():
        calls[0] += 1
        net.w = weights[calls[0] % 2]
        return ds.multi_step_forward(x, net.step, state=v0)[0]

    pairs = {
        "new functools.partial per call / jax.jit(scan)": (
            lambda: ds.multi_step_forward(x, functools.partial(_linear_lif, w=w, b=bias), state=v0)[
                0
            ],
            lambda: hand(x, v0, w, bias),
        ),
        "new closure per call / jax.jit(scan)": (
            lambda: ds.multi_step_forward(x, _closure(w, bias), state=v0)[0],
            lambda: hand(x, v0, w, bias),
        ),
        "Equinox module / equinox.filter_jit": (
            lambda: ds.multi_step_forward(x, cell, state=v0)[0],
            lambda: filter_jitted(cell, x, v0),
        ),
        "Flax NNX module / flax.nnx.jit": (
            lambda: ds.multi_step_forward(x, nnx_cell, state=v0)[0],
            lambda: nnx_jitted(nnx_cell, x, v0),
        ),
        "bound method, weight replaced per call / jax.jit(scan)": (
            swapped_method,
            lambda: hand(x, v0, w, bias),
        ),
    }
    print(f"Linear -> LIF, {t}x{b}x{n}, float32, {jax.devices()[0].platform}")
    _report(pairs)
    print(f"Surrogate LIF (a jax.custom_vjp spike in a closure), {'x'.join(map(str, BIG))}")
    _report(_surrogate_pairs())


def _report(pairs: dict) -> None:
    for name, (eager, reference) in pairs.items():
        for a, e in zip(jax.tree.leaves(eager()), jax.tree.leaves(reference()), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-5)
        ours, theirs = time_side_by_side([eager, reference], budget=2.0)
        print(f"{name:58s} {ours * 1e6:8.1f} us / {theirs * 1e6:8.1f} us = {ours / theirs:5.2f}")


BIG = (64, 32, 512)


def _surrogate_pairs() -> dict:
    """The issue's two eager cases, each against ``jax.jit`` of the same call: a step holding
    ``surrogate_spike("jax")`` in a local variable, and ``value_and_grad`` of
    ``seq_to_ann_forward`` (a Linear) then ``multi_step_forward`` of that step."""
    from dualstep.testing import surrogate_spike

    t, b, n = BIG
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((t, b, n)) * 2, jnp.float32)
    v0 = jnp.zeros((b, n), jnp.float32)
    w = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), jnp.float32)
    spike = surrogate_spike("jax", 4.0)

    def lif(h, v):
        v = v + (h - v) * 0.5
        s = spike(v - 1.0)
        return s, v * (1.0 - s)

    def forward(x, v0):
        return ds.multi_step_forward(x, lif, state=v0)

    def loss(w, x):
        h = ds.seq_to_ann_forward(x, lambda a: a @ w)
        return ds.multi_step_forward(h, lif, state=v0)[0].sum()

    jitted_forward, grad = jax.jit(forward), jax.value_and_grad(loss)
    jitted_grad = jax.jit(grad)
    return {
        "surrogate step, eager / jax.jit of the same call": (
            lambda: forward(x, v0),
            lambda: jitted_forward(x, v0),
        ),
        "value_and_grad(seq_to_ann + multi_step), eager / its jax.jit": (
            lambda: grad(w, x),
            lambda: jitted_grad(w, x),
        ),
    }


if __name__ == "__main__":
    main()

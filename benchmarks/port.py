"""A ported SpikingJelly model against the same model written by hand in JAX and against
SpikingJelly itself: `python -m benchmarks.port [--quick]`.

The model is the conv SNN of ``examples/port_conv_snn.py`` (Conv2d 1->8 k3, BatchNorm2d,
LIFNode with an ATan surrogate, MaxPool2d 2, Flatten, Linear, LIFNode) in SpikingJelly's
multi-step mode, on spike inputs ``[T, B, 1, S, S]``. Three systems, each timed side by side
in interleaved rounds (best round), forward (evaluation mode) and one training step
(training mode: batch statistics; the loss's value and the gradient of every parameter):

- the port: ``dualstep.port.to_jax(net, x)``'s step, under ``jax.jit``;
- by hand: the same model written directly in JAX (``lax.conv_general_dilated``,
  ``lax.reduce_window``, a ``lax.scan`` LIF with a ``jax.custom_vjp`` spike), the 20-odd lines
  a newcomer writes, under ``jax.jit``;
- SpikingJelly 2.0 on torch (its CPU kernels), eagerly, as its users run it.

Before timing, the hand-written model's outputs and gradients are checked against the port's
(equal spikes, gradients within float32 rounding). Target: port / by hand at most 1.1, for
both. Writes ``benchmarks/results/port.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .run import publish, time_side_by_side

BOUND = 1.1


def network(side: int) -> Any:
    import torch
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False),
        layer.BatchNorm2d(8),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        layer.MaxPool2d(2),
        layer.Flatten(),
        layer.Linear(8 * (side // 2) ** 2, 10),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
    )
    functional.set_step_mode(net, "m")
    with torch.no_grad():  # enough drive that both layers spike
        net[0].weight.mul_(6.0)
        net[5].weight.mul_(6.0)
    return net


@jax.custom_vjp
def _spike(h: Any) -> Any:
    return (h >= 0).astype(h.dtype)


def _spike_fwd(h: Any) -> tuple:
    return _spike(h), h


def _spike_bwd(h: Any, g: Any) -> tuple:
    z = h * (math.pi / 2 * 2.0)  # ATan, alpha = 2, as SpikingJelly's kernel computes it
    return (g * (1.0 / (1 + z * z)),)


_spike.defvjp(_spike_fwd, _spike_bwd)


def _lif(x_seq: Any) -> Any:
    def body(v: Any, x: Any) -> tuple:
        h = v + (x - v) / 2.0
        s = _spike(h - 1.0)
        return (1.0 - s) * h, s

    return jax.lax.scan(body, jnp.zeros(x_seq.shape[1:], x_seq.dtype), x_seq)[1]


def by_hand(p: dict, x: Any, training: bool, buffers: dict) -> Any:
    """The model, written in JAX directly."""
    t, b = x.shape[:2]
    z = jax.lax.conv_general_dilated(
        x.reshape(t * b, *x.shape[2:]), p["0.weight"], (1, 1), [(1, 1), (1, 1)],
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )  # fmt: skip
    if training:
        mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3))
    else:
        mean, var = buffers["1.running_mean"], buffers["1.running_var"]
    z = (z - mean[:, None, None]) / jnp.sqrt(var[:, None, None] + 1e-5)
    z = z * p["1.weight"][:, None, None] + p["1.bias"][:, None, None]
    s = _lif(z.reshape(t, b, *z.shape[1:]))
    s = s.reshape(t * b, *s.shape[2:])
    pooled = jax.lax.reduce_window(s, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    z = pooled.reshape(t, b, -1) @ p["5.weight"].T + p["5.bias"]
    return _lif(z)


def _loss(y: Any, xp: Any) -> Any:
    return (y.mean(0) * xp.linspace(-1.0, 1.0, y.shape[-1])).sum()


def systems(t: int, batch: int, side: int, training: bool) -> tuple[list, list, dict]:
    """The three systems' forward and training-step functions, checked, and their names."""
    import torch
    from spikingjelly.activation_based import functional

    from dualstep import interop, port

    net = network(side).train(training)
    rng = np.random.default_rng(0)
    x_np = (rng.random((t, batch, 1, side, side)) < 0.3).astype(np.float32)
    x_t, x = torch.from_numpy(x_np), jnp.asarray(x_np)
    step, params, state = port.to_jax(net, x_t)
    buffers = interop.module_to_jax(net, which="buffers")

    ported_fwd = jax.jit(lambda p, s: step(p, x, s)[0])
    hand_fwd = jax.jit(lambda p: by_hand(p, x, training, buffers))
    ported_train = jax.jit(jax.value_and_grad(lambda p, s: _loss(step(p, x, s)[0], jnp)))
    hand_train = jax.jit(jax.value_and_grad(lambda p: _loss(by_hand(p, x, training, buffers), jnp)))

    y_port, y_hand = ported_fwd(params, state), hand_fwd(params)
    if not np.array_equal(np.asarray(y_port), np.asarray(y_hand)) or not y_hand.any():
        raise AssertionError("the hand-written model's spikes differ from the port's")
    (_, g_port), (_, g_hand) = ported_train(params, state), hand_train(params)
    for name in params:
        scale = float(jnp.abs(g_hand[name]).max())
        np.testing.assert_allclose(g_port[name], g_hand[name], rtol=1e-4, atol=1e-5 * scale)

    def sj_fwd() -> Any:
        functional.reset_net(net)
        with torch.no_grad():
            return net(x_t)

    def sj_train() -> Any:
        functional.reset_net(net)
        net.zero_grad()
        loss = _loss(net(x_t), torch)
        loss.backward()
        return loss.detach()

    if not torch.equal(sj_fwd(), torch.from_numpy(np.array(y_port))):
        raise AssertionError("SpikingJelly's spikes differ from the port's")
    fwd = [lambda: ported_fwd(params, state), lambda: hand_fwd(params), sj_fwd]
    train = [lambda: ported_train(params, state), lambda: hand_train(params), sj_train]
    return fwd, train, {"names": ["port (jax.jit)", "by hand (jax.jit)", "SpikingJelly"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.port", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    args = parser.parse_args(argv)
    t, batch, side = (4, 4, 8) if args.quick else (16, 32, 28)
    budget = 0.05 if args.quick else 2.0
    label = f"T={t}, batch {batch}, 1x{side}x{side}"
    lines = [
        f"# Ported model against hand-written JAX and SpikingJelly ({label})",
        "",
        f"jax {jax.__version__} on {jax.default_backend()}; best of interleaved rounds; "
        "`python -m benchmarks.port`",
        "",
        "| workload | port (jax.jit) | by hand (jax.jit) | SpikingJelly (torch) | port / by hand "
        "| port / SpikingJelly |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for workload, training in (("forward (eval)", False), ("training step", True)):
        fwd, train, _ = systems(t, batch, side, training)
        fns = fwd if not training else train
        seconds = time_side_by_side(fns, budget, rounds=9)
        ms = [f"{s * 1e3:.3f} ms" for s in seconds]
        by_hand_ratio, sj_ratio = seconds[0] / seconds[1], seconds[0] / seconds[2]
        lines.append(
            f"| {workload} | {ms[0]} | {ms[1]} | {ms[2]} | {by_hand_ratio:.2f} | {sj_ratio:.2f} |"
        )
        verdict = "met" if by_hand_ratio <= BOUND else "not met"
        verdicts.append(
            f"port / by hand ({workload}, {label}): {by_hand_ratio:.2f} (bound <= {BOUND}: "
            f"{verdict})"
        )
    lines += ["", *verdicts]
    publish("port", "\n".join(lines), write=not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

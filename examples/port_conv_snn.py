"""A SpikingJelly conv SNN ported to JAX in one call, proven equal, and trained in lockstep.

The network (Conv2d, BatchNorm2d, LIFNode with an ATan surrogate, MaxPool2d, Flatten, Linear,
LIFNode) runs in SpikingJelly's multi-step mode, in training mode (batch norm normalises by
the batch and updates its running statistics). ``dualstep.port.to_jax`` makes it a pure JAX
step with the same weights; ``assert_implementations_close`` proves the port, outputs, every
layer, neuron states and gradients, in one line. Then both train for 5 steps of plain SGD on
the same synthetic spike data: the losses are printed side by side and must agree within
1e-5 at every step, and so must the weights and running statistics at the end.

    python examples/port_conv_snn.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate

from dualstep import interop, port
from dualstep.testing import assert_implementations_close

TOLERANCE = 1e-5  # absolute, on losses of order 1 computed in float32
STEPS, LEARNING_RATE, T, BATCH, CLASSES = 5, 0.5, 8, 16, 10


def network() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False),
        layer.BatchNorm2d(8),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        layer.MaxPool2d(2),
        layer.Flatten(),
        layer.Linear(8 * 4 * 4, CLASSES),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
    )
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[5].weight.mul_(4.0)  # enough drive that the output layer fires from the start
    return net.train()


def data() -> tuple[np.ndarray, np.ndarray]:
    """Spike trains [T, B, 1, 8, 8]: each class lights its own random half of the pixels."""
    rng = np.random.default_rng(0)
    patterns = rng.random((CLASSES, 1, 8, 8)) < 0.5
    labels = rng.integers(0, CLASSES, BATCH)
    rates = np.where(patterns[labels], 0.8, 0.1)
    return (rng.random((T, *rates.shape)) < rates).astype(np.float32), labels


def cross_entropy(rates, labels, xp):
    """The firing rates, scaled, as logits (the array namespace `xp`: torch or jax.numpy)."""
    logits = rates * 10.0
    shifted = logits - logits.max(axis=1, keepdims=True) if xp is jnp else logits
    log_z = xp.log(xp.exp(shifted).sum(1)) + (logits.max(axis=1) if xp is jnp else 0)
    picked = logits[xp.arange(len(labels)), labels]
    return (log_z - picked).mean()


def train_torch(net, x, labels) -> list[float]:
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(labels)
    optimiser = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        functional.reset_net(net)
        loss = cross_entropy(net(x_t).mean(0), y_t, torch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


def train_jax(step, params, state, x, labels) -> tuple[list[float], dict, dict]:
    x_j, y_j = jnp.asarray(x), jnp.asarray(labels)

    @jax.jit
    def update(params, state):
        def loss_fn(p):
            y, final = step(p, x_j, state)
            return cross_entropy(y.mean(0), y_j, jnp), final

        (loss, final), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        new = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)
        return loss, new, step.reset(final)  # reset_net: neurons rest, statistics carry on

    losses = []
    for _ in range(STEPS):
        loss, params, state = update(params, state)
        losses.append(float(loss))
    return losses, params, state


def main() -> tuple[list[float], list[float]]:
    start = time.perf_counter()
    x, labels = data()
    net = network()
    ported = port.to_jax(net, torch.from_numpy(x))  # (step, params, state), copies
    proof = assert_implementations_close(net, ported, x, compare_grads=True)
    print(f"the port, proven: {len(proof.rows)} rows ok (outputs, layers, states, gradients)")
    torch_losses = train_torch(net, x, labels)
    jax_losses, params, state = train_jax(*ported, x, labels)
    print(f"{'step':>4} {'SpikingJelly':>12} {'JAX port':>11} {'difference':>11}")
    for i, (a, b) in enumerate(zip(torch_losses, jax_losses, strict=True)):
        print(f"{i:4d} {a:12.6f} {b:11.6f} {b - a:11.2e}")
    worst = max(abs(a - b) for a, b in zip(torch_losses, jax_losses, strict=True))
    trained = ported[0].weights(params, state)
    weights = max(
        float(np.abs(interop.to_numpy(trained[name]) - t.detach().numpy()).max())
        for name, t in [*net.named_parameters(), *net.named_buffers()]
    )
    print(
        f"max difference: losses {worst:.2e}, weights and statistics {weights:.2e} "
        f"(tolerance {TOLERANCE:g}); done in {time.perf_counter() - start:.1f} s"
    )
    if worst > TOLERANCE or weights > TOLERANCE:
        raise SystemExit("SpikingJelly and its JAX port diverged")
    if not torch_losses[-1] < torch_losses[0]:
        raise SystemExit("the loss did not go down")
    return torch_losses, jax_losses


if __name__ == "__main__":
    main()

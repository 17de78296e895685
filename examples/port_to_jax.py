"""The torch model of `train_torch.py`, ported to JAX through `dualstep.interop`, trained again.

The weights are copied from torch with `module_to_jax`; the forward pass is the same code
(`snn_common.forward`, written against the array API, through dualstep), the data and plain
SGD are the same. The two loss curves are printed side by side and must agree step for step
within float32 tolerance.

    python examples/port_to_jax.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import snn_common as snn

from dualstep import interop

TOLERANCE = 1e-5  # absolute, on losses of order 1 computed in float32


def train_jax(params: dict, x: np.ndarray, labels: np.ndarray) -> list[float]:
    step = snn.lif_surrogate(jax.lax.stop_gradient)
    x_j, y_j = interop.to_jax(x), jnp.asarray(labels, jnp.int32)

    @jax.jit
    def update(params: dict) -> tuple[jax.Array, dict]:
        def loss_fn(p: dict) -> jax.Array:
            return snn.cross_entropy(snn.forward(p, x_j, step, jnp), y_j, jnp)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return loss, jax.tree.map(lambda p, g: p - snn.LEARNING_RATE * g, params, grads)

    losses = []
    for _ in range(snn.STEPS):
        loss, params = update(params)
        losses.append(float(loss))
    return losses


def main() -> tuple[list[float], list[float]]:
    x, labels = snn.data()
    model = snn.torch_model()
    params = interop.module_to_jax(model)  # a copy: torch training below does not change it
    torch_losses = snn.train_torch(model, x, labels)
    jax_losses = train_jax(params, x, labels)
    print(f"{'step':>4} {'torch loss':>11} {'JAX loss':>11} {'difference':>11}")
    for i, (a, b) in enumerate(zip(torch_losses, jax_losses, strict=True)):
        print(f"{i:4d} {a:11.6f} {b:11.6f} {b - a:11.2e}")
    worst = max(abs(a - b) for a, b in zip(torch_losses, jax_losses, strict=True))
    print(f"max difference {worst:.2e} (tolerance {TOLERANCE:g})")
    if worst > TOLERANCE:
        raise SystemExit("torch and JAX training diverged")
    return torch_losses, jax_losses


if __name__ == "__main__":
    main()

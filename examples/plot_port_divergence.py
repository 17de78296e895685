"""Draw where a port goes wrong: a torch SNN against a JAX port whose tau is off by 10%.

The torch model is Linear(16, 16) then a LIF neuron (tau = 2) over 32 steps; the "port" runs
the same weights in JAX with tau = 2.2, the kind of slip a hand port makes.
`dualstep.testing.assert_implementations_close` compares the two step by step, and
`Report.plot()` draws each output's error per step over the tolerance: the spikes, the
membrane voltage, the tolerance line, the first diverging step circled. The figure goes to
the path given (default ``port_divergence.png``).

    python examples/plot_port_divergence.py [PATH]     (needs matplotlib)
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import torch

from dualstep import neurons
from dualstep.testing import assert_implementations_close

T, BATCH, N = 32, 4, 16


def model(tau: float, framework: str):
    """Linear then LIF as a step ``(x, v) -> ((spike, v), v)``, in torch or JAX."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(N, N)) / np.sqrt(N)).astype(np.float32)
    lif = neurons.LIF(tau=tau)
    if framework == "torch":
        linear = torch.nn.Linear(N, N, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T))

        def step(x, v):
            spike, v = lif(linear(x), v)
            return (spike, v), v

        return step
    w_jax = jnp.asarray(w)

    def port(x, v):
        spike, v = lif(x @ w_jax, v)
        return (spike, v), v

    return port


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "port_divergence.png"
    x = (np.random.default_rng(1).random((T, BATCH, N)) * 2).astype(np.float32)
    v0 = np.zeros((BATCH, N), np.float32)
    report = assert_implementations_close(
        model(2.0, "torch"),
        model(2.2, "jax"),  # the slip: tau off by 10%
        x,
        reference_state=v0,
        candidate_state=v0,
        reference_backend="torch",
        candidate_backend="jax",
        check=False,
    )
    print(report)
    with torch.no_grad():
        figure = report.plot()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

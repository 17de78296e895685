"""Validate a port through NIR: a SpikingJelly model, exported, run in JAX, checked step by step.

A small convolutional SNN is built in SpikingJelly, exported with SpikingJelly's own
`export_to_nir`, read by `dualstep.nir.load` and run in JAX (under `jax.jit`) through
`dualstep.multi_step_forward`. `dualstep.testing.assert_implementations_close` then runs the
SpikingJelly model and the JAX port over the same input and compares every output step by
step. Read as NIR documents its neurons (fire at v > threshold) the port differs where a
membrane lands exactly on the threshold; read with SpikingJelly's convention (v >= threshold)
it agrees spike for spike. The table names the first diverging step and the output.

    python examples/validate_port.py      (needs dualstep[nir] and SpikingJelly:
                                           pip install 'dualstep[nir]' and
                                           pip install --no-deps spikingjelly==2.0.0 loguru tqdm)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from spikingjelly.activation_based import layer, neuron
from spikingjelly.activation_based.nir_exchange.to_nir import export_to_nir

import dualstep as ds
from dualstep.nir import load
from dualstep.testing import assert_implementations_close

T, BATCH, DT = 24, 4, 1e-4


def spikingjelly_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1),
        neuron.LIFNode(tau=2.0),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(4 * 4 * 4, 10),
        neuron.IFNode(),
    )
    with torch.no_grad():  # weights and inputs on a grid of eighths: thresholds are hit exactly
        for m in (model[0], model[4]):
            m.weight.copy_(torch.round(m.weight * 24) / 8)
            m.bias.zero_()
    return model.eval()


def main() -> None:
    start = time.perf_counter()
    model = spikingjelly_model()
    graph = export_to_nir(model, torch.rand(1, 1, 8, 8), dt=DT)
    print("exported:", ", ".join(f"{k}: {type(n).__name__}" for k, n in graph.nodes.items()))
    x = (np.random.default_rng(0).integers(0, 9, size=(T, BATCH, 1, 8, 8)) / 8).astype(np.float32)

    for convention in ("nir", "spikingjelly"):
        port = load(graph, dt=DT, convention=convention)
        state = port.initial_state(jnp.asarray(x))
        run = jax.jit(lambda x, s, port=port: ds.multi_step_forward(x, port.step, state=s))
        spikes, _ = run(jnp.asarray(x), state)
        report = assert_implementations_close(
            model, port.step, x, candidate_state=state, check=False
        )
        print(f"\nconvention={convention!r}: {int(spikes.sum())} output spikes in JAX under jit")
        print(report)
        print("agrees spike for spike" if report.ok else "differs; see the first bad step above")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

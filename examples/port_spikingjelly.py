"""Port a SpikingJelly network to a JAX step function and show that nothing changed.

A SpikingJelly net (Linear -> IFNode -> Linear -> LIFNode) runs in SpikingJelly on torch. The
same net is then written as one step function against the array API, with the weights taken
from the torch module by `dualstep.interop.module_to_jax`, and run through dualstep on JAX. The
spike trains are compared, and `dualstep.testing.assert_backends_close` checks the step
function on NumPy, torch and JAX against the float64 oracle, naming any backend, function and
time step that diverges. Float64 throughout, so the comparison is exact up to rounding.

    python examples/port_spikingjelly.py      (needs SpikingJelly: pip install --no-deps
                                               spikingjelly==2.0.0 loguru tqdm)
"""

from __future__ import annotations

import jax
import numpy as np
import torch
from array_api_compat import array_namespace
from spikingjelly.activation_based import functional, layer, neuron

import dualstep as ds
from dualstep import interop
from dualstep.testing import assert_backends_close, if_step, lif_step

T, BATCH, N_IN, HIDDEN, N_OUT = 32, 8, 16, 32, 10


def spikingjelly_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Linear(N_IN, HIDDEN), neuron.IFNode(), layer.Linear(HIDDEN, N_OUT), neuron.LIFNode()
    ).double()
    with torch.no_grad():
        net[0].weight.mul_(3.0)  # strong enough input for both layers to fire
        net[2].weight.mul_(6.0)
    functional.set_step_mode(net, "m")
    return net


def step_function(params: dict):
    """The net as ``(x, (v1, v2)) -> (spikes, (v1, v2))`` for any array backend.

    `params` are NumPy arrays; each call puts them in the input's namespace (a constant under
    JAX's tracing).
    """
    fire1, fire2 = if_step(), lif_step(tau=2.0)

    def step(x, state):
        xp = array_namespace(x)

        def linear(a, name):
            w = xp.asarray(params[f"{name}.weight"], dtype=a.dtype)
            return a @ xp.matrix_transpose(w) + xp.asarray(params[f"{name}.bias"], dtype=a.dtype)

        v1, v2 = state
        s1, v1 = fire1(linear(x, "0"), v1)
        s2, v2 = fire2(linear(s1, "2"), v2)
        return s2, (v1, v2)

    return step


def main() -> dict:
    rng = np.random.default_rng(0)
    x = (rng.random((T, BATCH, N_IN)) < 0.3).astype(np.float64)
    net = spikingjelly_net()
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()

    jax.config.update("jax_enable_x64", True)
    # Writable NumPy copies of the ported weights (torch warns on read-only arrays).
    params = {k: np.array(v) for k, v in interop.module_to_jax(net).items()}
    step = step_function(params)
    state = (np.zeros((BATCH, HIDDEN)), np.zeros((BATCH, N_OUT)))
    ours, _ = ds.multi_step_forward(interop.to_jax(x), step, state=interop.to_jax(state))
    ours = interop.to_numpy(ours)

    differ = np.argwhere(ours != theirs)
    print(f"SpikingJelly vs dualstep on JAX: {int(theirs.sum())} spikes, {len(differ)} differ")
    if len(differ):
        raise SystemExit(f"first differing spike at time step {differ[0][0]}")
    report = assert_backends_close(step, x, state=state)
    print(report)
    return {"spikes": int(theirs.sum()), "report": report}


if __name__ == "__main__":
    main()

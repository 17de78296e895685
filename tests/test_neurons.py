"""`dualstep.neurons`: SpikingJelly's neurons bit for bit on torch, agreeing on JAX and NumPy,
fused on both kernels."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualstep import neurons, surrogate
from dualstep.surrogate import SURROGATES

_RESETS = st.sampled_from([0.0, None, -0.25])
_BASE = {
    "v_threshold": st.sampled_from([1.0, 0.5]),
    "v_reset": _RESETS,
    "detach_reset": st.booleans(),
}
# Each neuron: SpikingJelly's class, and a strategy for its hyperparameters.
SPIKINGJELLY = {
    "IF": ("IFNode", _BASE),
    "LIF": (
        "LIFNode",
        {**_BASE, "tau": st.sampled_from([2.0, 3.0, 1.7]), "decay_input": st.booleans()},
    ),
    "ParametricLIF": (
        "ParametricLIFNode",
        {**_BASE, "init_tau": st.sampled_from([2.0, 3.5]), "decay_input": st.booleans()},
    ),
    "QIF": (
        "QIFNode",
        {
            "tau": st.sampled_from([2.0, 3.0]),
            "v_c": st.sampled_from([0.8, 0.6]),
            "a0": st.sampled_from([1.0, 0.5]),
            "v_rest": st.just(0.0),
            "v_reset": st.sampled_from([-0.1, None]),
            "detach_reset": st.booleans(),
        },
    ),
    "EIF": (
        "EIFNode",
        {
            "tau": st.sampled_from([2.0, 3.0]),
            "delta_T": st.sampled_from([1.0, 0.5]),
            "theta_rh": st.sampled_from([0.8, 0.5]),
            "v_reset": st.sampled_from([-0.1, None]),
            "detach_reset": st.booleans(),
        },
    ),
    "Izhikevich": (
        "IzhikevichNode",
        {
            **_BASE,
            "tau": st.sampled_from([2.0, 3.0]),
            "a": st.sampled_from([0.0, 0.3]),
            "b": st.sampled_from([0.0, 0.2]),
            "tau_w": st.sampled_from([2.0, 4.0]),
        },
    ),
    "CubaLIF": (
        "CUBALIFNode",
        {
            "c_decay": st.sampled_from([0.5, 0.25]),
            "v_decay": st.sampled_from([0.75, 0.9]),
            "v_threshold": st.sampled_from([0.5, 1.0]),
            "v_reset": _RESETS,
        },
    ),
}
_SURROGATE = st.sampled_from(SURROGATES).map(lambda cls: cls.__name__)


def _spikingjelly_run(sj_neuron, x, names):
    """SpikingJelly's neuron in single-step mode over `x`: the spikes and final state."""
    ys = [sj_neuron(x_t) for x_t in x]
    state = {name: getattr(sj_neuron, name) for name in names}
    return ys, state


def _our_run(neuron, x):
    step, state = neuron, neuron.initial_state(x)
    ys = []
    for x_t in x:
        y, state = step(x_t, state)
        ys.append(y)
    return ys, state if isinstance(state, dict) else {"v": state}


@pytest.mark.parametrize("name", list(SPIKINGJELLY))
def test_torch_equals_spikingjelly_bit_for_bit(name):
    """Spikes, every state variable and the gradients of x (and of PLIF's `w`) of a loss on
    spikes and final state, over a grid of hyperparameters, surrogates and dtypes."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import neuron as sj_neuron_module
    from spikingjelly.activation_based import surrogate as sj_surrogate

    sj_class, hyper = SPIKINGJELLY[name]
    cls = getattr(neurons, name)

    @settings(max_examples=10, deadline=None)
    @given(
        st.fixed_dictionaries(hyper),
        _SURROGATE,
        st.sampled_from([torch.float32, torch.float32, torch.float64]),
        st.integers(0, 2**32 - 1),
    )
    def check(params, surrogate_name, dtype, seed):
        gen = torch.Generator().manual_seed(seed)
        x = (torch.randn(6, 3, 5, generator=gen) * 1.5).to(dtype)
        theirs_params = dict(params)
        if name == "CubaLIF":
            theirs_params.pop("detach_reset", None)
        sj_neuron = getattr(sj_neuron_module, sj_class)(
            **theirs_params,
            surrogate_function=getattr(sj_surrogate, surrogate_name)(),
        ).to(dtype)
        extra = {"w": sj_neuron.w} if name == "ParametricLIF" else {}
        ours = cls(**params, **extra, surrogate_function=getattr(surrogate, surrogate_name)())
        results = []
        for run, neuron in ((_our_run, ours), (_spikingjelly_run, sj_neuron)):
            xr = x.clone().requires_grad_()
            args = (neuron, xr) if run is _our_run else (neuron, xr, cls.STATE)
            ys, state = run(*args)
            weights = torch.randn(len(ys), *x.shape[1:], generator=gen.manual_seed(1)).to(dtype)
            loss = sum((y * w).sum() for y, w in zip(ys, weights, strict=True))
            loss = loss + sum((s * s).sum() * (i + 1) for i, s in enumerate(state.values()))
            wrt = (xr, *extra.values())
            grads = torch.autograd.grad(loss, wrt)
            results.append((torch.stack(ys), state, grads))
        (ys, state, grads), (sj_ys, sj_state, sj_grads) = results
        label = (name, params, surrogate_name, dtype)
        assert ys.dtype == sj_ys.dtype and torch.equal(ys, sj_ys), label
        spiked.append(bool(sj_ys.abs().sum() > 0))
        for var in cls.STATE:
            assert state[var].dtype == sj_state[var].dtype, (var, *label)
            assert torch.equal(state[var], sj_state[var]), (var, *label)
        for g, sj_g in zip(grads, sj_grads, strict=True):
            assert torch.equal(g, sj_g), (label, (g - sj_g).abs().max())

    spiked: list[bool] = []
    check()
    assert sum(spiked) >= len(spiked) // 2, f"spikes in {sum(spiked)} of {len(spiked)} cases"

"""`dualstep.neurons`: SpikingJelly's neurons bit for bit on torch, agreeing on JAX and NumPy,
fused on both kernels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import MAKERS, assert_close, every_neuron, variables

import dualstep as ds
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

    @settings(max_examples=15, deadline=None)
    @given(
        st.fixed_dictionaries(hyper),
        _SURROGATE,
        st.sampled_from(
            [torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16]
        ),
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
            torch.testing.assert_close(
                state[var], sj_state[var], rtol=0, atol=0, equal_nan=True, msg=str(label)
            )
        for g, sj_g in zip(grads, sj_grads, strict=True):
            # Bit for bit, NaN where SpikingJelly has NaN (an EIF's exponential can overflow).
            torch.testing.assert_close(g, sj_g, rtol=0, atol=0, equal_nan=True, msg=str(label))

    spiked: list[bool] = []
    check()
    assert sum(spiked) >= len(spiked) // 2, f"spikes in {sum(spiked)} of {len(spiked)} cases"


def test_li_equals_spikingjelly_non_spiking_lif():
    torch = pytest.importorskip("torch")
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import neuron as sj_neuron_module

    x = torch.randn(7, 2, 4, generator=torch.Generator().manual_seed(0))
    ys, v = ds.multi_step_forward(x, neurons.LI(tau=3.0), state=neurons.LI().initial_state(x))
    theirs = torch.stack(sj_neuron_module.NonSpikingLIFNode(tau=3.0)(x))
    assert torch.equal(ys, theirs) and torch.equal(v, theirs[-1])


def test_adaptive_lif_follows_its_equations():
    """No SpikingJelly counterpart: the equations of its docstring, written out here."""
    torch = pytest.importorskip("torch")
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0)) * 2
    for v_reset in (0.0, None):
        lif = neurons.AdaptiveLIF(tau=2.0, tau_adapt=5.0, beta=0.7, v_reset=v_reset)
        ys, state = ds.multi_step_forward(x, lif, state=lif.initial_state(x))
        v, a = torch.zeros(8), torch.zeros(8)
        for t, x_t in enumerate(x):
            h = v + (x_t - v) / 2.0
            theta = 1.0 + 0.7 * a
            s = (h >= theta).float()
            assert torch.equal(ys[t], s)
            v = h - s * theta if v_reset is None else (1 - s) * h
            a = a + (s - a) / 5.0
        assert torch.allclose(state["v"], v) and torch.allclose(state["a"], a)
        assert 0 < ys.mean() < 0.5 and a.max() > 0.2


def test_every_neuron_agrees_with_the_numpy_oracle(backend):
    """float64 on every backend: outputs and final states equal NumPy's within tolerance (JAX
    rounds exp and division as XLA does)."""
    names, step, initial_state = every_neuron()
    x_np = np.random.default_rng(0).normal(size=(12, 3, 4)) * 1.5
    oracle = ds.multi_step_forward(x_np, step, state=initial_state(x_np))
    x = backend.asarray(x_np)
    ys, state = ds.multi_step_forward(x, step, state=initial_state(x))
    (ys_np, state_np) = oracle
    for name, y, y_np in zip(names, ys, ys_np, strict=True):
        assert_close(backend.to_numpy(y), y_np)
        assert y_np.any(), name
    for name in names:
        ours, oracle_state = variables(state[name]), variables(state_np[name])
        assert ours.keys() == oracle_state.keys(), name
        for var, value in ours.items():
            assert_close(backend.to_numpy(value), oracle_state[var])


def test_jax_gradients_equal_torch_autograd(jax_x64):
    """float64: `jax.grad` of a loss on every neuron's outputs and final state (x, the initial
    states and ParametricLIF's `w`) against torch autograd."""
    torch = pytest.importorskip("torch")
    jnp = jax_x64.numpy
    names, _, initial_state = every_neuron()
    rng = np.random.default_rng(1)
    x_np = rng.normal(size=(10, 2, 3)) * 1.5
    w_np = rng.normal(size=(len(names), 10, 2, 3))

    def loss(x, s0, w, weights):
        ys, s = ds.multi_step_forward(x, every_neuron(w)[1], state=s0)
        total = sum((y * weights[i]).sum() for i, y in enumerate(ys))
        leaves = [v for state in s.values() for v in variables(state).values()]
        return total + sum((v * v).sum() for v in leaves)

    grads = {}
    for kind in ("torch", "jax"):
        if kind == "torch":
            x = torch.from_numpy(x_np).requires_grad_()
            w = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
            out = loss(x, initial_state(x), w, torch.from_numpy(w_np))
            grads[kind] = [g.numpy() for g in torch.autograd.grad(out, (x, w))]
        else:
            fn = jax_x64.grad(loss, (0, 2))
            x = jnp.asarray(x_np)
            grads[kind] = [np.asarray(g) for g in fn(x, initial_state(x), -0.5, w_np)]
    for g_jax, g_torch in zip(grads["jax"], grads["torch"], strict=True):
        np.testing.assert_allclose(g_jax, g_torch, rtol=1e-10, atol=1e-10)
        assert np.abs(g_torch).max() > 0


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_every_neuron_fuses_and_trains_as_the_loop(framework):
    """All neurons in one fused step (kernels interpreted on CPU) against the loop, float32:
    outputs and final states equal, gradients of x and the initial states close."""
    names, step, initial_state = every_neuron()
    rng = np.random.default_rng(2)
    x_np = (rng.normal(size=(6, 16)) * 1.5).astype(np.float32)
    w_np = rng.normal(size=(len(names), 6, 16)).astype(np.float32)

    def loss(ys, state, w):
        leaves = [v for s in state.values() for v in variables(s).values()]
        total = sum((y * w[i]).sum() for i, y in enumerate(ys))
        return total + sum((v * v).sum() for v in leaves)

    results = []
    for fused in (True, False):
        if framework == "torch":
            torch = pytest.importorskip("torch")
            pytest.importorskip("triton")
            x = torch.from_numpy(x_np).requires_grad_()
            s0 = initial_state(x)
            leaves = [v.requires_grad_() for s in s0.values() for v in variables(s).values()]
            ys, state = ds.multi_step_forward(x, step, state=s0, fused=fused)
            grads = torch.autograd.grad(loss(ys, state, torch.from_numpy(w_np)), [x, *leaves])
            out = [ys, state, [g.numpy() for g in grads]]
        else:
            jax = pytest.importorskip("jax")
            pytest.importorskip("jax.experimental.pallas")

            def run(x, s0, fused=fused):
                ys, state = ds.multi_step_forward(x, step, state=s0, fused=fused)
                return loss(ys, state, w_np), (ys, state)

            x = jax.numpy.asarray(x_np)
            fn = jax.value_and_grad(run, (0, 1), has_aux=True)
            (_, (ys, state)), grads = fn(x, initial_state(x))
            out = [ys, state, [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]]
        results.append(out)
    (ys, state, grads), (ys_loop, state_loop, grads_loop) = results
    to_np = MAKERS[framework]().to_numpy
    for name, y, y_loop in zip(names, ys, ys_loop, strict=True):
        np.testing.assert_array_equal(to_np(y), to_np(y_loop), err_msg=name)
    for name in names:
        for var, value in variables(state[name]).items():
            expected = to_np(variables(state_loop[name])[var])
            np.testing.assert_allclose(to_np(value), expected, rtol=1e-6, atol=1e-6)
    for g, g_loop in zip(grads, grads_loop, strict=True):
        scale = max(1.0, float(np.abs(g_loop).max()))
        np.testing.assert_allclose(g, g_loop, rtol=1e-5, atol=1e-6 * scale)
    assert np.abs(grads_loop[0]).max() > 0


def test_parametric_lif_w_trains_fused_on_jax_and_torch_refuses_it_with_grad():
    """A JAX kernel gives `w`'s gradient as the loop does; a torch kernel gives gradients for
    `x_seq` and `state` only, so a `w` that requires grad is refused by name (and fuses
    without grad)."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax.experimental.pallas")
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    x_np = (np.random.default_rng(4).normal(size=(6, 16)) * 1.5).astype(np.float32)
    plif = neurons.ParametricLIF()
    x = jax.numpy.asarray(x_np)

    def loss(w, fused):
        neuron = plif.replace(w=w)
        ys, v = ds.multi_step_forward(x, neuron, state=neuron.initial_state(x), fused=fused)
        return (ys * np.arange(16.0, dtype=np.float32)).sum() + (v * v).sum()

    fused, looped = (jax.grad(loss)(np.float32(-0.3), f) for f in (True, False))
    np.testing.assert_allclose(fused, looped, rtol=1e-6)
    assert looped != 0
    half = neurons.ParametricLIF(w=jax.numpy.float32(-0.3))  # a float32 `w`, float16 x
    x16 = x.astype(jax.numpy.float16)
    ys, v = ds.multi_step_forward(x16, half, state=half.initial_state(x16))
    assert ys.dtype == v.dtype == jax.numpy.float16
    xt = torch.from_numpy(x_np)
    neuron = plif.replace(w=torch.nn.Parameter(torch.tensor(-0.3)))
    with pytest.raises(ds.NotFusable, match="captures a tensor that requires grad"):
        ds.multi_step_forward(xt, neuron, state=neuron.initial_state(xt), fused=True)
    with torch.no_grad():
        ys, v = ds.multi_step_forward(xt, neuron, state=neuron.initial_state(xt), fused=True)
        ys_loop, v_loop = ds.multi_step_forward(xt, neuron, state=neuron.initial_state(xt))
    assert torch.equal(ys, ys_loop) and torch.allclose(v, v_loop)


def test_hyperparameters_are_checked_and_neurons_are_immutable():
    lif = neurons.LIF(tau=3.0, v_reset=None)
    assert lif.tau == 3.0 and lif.v_reset is None and lif.params == {}
    assert repr(neurons.LI(4)) == "LI(tau=4.0)"
    assert lif.replace(tau=4.0).tau == 4.0 and lif.tau == 3.0
    plif = neurons.ParametricLIF(init_tau=3.0)
    assert plif.params == {"w": pytest.approx(-np.log(2.0))}
    assert plif.replace(w=0.5).params == {"w": 0.5}
    with pytest.raises(AttributeError, match=r"immutable: make a new one with \.replace"):
        lif.tau = 4.0
    with pytest.raises(TypeError, match="has no hyperparameter or parameter 'taus'"):
        lif.replace(taus=4.0)
    with pytest.raises(ValueError, match=re.escape("`tau` must be greater than 1.0; got 1.0")):
        neurons.LIF(tau=1.0)
    with pytest.raises(ValueError, match=re.escape("`init_tau` must be greater than 1.0")):
        neurons.ParametricLIF(init_tau=0.5)
    with pytest.raises(ValueError, match="`v_threshold` must exceed `v_reset`"):
        neurons.QIF(v_threshold=-0.5)
    with pytest.raises(ValueError, match="`v_rest` must be at least `v_reset`"):
        neurons.EIF(v_rest=-1.0)
    with pytest.raises(ValueError, match=re.escape("`delta_T` must be greater than 0.0")):
        neurons.EIF(delta_T=0.0)
    with pytest.raises(TypeError, match="`v_threshold` must be a real number; got '1'"):
        neurons.IF(v_threshold="1")
    with pytest.raises(TypeError, match="`detach_reset` must be a bool; got 1"):
        neurons.IF(detach_reset=1)
    with pytest.raises(TypeError, match=re.escape("must be a dualstep.surrogate.Surrogate")):
        neurons.IF(surrogate_function=lambda h: h)


def test_initial_state_is_spikingjellys_in_the_input_layout(backend):
    x = backend.asarray(np.zeros((5, 2, 3), np.float32))
    v = neurons.QIF().initial_state(x)
    assert tuple(v.shape) == (2, 3) and backend.to_numpy(v).dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(v), np.float32(-0.1))
    state = neurons.Izhikevich(w_rest=0.25, v_reset=None).initial_state(x, t_last=True)
    assert state.keys() == {"v", "w"} and tuple(state["w"].shape) == (5, 2)
    np.testing.assert_array_equal(backend.to_numpy(state["v"]), 0.0)
    np.testing.assert_array_equal(backend.to_numpy(state["w"]), 0.25)
    with pytest.raises(ValueError, match="`x_seq` must have a time axis; got shape"):
        neurons.LIF().initial_state(backend.asarray(np.float32(1.0)))
    with pytest.raises(TypeError, match="got list"):
        neurons.LIF().initial_state([1.0])


def test_cuba_lif_is_nirs_cuba_lif_rescaled():
    """NIR's CubaLIF, read by `dualstep.nir` (forward Euler, the current first, firing at
    ``v >= v_threshold`` under SpikingJelly's convention), is `CubaLIF` with
    ``c_decay = 1 - dt / tau_syn``, ``v_decay = 1 - dt / tau_mem``, the input scaled by
    ``(dt / tau_syn) (dt / tau_mem) r w_in`` (`c` stands for ``(dt / tau_mem) r I``)."""
    nir = pytest.importorskip("nir")
    from dualstep.nir import load

    dt, tau_syn, tau_mem, r, w_in = 1e-3, 2e-3, 4e-3, 2.0, 1.5
    ones = np.ones(3)
    node = nir.CubaLIF(
        tau_syn=ones * tau_syn, tau_mem=ones * tau_mem, r=ones * r, v_leak=ones * 0,
        v_threshold=ones * 0.5, v_reset=ones * 0, w_in=ones * w_in,
    )  # fmt: skip
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([3])), "cuba": node,
               "output": nir.Output(output_type=np.array([3]))},
        edges=[("input", "cuba"), ("cuba", "output")],
    )  # fmt: skip
    model = load(graph, dt=dt, convention="spikingjelly")
    x = np.random.default_rng(0).random((40, 2, 3)) * 2
    y_nir, _ = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    cuba = neurons.CubaLIF(c_decay=1 - dt / tau_syn, v_decay=1 - dt / tau_mem, v_threshold=0.5)
    scale = (dt / tau_syn) * (dt / tau_mem) * r * w_in
    y, _ = ds.multi_step_forward(x * scale, cuba, state=cuba.initial_state(x))
    np.testing.assert_array_equal(y, y_nir)
    assert 0 < y.mean() < 1

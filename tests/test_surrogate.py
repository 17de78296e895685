"""`dualstep.surrogate`: SpikingJelly's surrogates, bit for bit on torch, agreeing on JAX and
NumPy, fused on both kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import surrogate_lifs

import dualstep as ds
from dualstep import surrogate
from dualstep.surrogate import SURROGATES

# Each surrogate with its SpikingJelly name and a hypothesis strategy for its parameters.
_ALPHA = st.floats(0.25, 8.0)
PARAMS = {
    "Sigmoid": {"alpha": _ALPHA},
    "ATan": {"alpha": _ALPHA},
    "PiecewiseQuadratic": {"alpha": _ALPHA},
    "SoftSign": {"alpha": _ALPHA},
    "Erf": {"alpha": _ALPHA},
    "SuperSpike": {"alpha": _ALPHA},
    "PiecewiseLeakyReLU": {"w": st.floats(0.25, 4.0), "c": st.sampled_from([0.0, 0.01, 0.1])},
    "QPseudoSpike": {"alpha": st.floats(1.25, 8.0)},
    "PiecewiseExp": {"alpha": _ALPHA},
    "Rect": {"alpha": _ALPHA},
}
NAMES = [cls.__name__ for cls in SURROGATES]
# SpikingJelly defines no primitive function for SuperSpike.
PRIMITIVE = [n for n in NAMES if n != "SuperSpike"]


def _inputs(draw_floats: list[float], params: dict) -> np.ndarray:
    """The drawn points, and the places where a surrogate changes form: 0, the edges of a
    piecewise surrogate (1 / alpha, w) and just inside and outside them."""
    edges = [0.0]
    for value in params.values():
        if value:
            edges += [1 / value, value]
    edges += [e * f for e in edges for f in (-1.0, 1 - 2**-10, 1 + 2**-10)]
    return np.array(draw_floats + edges, np.float32)


def _case(name: str):
    return st.tuples(
        st.fixed_dictionaries(PARAMS[name]),
        st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=12),
    )


@pytest.mark.parametrize("name", NAMES)
def test_torch_spikes_and_gradients_equal_spikingjelly_bit_for_bit(name):
    torch = pytest.importorskip("torch")
    sj = pytest.importorskip("spikingjelly.activation_based.surrogate")

    @settings(max_examples=25, deadline=None)
    @given(_case(name))
    def check(case):
        params, points = case
        x = torch.from_numpy(_inputs(points, params))
        ours, theirs = getattr(surrogate, name)(**params), getattr(sj, name)(**params)
        grads = []
        for fn in (ours, theirs):
            xr = x.clone().requires_grad_()
            y = fn(xr)
            (g,) = torch.autograd.grad(y, xr, torch.linspace(-1, 2, len(x)))
            grads.append((y.detach(), g))
        (y, g), (y_sj, g_sj) = grads
        assert y.dtype == y_sj.dtype and torch.equal(y, y_sj)
        assert torch.equal(g, g_sj), (params, x[g != g_sj], g[g != g_sj], g_sj[g != g_sj])

    check()


@pytest.mark.parametrize("name", PRIMITIVE)
def test_primitive_functions_equal_spikingjelly(name):
    """``spiking=False``: SpikingJelly's smooth primitive function, and its gradient."""
    torch = pytest.importorskip("torch")
    sj = pytest.importorskip("spikingjelly.activation_based.surrogate")
    params = {"PiecewiseLeakyReLU": {"w": 0.5, "c": 0.1}}.get(name, {})
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    ours = getattr(surrogate, name)(**params, spiking=False)
    theirs = getattr(sj, name)(**params, spiking=False)
    values = []
    for fn in (ours, theirs):
        xr = x.clone().requires_grad_()
        y = fn(xr)
        values.append((y.detach(), torch.autograd.grad(y.sum(), xr)[0]))
    torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=1e-12)
    # The spiking surrogate's gradient is the primitive's derivative (QPseudoSpike and the
    # two piecewise surrogates away from their kinks).
    spiking = getattr(surrogate, name)(**params)
    grad = spiking.gradient(x, torch.ones_like(x))
    kinks = torch.zeros_like(x, dtype=torch.bool)
    for edge in [0.0, *(1 / v for v in params.values()), *params.values(), 1.0, 0.5, 2.0]:
        kinks |= (x.abs() - edge).abs() < 0.06
    torch.testing.assert_close(grad[~kinks], values[0][1][~kinks], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_jax_and_numpy_agree_with_torch(name):
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=40) * 2, [0.0, -0.0, 0.5, -1.0, 1.0]]).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    spike = getattr(surrogate, name)()
    xt = torch.from_numpy(x).requires_grad_()
    yt = spike(xt)
    (gt,) = torch.autograd.grad(yt, xt, torch.from_numpy(g))
    yj, pull = jax.vjp(spike, jnp.asarray(x))
    (gj,) = pull(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(yj), yt.detach().numpy())
    np.testing.assert_array_equal(spike(x), yt.detach().numpy())
    assert spike(x).dtype == np.float32 and yj.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(gj), gt.numpy(), rtol=2e-6, atol=1e-7)
    assert np.abs(gt.numpy()).max() > 0


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_every_surrogate_fuses_and_trains_as_the_loop(framework):
    """A LIF with each surrogate, all in one fused step (kernels interpreted on CPU) and
    looped: spikes, voltages and the gradients of x and of each initial voltage."""
    rng = np.random.default_rng(3)
    n = len(SURROGATES)
    x_np = (rng.normal(size=(4, 16)) * 1.5).astype(np.float32)
    v_np = [(rng.normal(size=16) * 0.3).astype(np.float32) for _ in range(n)]
    w_np = rng.normal(size=(4, 16)).astype(np.float32)
    step = surrogate_lifs([cls() for cls in SURROGATES])

    def loss(ys, vs, w):
        return sum((y * w).sum() * (i + 1) for i, y in enumerate(ys)) + sum(
            (v * v).sum() for v in vs
        )

    results = []
    for fused in (True, False):
        if framework == "torch":
            torch = pytest.importorskip("torch")
            pytest.importorskip("triton")
            x = torch.from_numpy(x_np).requires_grad_()
            vs = tuple(torch.from_numpy(v).requires_grad_() for v in v_np)
            ys, finals = ds.multi_step_forward(x, step, state=vs, fused=fused)
            grads = torch.autograd.grad(loss(ys, finals, torch.from_numpy(w_np)), (x, *vs))
            results.append([a.detach().numpy() for a in (*ys, *finals, *grads)])
        else:
            jax = pytest.importorskip("jax")
            pytest.importorskip("jax.experimental.pallas")

            def run(x, vs, fused=fused):
                ys, finals = ds.multi_step_forward(x, step, state=vs, fused=fused)
                return loss(ys, finals, w_np), (ys, finals)

            fn = jax.value_and_grad(run, (0, 1), has_aux=True)
            (_, (ys, finals)), (gx, gvs) = fn(jax.numpy.asarray(x_np), tuple(v_np))
            results.append([np.asarray(a) for a in (*ys, *finals, gx, *gvs)])
    fused, looped = results
    names = [cls.__name__ for cls in SURROGATES]
    labels = [f"spikes, {m}" for m in names] + [f"voltage, {m}" for m in names]
    labels += ["gradient of x"] + [f"gradient of v0, {m}" for m in names]
    for i, (a, b, label) in enumerate(zip(fused, looped, labels, strict=True)):
        if i < n:
            np.testing.assert_array_equal(a, b, err_msg=label)
        else:
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale, err_msg=label)


def test_parameters_are_checked_and_part_of_equality():
    assert surrogate.ATan() == surrogate.ATan(2.0) != surrogate.ATan(3.0)
    assert surrogate.ATan() != surrogate.Sigmoid(2.0)
    assert surrogate.ATan(spiking=False) != surrogate.ATan()
    assert len({surrogate.ATan(), surrogate.ATan(2)}) == 1
    assert repr(surrogate.PiecewiseLeakyReLU()) == (
        "PiecewiseLeakyReLU(w=1.0, c=0.01, spiking=True)"
    )
    with pytest.raises(AttributeError, match="immutable"):
        surrogate.ATan().alpha = 3.0
    with pytest.raises(ValueError, match="`alpha` must be positive"):
        surrogate.SoftSign(0.0)
    with pytest.raises(ValueError, match="greater than 1"):
        surrogate.QPseudoSpike(1.0)
    with pytest.raises(ValueError, match="`w` must be positive"):
        surrogate.PiecewiseLeakyReLU(w=-1.0)
    with pytest.raises(ValueError, match="finite"):
        surrogate.ATan(math.inf)
    with pytest.raises(TypeError, match="real number"):
        surrogate.Sigmoid("4")
    with pytest.raises(TypeError, match="bool"):
        surrogate.Sigmoid(4.0, spiking=1)
    with pytest.raises(TypeError, match="got list"):
        surrogate.ATan()([0.5])
    with pytest.raises(NotImplementedError, match="no primitive function"):
        surrogate.SuperSpike(spiking=False)(np.zeros(2))


@pytest.mark.parametrize("name", NAMES)
def test_fire_is_the_spike_with_the_neuron_kernels_gradient(name):
    """`fire`: the same spike; in float32 the gradient ``grad * derivative(h)`` (where the
    surrogate has one), the same function as `gradient` rounded another way, on torch and
    JAX alike; in float64 the surrogate's own gradient."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    spike = getattr(surrogate, name)()
    rng = np.random.default_rng(1)
    h = np.concatenate([rng.normal(size=64) * 2, [0.0, 0.25, -0.5]]).astype(np.float32)
    g = rng.normal(size=h.shape).astype(np.float32)
    ht = torch.from_numpy(h).requires_grad_()
    (g_fire,) = torch.autograd.grad(spike.fire(ht), ht, torch.from_numpy(g))
    assert torch.equal(spike.fire(ht), spike(ht))
    own = spike.gradient(torch.from_numpy(h), torch.from_numpy(g))
    if spike.derivative(torch.from_numpy(h)) is None:
        assert torch.equal(g_fire, own)
    else:
        expected = torch.from_numpy(g) * spike.derivative(torch.from_numpy(h))
        assert torch.equal(g_fire, expected)
        np.testing.assert_allclose(g_fire.numpy(), own.numpy(), rtol=1e-5, atol=1e-6)
    _, pull = jax.vjp(spike.fire, jax.numpy.asarray(h))
    np.testing.assert_allclose(np.asarray(pull(jax.numpy.asarray(g))[0]), g_fire.numpy(),
                               rtol=2e-6, atol=1e-7)  # fmt: skip
    h64 = torch.from_numpy(h.astype(np.float64)).requires_grad_()
    (g64,) = torch.autograd.grad(spike.fire(h64), h64, torch.from_numpy(g.astype(np.float64)))
    assert torch.equal(g64, spike.gradient(h64.detach(), torch.from_numpy(g.astype(np.float64))))

"""Fused kernels (``fused=True``) equal the plain loop: values, final state and gradients.

On CPU the kernels run in their interpreters (Pallas ``interpret=True``, Triton's interpreter);
``tests/test_cuda.py`` runs the same comparisons compiled on a GPU. Spikes must be identical,
voltages and gradients within 1e-6 relative.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dualstep as ds
from dualstep.testing import if_step, lif_step, surrogate_spike

FUSED_BACKENDS = ("torch", "jax")
RTOL = 1e-6


def _framework(name: str):
    if name == "torch":
        pytest.importorskip("triton")
        return pytest.importorskip("torch")
    pytest.importorskip("jax.experimental.pallas")
    return pytest.importorskip("jax")


# Where `_asarray` puts arrays: set by the `fw` fixture ("cpu" runs the kernels interpreted).
_DEVICE = {"torch": "cpu", "jax": "cpu"}


def _asarray(name: str, a: np.ndarray):
    if name == "torch":
        import torch

        return torch.from_numpy(np.array(a)).to(_DEVICE["torch"])
    import jax.numpy as jnp

    return jnp.asarray(a)  # on the default device, which the fixture sets


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _surrogate_lif(name: str, tau: float = 2.0):
    """LIF whose spike is a Heaviside with a sigmoid surrogate gradient, written the way each
    framework's users write it (``torch.autograd.Function``, ``jax.custom_vjp``)."""
    spike = surrogate_spike(name)

    def step(x, v):
        h = v + (x - v) / tau
        s = spike(h - 1.0)
        return s, h * (1.0 - s)

    return step


def _assert_same(fused, loop, *, exact: bool = False) -> None:
    if isinstance(loop, (tuple, list)):
        assert type(fused) is type(loop) and len(fused) == len(loop)
        for a, b in zip(fused, loop, strict=True):
            _assert_same(a, b, exact=exact)
        return
    if loop is None:
        assert fused is None
        return
    a, b = _np(fused), _np(loop)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    if exact:
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(
            a, b, rtol=RTOL, atol=RTOL * max(1.0, np.abs(b).max(initial=0.0))
        )


def _gpu(name: str) -> bool:
    if name == "torch":
        torch = pytest.importorskip("torch")
        return torch.cuda.is_available()
    jax = pytest.importorskip("jax")
    return any(d.platform == "gpu" for d in jax.devices())


_CUDA = pytest.mark.cuda


@pytest.fixture(
    params=[
        ("torch", "cpu"),
        ("jax", "cpu"),
        pytest.param(("torch", "cuda"), marks=_CUDA),
        pytest.param(("jax", "gpu"), marks=_CUDA),
    ],
    ids=lambda p: "-".join(p),
)
def fw(request):
    """(backend name, framework module) for each backend with a fused lowering, on CPU (the
    kernels interpreted) and, where there is one, on a GPU (compiled)."""
    name, device = request.param
    m = _framework(name)
    if device != "cpu" and not _gpu(name):
        pytest.skip(f"{name} sees no GPU here")
    _DEVICE[name] = device
    try:
        if name == "jax":
            with m.default_device(m.devices(device)[0]):
                yield name, m
        else:
            yield name, m
    finally:
        _DEVICE[name] = "cpu"


_GRID = st.tuples(
    st.integers(1, 6),  # T
    st.lists(st.integers(1, 9), min_size=1, max_size=3),  # one step's shape
    st.sampled_from(["float32", "float64"]),
    st.sampled_from(["if", "lif", "lif_soft"]),
    st.integers(0, 2**16),
)


@settings(max_examples=8)
@given(case=_GRID)
def test_fused_equals_loop_on_the_property_grid(fw, jax_x64, case):
    name, _ = fw
    steps, shape, dtype, kind, seed = case
    rng = np.random.default_rng(seed)
    # Inputs on a dyadic grid: every operation is exact, so spikes must agree bit for bit.
    x = (rng.integers(-8, 12, size=(steps, *shape)) / 4).astype(dtype)
    v0 = (rng.integers(-4, 4, size=shape) / 4).astype(dtype)
    step = {
        "if": if_step(with_v=True),
        "lif": lif_step(),
        "lif_soft": lif_step(v_reset=None, with_v=True),
    }[kind]
    xs, vs = _asarray(name, x), _asarray(name, v0)
    fused = ds.multi_step_forward(xs, step, state=vs, fused=True)
    loop = ds.multi_step_forward(xs, step, state=vs)
    spikes = (fused[0][0], loop[0][0]) if isinstance(loop[0], tuple) else (fused[0], loop[0])
    _assert_same(*spikes, exact=True)
    _assert_same(fused, loop)


def test_fused_gradients_equal_the_loop_with_a_surrogate(fw):
    _check_gradients(*fw, (9, 3, 70))


def _product(x, v):
    """A step whose gradient needs both x and v."""
    h = v * x + 0.5
    return h, h


@pytest.mark.parametrize(
    ("make_step", "x_read", "arrays"),
    [(_surrogate_lif, False, 1), (lambda name: _product, True, 2)],
    ids=["lif-saves-h", "product-reads-x"],
)
def test_training_saves_only_what_the_gradient_reads(fw, make_step, x_read, arrays):
    """The forward kernel saves the fewest bytes the backward needs: a surrogate LIF only its
    charged voltage h (one [T, N] array, as SpikingJelly's kernel), neither x nor v; a step
    whose gradient reads x and v, x and v (on torch x itself, not a copy). Gradients equal
    the loop's."""
    name, m = fw
    step = make_step(name)
    rng = np.random.default_rng(1)
    shape = (6, 3, 5)
    x = _asarray(name, rng.normal(size=shape).astype(np.float32))
    v0 = _asarray(name, rng.normal(size=shape[1:]).astype(np.float32))

    def call(x, v, fused=True):
        return ds.multi_step_forward(x, step, state=v, fused=fused)

    def loss(x, v, fused):
        y, v_t = call(x, v, fused)
        return y.sum() + (v_t * v_t).sum()

    if name == "torch":
        saved = []
        xr, vr = x.clone().requires_grad_(), v0.clone().requires_grad_()
        call(xr, vr)  # traced here, not counted
        with m.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            call(xr, vr)
        sizes = [t.numel() for t in saved]
        assert any(t.data_ptr() == xr.data_ptr() for t in saved) == x_read
        grads = [m.autograd.grad(loss(xr, vr, f), (xr, vr)) for f in (True, False)]
    else:
        import jax.ad_checkpoint

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # lines "f32[6,15] output of ..."
            jax.ad_checkpoint.print_saved_residuals(call, x, v0)
        kinds = [line.split(" ", 1)[0] for line in printed.getvalue().splitlines()]
        sizes = [int(np.prod([int(d) for d in re.findall(r"\d+", k.split("[")[1])])) for k in kinds]
        grads = [m.grad(functools.partial(loss, fused=f), (0, 1))(x, v0) for f in (True, False)]
    assert [n for n in sizes if n > 1] == [math.prod(shape)] * arrays
    _assert_same(tuple(grads[0]), tuple(grads[1]))


def _check_gradients(name, m, shape):
    """Outputs, final states and the gradients of x and of the initial state of a surrogate
    LIF, fused and looped, over `shape` (``[T, ...]``)."""
    step = _surrogate_lif(name)
    rng = np.random.default_rng(0)
    x = _asarray(name, (rng.normal(size=shape) * 1.5).astype(np.float32))
    v0 = _asarray(name, (rng.normal(size=shape[1:]) * 0.3).astype(np.float32))
    w = _asarray(name, rng.normal(size=shape).astype(np.float32))
    _assert_same(
        ds.multi_step_forward(x, step, state=v0, fused=True),
        ds.multi_step_forward(x, step, state=v0),
    )

    def loss(x, v, fused):
        y, v_t = ds.multi_step_forward(x, step, state=v, fused=fused)
        return (y * w).sum() + (v_t * v_t).sum()

    if name == "torch":
        grads = []
        for fused in (True, False):
            xr, vr = x.clone().requires_grad_(), v0.clone().requires_grad_()
            grads.append(m.autograd.grad(loss(xr, vr, fused), (xr, vr)))
    else:
        grads = [m.grad(functools.partial(loss, fused=f), (0, 1))(x, v0) for f in (True, False)]
    _assert_same(tuple(grads[0]), tuple(grads[1]))
    assert np.abs(_np(grads[1][0])).max() > 0  # the surrogate really carries a gradient


@pytest.mark.parametrize(
    ("shape", "launch"),
    [
        # two programs, the second's lanes past N masked; 13 = 8 + a tail of 5 steps
        ((13, 40), {"block": 32, "unroll": 8, "num_warps": 1}),
        # one program, 1019 of its lanes masked; fewer steps than the unroll
        ((7, 5), {"block": 1024, "unroll": 16, "num_warps": 8}),
    ],
    ids=["unroll8", "one-program"],
)
def test_gpu_launches_equal_the_loop_interpreted(fw, monkeypatch, shape, launch):
    """Launches like those `gpu_launch` picks, run through the interpreters: unrolled steps
    with their tail loops, blocks from one warp's lanes to 1024, forward and backward (the
    32-step unroll is compiled, not interpreted: tests/test_gpu_compile.py)."""
    name, m = fw
    from dualstep import fused

    assert launch["unroll"] <= fused.GPU["max_unroll"]
    lowering = "triton" if name == "torch" else "pallas"
    module = importlib.import_module(f"dualstep.fused.{lowering}")
    monkeypatch.setattr(module, "INTERPRET_LAUNCH", launch)
    _check_gradients(name, m, shape)


def test_time_last_module_lists_and_tuple_outputs(fw):
    name, _ = fw
    lif = _surrogate_lif(name)
    rng = np.random.default_rng(1)
    x = _asarray(name, rng.normal(size=(2, 5, 6)).astype(np.float32))  # [B, N, T]
    v0 = _asarray(name, np.zeros((2, 5), np.float32))
    modules = [lambda a: a * 2.0, lif, lambda s: (s, s + 1.0)]
    state = (None, v0, None)
    fused = ds.t_last_multi_step_forward(x, modules, state=state, fused=True)
    loop = ds.t_last_multi_step_forward(x, modules, state=state)
    _assert_same(fused, loop)
    assert fused[1][0] is None and fused[1][2] is None
    if name == "torch":  # torch.stack(ys, dim=-1)'s layout, as the loop gives
        assert fused[0][0].stride() == loop[0][0].stride()


def test_dict_state_and_stateless_steps(fw):
    name, m = fw
    x = _asarray(name, np.linspace(-2, 2, 4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5))
    state = {
        "v": _asarray(name, np.zeros((3, 5), np.float32)),
        "n": _asarray(name, np.ones((3, 5), np.float32)),
    }

    def step(x, s):
        v = s["v"] * 0.5 + x
        return v * s["n"], {"n": s["n"] + 1.0, "v": v}

    _assert_same(
        ds.multi_step_forward(x, step, state=state, fused=True)[0],
        ds.multi_step_forward(x, step, state=state)[0],
    )
    fused_final = ds.multi_step_forward(x, step, state=state, fused=True)[1]
    assert set(fused_final) == {"v", "n"}
    tanh = m.tanh if name == "torch" else m.numpy.tanh
    _assert_same(ds.multi_step_forward(x, tanh, fused=True), ds.multi_step_forward(x, tanh))


def test_state_entries_passed_to_one_another(fw):
    """A step that hands state entries on to other entries (a swap): every new entry is read
    from the old state, not from an entry already updated in the same step; values and the
    gradients of x and of both entries equal the loop's."""
    name, m = fw
    rng = np.random.default_rng(2)
    x = _asarray(name, rng.normal(size=(5, 4, 3)).astype(np.float32))
    state = tuple(_asarray(name, rng.normal(size=(4, 3)).astype(np.float32)) for _ in range(2))

    def swap(x, s):
        a, b = s
        return x * a + b, (b, a)

    def loss(x, s, fused):
        y, (a, b) = ds.multi_step_forward(x, swap, state=s, fused=fused)
        return (y * y).sum() + 2 * a.sum() + 3 * b.sum()

    _assert_same(
        ds.multi_step_forward(x, swap, state=state, fused=True),
        ds.multi_step_forward(x, swap, state=state),
    )
    if name == "torch":
        grads = []
        for fused in (True, False):
            xr = x.clone().requires_grad_()
            sr = tuple(a.clone().requires_grad_() for a in state)
            grads.append(m.autograd.grad(loss(xr, sr, fused), (xr, *sr)))
    else:
        grads = [m.grad(functools.partial(loss, fused=f), (0, 1))(x, state) for f in (True, False)]
        grads = [(g[0], *g[1]) for g in grads]
    _assert_same(tuple(grads[0]), tuple(grads[1]))


def test_chunked_calls_compose_with_fused_chunks(fw):
    """A fused multi-step call is a valid chunk module: state carries across chunks, with
    and without checkpointing."""
    name, m = fw
    step = _surrogate_lif(name)
    rng = np.random.default_rng(2)
    x = _asarray(name, (rng.normal(size=(7, 2, 9)) * 1.5).astype(np.float32))
    v0 = _asarray(name, np.zeros((2, 9), np.float32))

    def chunk(c, s):
        return ds.multi_step_forward(c, step, state=s, fused=True)

    loop = ds.multi_step_forward(x, step, state=v0)
    for checkpoint in (False, True):
        _assert_same(
            ds.chunk_multi_step_forward(3, x, chunk, state=v0, checkpoint=checkpoint), loop
        )

    def loss(x, checkpoint):
        y, v = ds.chunk_multi_step_forward(3, x, chunk, state=v0, checkpoint=checkpoint)
        return (y * x).sum() + v.sum()

    def reference(x):
        y, v = ds.multi_step_forward(x, step, state=v0)
        return (y * x).sum() + v.sum()

    if name == "torch":
        grads = []
        for fn in (functools.partial(loss, checkpoint=True), reference):
            xr = x.clone().requires_grad_()
            grads.append(m.autograd.grad(fn(xr), xr)[0])
    else:
        grads = [m.grad(functools.partial(loss, checkpoint=True))(x), m.grad(reference)(x)]
    _assert_same(grads[0], grads[1])


def test_jax_transformations_and_traced_parameters(jax_x64):
    jax = _framework("jax")
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    x = jnp.asarray((rng.normal(size=(6, 4, 5)) * 1.5).astype(np.float32))
    v0 = jnp.zeros((4, 5), jnp.float32)

    def loss(tau, x, fused):
        step = _surrogate_lif("jax", tau=tau)  # tau is a tracer of grad and jit
        y, v = ds.multi_step_forward(x, step, state=v0, fused=fused)
        return (y * x).sum() + (v * v).sum()

    g_fused = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(2.0, x, True)
    g_loop = jax.grad(loss, (0, 1))(2.0, x, False)
    _assert_same(tuple(g_fused), tuple(g_loop))
    batch = jnp.stack([x, 2 * x])

    def run(fused):
        return jax.vmap(
            lambda b: ds.multi_step_forward(b, _surrogate_lif("jax"), state=v0, fused=fused)
        )

    _assert_same(run(True)(batch), run(False)(batch))


def test_torch_trace_cache_sees_changed_scalars_and_tensors():
    torch = _framework("torch")
    x = torch.linspace(-1, 3, 4 * 6).reshape(4, 6)
    v0 = torch.zeros(6)
    gain = torch.tensor(1.0)

    class Neuron:
        def __init__(self, tau):
            self.tau = tau

        def step(self, x, v):
            v = v + (x * gain - v) / self.tau
            return v, v

    neuron = Neuron(2.0)
    first = ds.multi_step_forward(x, neuron.step, state=v0, fused=True)
    neuron.tau = 4.0  # an attribute rebound: a new trace
    _assert_same(
        ds.multi_step_forward(x, neuron.step, state=v0, fused=True),
        ds.multi_step_forward(x, neuron.step, state=v0),
    )
    gain.mul_(3.0)  # a captured tensor changed in place: its version changes
    _assert_same(
        ds.multi_step_forward(x, neuron.step, state=v0, fused=True),
        ds.multi_step_forward(x, neuron.step, state=v0),
    )
    assert not np.allclose(_np(first[0]), _np(ds.multi_step_forward(x, neuron.step, state=v0)[0]))


def test_torch_kernel_sources_go_with_their_kernels(monkeypatch):
    """Generated sources were registered in linecache and never removed (400 entries after 200
    distinct steps); now they are dropped with the kernels the cache evicts."""
    import gc
    import linecache

    torch = _framework("torch")
    from dualstep.fused import triton as fused_triton

    monkeypatch.setattr(fused_triton, "CACHE_SIZE", 2)
    x, v0 = torch.linspace(-1, 3, 4 * 3).reshape(4, 3), torch.zeros(3)

    def sources():
        gc.collect()
        return [name for name in linecache.cache if name.startswith("<dualstep-fused-")]

    before = len(sources())
    for i in range(8):  # an annealed threshold: a new closure value, a new trace, every call
        threshold = 1.0 + i / 8

        def step(x, v, threshold=threshold):
            v = v + x
            s = (v > threshold).to(x.dtype)
            return s, v * (1 - s)

        ds.multi_step_forward(x, step, state=v0, fused=True)
    assert len(sources()) - before <= 2 * 2  # forward and backward of the cached two


def test_torch_fused_calls_from_threads():
    """Six threads, eight LIF steps each, cold (tracing: make_fx's global state) and warm
    (the Triton interpreter's global patching): every result equals the loop."""
    import concurrent.futures

    torch = _framework("torch")

    def steps(k):
        def step(x, v, tau=2.0 + k):
            v = v + (x - v) / tau
            s = (v > 0.5).to(x.dtype)
            return s, v * (1 - s)

        return step

    x, v0 = torch.linspace(-1, 3, 8 * 6).reshape(8, 6), torch.zeros(6)
    want = [ds.multi_step_forward(x, steps(k), state=v0) for k in range(8)]
    for _ in ("cold", "warm"):
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            got = list(
                pool.map(
                    lambda k: ds.multi_step_forward(x, steps(k), state=v0, fused=True), range(8)
                )
            )
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w)


def _scale(x, v, row):
    return x * row, v


@pytest.mark.parametrize(
    ("make_step", "named"),
    [
        (lambda m, w: lambda x, v: (x @ w, v), "mm|dot_general|broadcast"),
        (
            lambda m, w: functools.partial(_scale, row=w[0]),
            r"(captures|broadcasts) an array.* \(4,\)",
        ),
        (lambda m, w: lambda x, v: (x.sum(-1, keepdims=True) + v, v), "sum|reduce"),
    ],
)
def test_fused_true_names_what_cannot_be_fused(fw, make_step, named):
    name, m = fw
    x = _asarray(name, np.ones((3, 2, 4), np.float32))
    v0 = _asarray(name, np.zeros((2, 4), np.float32))
    w = _asarray(name, np.ones((4, 4), np.float32))
    step = make_step(m, w)
    with pytest.raises(ds.NotFusable, match=named):
        ds.multi_step_forward(x, step, state=v0, fused=True)
    # 'auto' and False run the loop.
    _assert_same(
        ds.multi_step_forward(x, step, state=v0, fused="auto"),
        ds.multi_step_forward(x, step, state=v0),
    )


def test_a_state_of_another_shape_is_not_fusable(fw):
    name, _ = fw
    x = _asarray(name, np.ones((3, 2, 4), np.float32))
    with pytest.raises(ds.NotFusable, match=r"state array 0 has shape \(4,\)"):
        ds.multi_step_forward(
            x, lambda x, v: (x + v, v), state=_asarray(name, np.zeros(4, np.float32)), fused=True
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_with_bool_spikes(fw, dtype):
    name, m = fw
    if name == "torch" and dtype == "bfloat16" and _DEVICE["torch"] == "cpu":
        pytest.skip("Triton's interpreter computes bfloat16 wrongly; refused on CPU (below)")
    where = m.where if name == "torch" else m.numpy.where

    def step(x, v):
        h = v + x
        s = h >= 1.0
        return s, where(s, 0.0, h).astype(h.dtype) if name == "jax" else where(s, 0.0, h)

    x = _asarray(name, np.random.default_rng(5).random((6, 3, 7)).astype(np.float32))
    x = x.to(getattr(m, dtype)) if name == "torch" else x.astype(dtype)
    v0 = x[0] * 0
    fused, loop = (ds.multi_step_forward(x, step, state=v0, fused=f) for f in (True, False))
    assert str(fused[0].dtype).endswith("bool")
    _assert_same(fused[0], loop[0], exact=True)
    np.testing.assert_array_equal(
        _np(fused[1].astype("float32") if name == "jax" else fused[1].float()),
        _np(loop[1].astype("float32") if name == "jax" else loop[1].float()),
    )


def test_torch_float16_transcendentals_and_division_equal_the_loop():
    """exp, sigmoid, tanh and a division by 3 of float16 inputs are computed in float32 and
    rounded once, as torch computes them (the GPU compiler refuses them in float16:
    tests/test_gpu_compile.py)."""
    torch = _framework("torch")

    def step(x, v):
        v = v + (x - v) / 3.0
        return torch.tanh(v) + torch.sigmoid(x) * torch.exp(-v), v

    x = torch.from_numpy(np.random.default_rng(6).normal(size=(6, 3, 7))).to(torch.float16)
    fused, loop = (ds.multi_step_forward(x, step, state=x[0] * 0, fused=f) for f in (True, False))
    for a, b in zip(fused, loop, strict=True):
        assert a.dtype == torch.float16
        # One float16 rounding apart at most (its unit roundoff is 2**-11).
        np.testing.assert_allclose(a.float().numpy(), b.float().numpy(), rtol=2**-10, atol=2**-14)


def test_a_negative_base_to_an_integer_power_is_not_nan(fw):
    """FitzHugh-Nagumo's ``v - v**3 / 3``, and other integer powers of negative numbers, are
    finite as in the loop (they were ``exp2(b * log2(a))``, NaN for a negative base)."""
    name, _ = fw

    def step(x, v):
        v = v + 0.1 * (v - v**3 / 3 + x)
        return v**2.0 + v**-1 + v**11, v

    x = _asarray(name, np.random.default_rng(7).normal(size=(5, 2, 6)).astype(np.float32))
    v0 = _asarray(name, -np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(2, 6))
    fused, loop = (ds.multi_step_forward(x, step, state=v0, fused=f) for f in (True, False))
    assert not np.isnan(_np(loop[0])).any()
    _assert_same(fused, loop)


def test_nan_propagates_through_relu_clamp_and_maximum(fw):
    """NaN in, NaN out, as in the loop (Triton's maximum drops NaN unless told)."""
    name, m = fw
    if name == "torch":
        ops = [m.relu, lambda a: m.clamp(a, -0.5, 0.5), lambda a: a.clamp(min=0)]
        ops += [lambda a: m.maximum(a, a * 0), lambda a: m.minimum(a, a * 0)]
    else:
        ops = [m.nn.relu, lambda a: m.numpy.clip(a, -0.5, 0.5), lambda a: m.numpy.maximum(a, 0)]
    x = _asarray(name, np.array([[np.nan, -1.0, 0.25, 2.0]] * 3, np.float32))
    v0 = x[0] * 0
    for op in ops:

        def step(a, v, op=op):
            return op(a + v), v

        fused, loop = (ds.multi_step_forward(x, step, state=v0, fused=f) for f in (True, False))
        assert np.isnan(_np(loop[0])[:, 0]).all()
        _assert_same(fused, loop)


def test_torch_captured_and_created_zero_dim_tensors_are_constants():
    """``tau = torch.tensor(2.0)`` captured, ``torch.tensor(1.0)`` made in the step: each is a
    constant of the kernel (it generated ``(0.5).to(tl.float32)`` before)."""
    torch = _framework("torch")
    tau = torch.tensor(2.0)

    def step(x, v):
        v = v + (x - v) / tau
        return v * torch.tensor(1.0) + torch.tensor(0.5) * 2, v

    x = torch.rand(4, 2, 5)
    fused, loop = (ds.multi_step_forward(x, step, state=x[0] * 0, fused=f) for f in (True, False))
    _assert_same(fused, loop)


def test_torch_clamp_and_maximum_train_fused():
    """In the default grad mode autograd's own formulas for clamp and maximum work in place
    (`logical_and_`, `masked_fill_`); the backward kernel is traced functionalized, so these
    steps fuse and their gradients equal the loop's."""
    torch = _framework("torch")

    def step(x, v):
        v = torch.clamp(v + x, -1.0, 1.0)
        return torch.maximum(v, x * 0.5), v * 0.9

    x = torch.from_numpy(np.random.default_rng(8).normal(size=(5, 2, 6)).astype(np.float32))
    grads = []
    for fused in (True, False):
        xr = x.clone().requires_grad_()
        y, v = ds.multi_step_forward(xr, step, state=torch.zeros(2, 6), fused=fused)
        grads.append(torch.autograd.grad(y.sum() + v.square().sum(), xr)[0])
    _assert_same(grads[0], grads[1])
    assert grads[1].abs().max() > 0


def test_torch_module_steps_are_traced_once(monkeypatch):
    """A module step's key: every nn.Module holds a set (its non-persistent buffers' names),
    where the key used to give up, so each call traced and compiled again."""
    torch = _framework("torch")
    from dualstep.fused import triton as fused_triton

    class Leak(torch.nn.Module):
        def forward(self, x, v):
            return x + v, v * 0.5

    builds = []
    original = fused_triton._build
    monkeypatch.setattr(fused_triton, "_build", lambda *a: builds.append(1) or original(*a))
    step, x = Leak(), torch.rand(3, 4)
    for _ in range(3):
        ds.multi_step_forward(x, step, state=x[0] * 0, fused=True)
    assert len(builds) == 1


def test_torch_a_kernel_that_fails_to_build_is_not_fusable_and_auto_loops(monkeypatch):
    """Data-dependent control flow cannot be traced into a kernel: fused=True raises
    NotFusable with the tracer's error chained, fused='auto' warns once, naming it, and runs
    the loop; the failure is remembered (the step is not traced again at every call). An
    error the step raises by itself propagates unchanged."""
    torch = _framework("torch")
    from dualstep.backends import torch as torch_backend
    from dualstep.fused import triton as fused_triton

    def branchy(x, v):
        v = v + x if x.mean() > 0.5 else v - x
        return v, v

    builds = []
    original = fused_triton._build
    monkeypatch.setattr(fused_triton, "_build", lambda *a: builds.append(1) or original(*a))
    x, v0 = torch.rand(4, 3), torch.zeros(3)
    with pytest.raises(ds.NotFusable, match="could not be built") as caught:
        ds.multi_step_forward(x, branchy, state=v0, fused=True)
    assert caught.value.__cause__ is not None
    monkeypatch.setattr(torch_backend, "AUTO_FUSES_ON", ("cuda", "cpu"))  # as on a GPU
    loop = ds.multi_step_forward(x, branchy, state=v0)
    with pytest.warns(RuntimeWarning, match="fused='auto' runs the loop: its kernel could not"):
        _assert_same(ds.multi_step_forward(x, branchy, state=v0, fused="auto"), loop)
    assert len(builds) == 1

    def broken(x, v):
        raise KeyError("the step's own error")

    with pytest.raises(KeyError, match="the step's own error"):
        ds.multi_step_forward(x, broken, state=v0, fused=True)


def test_jax_a_step_that_reads_its_shape_is_not_fusable():
    """The kernel gives the step blocks of elements: ``x / x.shape[-1]`` would divide by the
    block's size (0.0625 fused, 0.2 looped at N=5). Steps that make arrays of their input's
    shape (``zeros_like``, ``full``) are fused."""
    jax = _framework("jax")
    jnp = jax.numpy
    x, v0 = jnp.ones((3, 5)), jnp.zeros(5)
    with pytest.raises(ds.NotFusable, match="depends on its input's shape"):
        ds.multi_step_forward(x, lambda x, v: (x / x.shape[-1] + v, v), state=v0, fused=True)

    def shaped(x, v):
        return jnp.zeros_like(x) + jnp.full(x.shape, 0.5) + x + v, v

    loop = ds.multi_step_forward(x, shaped, state=v0)
    _assert_same(ds.multi_step_forward(x, shaped, state=v0, fused=True), loop)


def test_jax_gradient_of_a_captured_scalar_ignores_the_padded_lanes():
    """N=5 is padded to a whole block; ``d(c * log(x))/dc`` is ``-inf`` at a padded 0, times
    a zero cotangent: NaN. Each constant's gradient is summed per element with the padding
    masked out."""
    jax = _framework("jax")
    jnp = jax.numpy
    x = jnp.linspace(0.1, 1.0, 15).reshape(3, 5)

    def loss(c, fused):
        def step(a, v):
            return c * jnp.log(a) + v, v * 0.5

        return ds.multi_step_forward(x, step, state=jnp.zeros(5), fused=fused)[0].sum()

    fused, loop = (jax.grad(loss)(2.0, f) for f in (True, False))
    assert np.isfinite(fused)
    _assert_same(fused, loop)


def test_jax_random_numbers_are_refused_by_name():
    """A step that draws random numbers is refused naming the random op, not the first
    broadcast the key handling makes."""
    jax = _framework("jax")
    key = jax.random.PRNGKey(0)

    def noisy(x, v):
        return x + jax.random.uniform(key, x.shape), v

    x = jax.numpy.ones((3, 4))
    with pytest.raises(ds.NotFusable, match="draws random numbers"):
        ds.multi_step_forward(x, noisy, state=x[0], fused=True)


def test_torch_trace_cache_sees_a_captured_tensor_given_new_data():
    """``tau.data = other`` keeps the tensor object and its version: the cache keys captured
    tensors by their storage too, so the kernel is traced again with the new value."""
    torch = _framework("torch")
    tau = torch.tensor(2.0)

    def step(x, v):
        v = v + (x - v) / tau
        return v, v

    x = torch.rand(3, 4)
    ds.multi_step_forward(x, step, state=x[0] * 0, fused=True)
    tau.data = torch.tensor(4.0)
    fused, loop = (ds.multi_step_forward(x, step, state=x[0] * 0, fused=f) for f in (True, False))
    _assert_same(fused, loop)


def test_torch_bfloat16_is_refused_on_cpu():
    torch = _framework("torch")
    x = torch.ones(3, 2, dtype=torch.bfloat16)
    with pytest.raises(ds.NotFusable, match="bfloat16"):
        ds.multi_step_forward(x, lambda a, v: (a + v, v), state=x[0], fused=True)


def test_numpy_has_no_kernels_and_auto_loops():
    x = np.ones((3, 2))
    with pytest.raises(ds.NotFusable, match="NumPy arrays have no fused kernel"):
        ds.multi_step_forward(x, lambda a: a, fused=True)
    np.testing.assert_array_equal(ds.multi_step_forward(x, lambda a: 2 * a, fused="auto"), 2 * x)


def test_spikingjelly_memory_modules_are_not_fused():
    torch = pytest.importorskip("torch")
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    x = torch.ones(3, 2, 4)
    with pytest.raises(ds.NotFusable, match="SpikingJelly memory module keeps it hidden"):
        ds.multi_step_forward(x, neuron.IFNode(), fused=True)
    node = neuron.IFNode()
    expected = ds.multi_step_forward(x, neuron.IFNode())
    torch.testing.assert_close(ds.multi_step_forward(x, node, fused="auto"), expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"fused": "yes"}, ValueError, "`fused` must be True, False or 'auto'; got 'yes'"),
        ({"fused": 1}, TypeError, "`fused` must be True, False or 'auto'; got 1"),
        ({"unroll": 0}, ValueError, "`unroll` must be a positive int or None; got 0"),
        ({"unroll": 2.0}, TypeError, "`unroll` must be a positive int or None; got 2.0"),
        ({"unroll": True}, TypeError, "`unroll` must be a positive int or None; got True"),
    ],
)
def test_fused_and_unroll_arguments_are_checked(kwargs, error, message):
    for fn in (ds.multi_step_forward, ds.t_last_multi_step_forward):
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            fn(np.ones((2, 3)), lambda a: a, **kwargs)


@pytest.mark.parametrize("unroll", [1, 3, 8])
def test_jax_unroll_keeps_results(jax_x64, unroll):
    pytest.importorskip("jax")
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(4).normal(size=(7, 3)))
    step = lif_step(with_v=True)
    _assert_same(
        ds.multi_step_forward(x, step, state=jnp.zeros(3), unroll=unroll),
        ds.multi_step_forward(x, step, state=jnp.zeros(3)),
    )


def _scan_unrolls(fn, x) -> list:
    import jax

    jaxpr = jax.make_jaxpr(fn)(x)
    return [e.params["unroll"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]


def test_jax_default_unroll_is_32_on_a_gpu_for_elementwise_steps_only():
    """Traced under ``jax.default_device("gpu")`` (no GPU needed to trace): the scan of an
    elementwise step unrolls 32 steps, a matmul step and any step on CPU keep 1, and
    `unroll=` overrides the default."""
    jax = _framework("jax")
    import jax.numpy as jnp

    x, short, v = jnp.ones((40, 3)), jnp.ones((5, 3)), jnp.zeros(3)
    w = jnp.ones((3, 3))
    lif = lif_step()

    def matmul(a, s):
        return a @ w, s

    def run(step, **kw):
        return lambda x: ds.multi_step_forward(x, step, state=v, **kw)

    with jax.default_device("gpu"):
        assert _scan_unrolls(run(lif), x) == [32]
        assert _scan_unrolls(run(lif), short) == [5]
        assert _scan_unrolls(run(matmul), x) == [1]
        assert _scan_unrolls(run(lif, unroll=4), x) == [4]
    with jax.default_device("cpu"):
        assert _scan_unrolls(run(lif), x) == [1]


def test_empty_steps_and_nested_outputs(fw):
    """No elements per step: the loop's (empty) result, no launch. A nested output cannot be
    fused and says so."""
    name, _ = fw
    x = _asarray(name, np.ones((3, 0, 4), np.float32))
    step = lif_step()
    fused = ds.multi_step_forward(x, step, state=x[0], fused=True)
    _assert_same(fused, ds.multi_step_forward(x, step, state=x[0]))
    x = _asarray(name, np.ones((3, 2), np.float32))
    with pytest.raises(ds.NotFusable, match="nested structure"):
        ds.multi_step_forward(x, lambda a, v: (((a, a), a), v), state=x[0], fused=True)


def test_torch_time_last_sequences_are_read_and_written_in_place(monkeypatch):
    """`t_last_multi_step_forward` hands the kernels the time-last input as it lies (read at
    its strides, not transposed into a copy) and gets outputs already laid out time-last;
    outputs, final state and gradients equal the loop's. A layout neither time-first nor
    time-last is copied first."""
    torch = _framework("torch")
    from dualstep.fused import triton as fused_triton

    seen = []
    launch = fused_triton._forward

    def spy(kernels, fwd, at, x, *rest, **options):
        seen.append(x.data_ptr())
        return launch(kernels, fwd, at, x, *rest, **options)

    monkeypatch.setattr(fused_triton, "_forward", spy)
    step = _surrogate_lif("torch", tau=3.0)
    rng = np.random.default_rng(1)
    x = torch.from_numpy((rng.normal(size=(3, 5, 11)) * 1.5).astype(np.float32))
    v0 = torch.from_numpy((rng.normal(size=(3, 5)) * 0.3).astype(np.float32))
    w = torch.from_numpy(rng.normal(size=(3, 5, 11)).astype(np.float32))
    results = []
    for fused in (True, False):
        xr, vr = x.clone().requires_grad_(), v0.clone().requires_grad_()
        y, v_t = ds.t_last_multi_step_forward(xr, step, state=vr, fused=fused)
        if fused:
            assert seen == [xr.data_ptr()] and y.is_contiguous() and y.shape == x.shape
        grads = torch.autograd.grad((y * w).sum() + (v_t * v_t).sum(), (xr, vr))
        results.append((y, v_t, *grads))
    _assert_same(tuple(results[0]), tuple(results[1]))
    transposed = x.transpose(0, 1)  # [5, 3, T]: neither layout
    seen.clear()
    ds.t_last_multi_step_forward(transposed, step, state=v0.T, fused=True)
    assert seen and seen[0] != transposed.data_ptr()

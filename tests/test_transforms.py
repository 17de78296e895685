"""All five functions under each framework's transforms give what the untransformed code gives."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import dualstep as ds
from dualstep.testing import FUNCTIONS, STATEFUL_FUNCTIONS, call_time_first, lif_step

STEP = lif_step(spike="sigmoid")  # smooth, so gradients and Jacobians are defined


def _dense(a):
    xp = array_namespace(a)
    return xp.tanh(a * 0.5 + 0.1)


def _time_first(name):
    """`name` as ``x [T, B, N] -> y [T, B, N]``, the stateful functions from a zero state."""

    def fn(x):
        if name not in STATEFUL_FUNCTIONS:
            return call_time_first(name, _dense, x)[0]
        zeros = array_namespace(x).zeros(x.shape[1:], dtype=x.dtype)
        return call_time_first(name, STEP, x, state=zeros)[0]

    return fn


CALLS = {name: _time_first(name) for name in FUNCTIONS}


def _x(shape=(5, 2, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape) + 0.5


# --- torch ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_calls():
    return pytest.importorskip("torch"), CALLS


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_torch_func_vmap(torch_calls, name, grad_enabled):
    torch, calls = torch_calls
    xs = torch.from_numpy(_x((4, 5, 2, 3)))
    with torch.set_grad_enabled(grad_enabled):
        got = torch.func.vmap(calls[name])(xs)
        want = torch.stack([calls[name](x) for x in xs])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# checkpoint=True with grad: torch.func refuses checkpointing's saved-tensor hooks (docs,
# "Transforms and scaling out")
@pytest.mark.parametrize(
    ("grad_enabled", "checkpoint"), [(True, False), (False, False), (False, True)]
)
def test_torch_func_vmap_chunks_whose_first_output_is_not_batched(grad_enabled, checkpoint):
    """Issue: under no_grad the first chunk's output was preallocated unbatched, and a later
    batched output could not be written into it."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_x((6, 2, 3)))

    def chunk_module(xc, s):
        fixed, batched = s  # the output uses `fixed` first, `batched` from the second chunk on
        return xc * 2 + fixed, (batched, fixed)

    def f(batched):
        return ds.chunk_multi_step_forward(
            2,
            x,
            chunk_module,
            state=(torch.zeros(2, 3, dtype=x.dtype), batched),
            checkpoint=checkpoint,
        )[0]

    vs = torch.from_numpy(_x((4, 2, 3), seed=1))
    with torch.set_grad_enabled(grad_enabled):
        got = torch.func.vmap(f)(vs)
        want = torch.stack([f(v) for v in vs])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_torch_func_grad_and_jacrev_equal_autograd(torch_calls, name):
    torch, calls = torch_calls
    fn = calls[name]
    x = torch.from_numpy(_x())
    w = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)
    got = torch.func.grad(lambda a: (fn(a) * w).sum())(x)
    xg = x.clone().requires_grad_()
    (want,) = torch.autograd.grad((fn(xg) * w).sum(), xg)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    jac = torch.func.jacrev(fn)(x)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(fn, x))
    torch.testing.assert_close((jac * w[..., None, None, None]).sum((0, 1, 2)), want)


def test_torch_func_grad_with_checkpoint_is_torchs_documented_limit(torch_calls):
    # Non-reentrant checkpointing uses saved-tensor hooks, which torch.func.grad refuses;
    # torch's own error passes through (autograd.grad / backward work, tested elsewhere).
    torch, _ = torch_calls
    x = torch.from_numpy(_x())

    def loss(a):
        def module(c, s):
            return ds.multi_step_forward(c, STEP, state=s)

        v0 = torch.zeros(2, 3, dtype=a.dtype)
        y, v = ds.chunk_multi_step_forward(2, a, module, state=v0, checkpoint=True)
        return (y * y).sum() + v.sum()

    with pytest.raises(RuntimeError, match="saved tensor hooks"):
        torch.func.grad(loss)(x)


@pytest.mark.parametrize("chunked", [False, True])
def test_torch_autocast_bfloat16_matches_the_plain_loop(torch_calls, chunked):
    torch, _ = torch_calls
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 4)
    step = lif_step()
    x = torch.randn(6, 2, 3) + 0.5
    v0 = torch.zeros(2, 4)

    def layer(xt, v):  # Linear runs in bfloat16 under autocast; the neuron keeps that dtype
        return step(linear(xt), v)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, ys = v0, []
        for xt in x:
            y, v = layer(xt, v)
            ys.append(y)
        want, want_v = torch.stack(ys), v
        if chunked:

            def module(c, s):
                return ds.multi_step_forward(c, layer, state=s)

            got, got_v = ds.chunk_multi_step_forward(4, x, module, state=v0)
        else:
            got, got_v = ds.multi_step_forward(x, layer, state=v0)
        ann = ds.seq_to_ann_forward(x, linear)
    assert got.dtype == want.dtype and got_v.dtype == want_v.dtype
    assert torch.equal(got, want) and torch.equal(got_v, want_v)
    assert ann.dtype == torch.bfloat16 and ann.shape == (6, 2, 4)


# --- JAX --------------------------------------------------------------------------------------


@pytest.fixture
def jax_calls(jax_x64):
    jax = pytest.importorskip("jax")
    return jax, CALLS


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jax_transforms(jax_calls, name):
    jax, calls = jax_calls
    jnp = jax.numpy
    fn = calls[name]
    x = jnp.asarray(_x())  # float64 under the x64 fixture
    assert x.dtype == jnp.float64
    want = np.asarray(fn(x))
    # float64 NumPy oracle: the same call on NumPy arrays
    np.testing.assert_allclose(want, CALLS[name](np.asarray(x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jit(fn)(x), want, rtol=1e-12, atol=1e-12)

    xs = jnp.asarray(_x((3, 5, 2, 3)))
    stacked = np.stack([np.asarray(fn(a)) for a in xs])
    np.testing.assert_allclose(jax.vmap(fn)(xs), stacked, rtol=1e-12, atol=1e-12)

    w = jnp.linspace(-1, 1, x.size).reshape(x.shape)

    def loss(f):
        return lambda a: jnp.sum(f(a) * w)

    grad = jax.grad(loss(fn))(x)
    jac_fwd, jac_rev = jax.jacfwd(fn)(x), jax.jacrev(fn)(x)
    np.testing.assert_allclose(jac_fwd, jac_rev, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jnp.tensordot(w, jac_fwd, x.ndim), grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jax.grad(loss(jax.checkpoint(fn)))(x), grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.grad(loss(fn)))(x), grad, rtol=1e-10, atol=1e-12)

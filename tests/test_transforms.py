"""All five functions under each framework's transforms give what the untransformed code gives."""

from __future__ import annotations

import numpy as np
import pytest

import dualstep as ds
from dualstep.testing import lif_step

NAMES = ["multi_step", "t_last", "chunk", "seq_to_ann", "t_last_seq_to_ann"]
STEP = lif_step(spike="sigmoid")  # smooth, so gradients and Jacobians are defined


def _calls(xp, split=2, moveaxis=None):
    """Each function as ``x [T, B, N] -> y [T, B, N]`` (time first in and out)."""
    move = moveaxis or xp.moveaxis

    def zeros(x):
        return xp.zeros(x.shape[1:], dtype=x.dtype)

    def chunk_module(xc, s):
        return ds.multi_step_forward(xc, STEP, state=s)

    def dense(a):
        return xp.tanh(a * 0.5 + 0.1)

    return {
        "multi_step": lambda x: ds.multi_step_forward(x, STEP, state=zeros(x))[0],
        "t_last": lambda x: move(
            ds.t_last_multi_step_forward(move(x, 0, -1), STEP, state=zeros(x))[0], -1, 0
        ),
        "chunk": lambda x: ds.chunk_multi_step_forward(split, x, chunk_module, state=zeros(x))[0],
        "seq_to_ann": lambda x: ds.seq_to_ann_forward(x, dense),
        "t_last_seq_to_ann": lambda x: move(
            ds.t_last_seq_to_ann_forward(move(x, 0, -1), dense), -1, 0
        ),
    }


def _x(shape=(5, 2, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape) + 0.5


# --- torch ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_calls():
    torch = pytest.importorskip("torch")
    from array_api_compat import array_namespace

    # torch.movedim: torch.moveaxis has no vmap batching rule
    return torch, _calls(array_namespace(torch.zeros(1)), moveaxis=torch.movedim)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_torch_func_vmap(torch_calls, name, grad_enabled):
    torch, calls = torch_calls
    xs = torch.from_numpy(_x((4, 5, 2, 3)))
    with torch.set_grad_enabled(grad_enabled):
        got = torch.func.vmap(calls[name])(xs)
        want = torch.stack([calls[name](x) for x in xs])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# checkpoint=True with grad: torch.func refuses checkpointing's saved-tensor hooks (README)
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


@pytest.mark.parametrize("name", NAMES)
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
    return jax, _calls(jax.numpy)


@pytest.mark.parametrize("name", NAMES)
def test_jax_transforms(jax_calls, name):
    jax, calls = jax_calls
    jnp = jax.numpy
    fn = calls[name]
    x = jnp.asarray(_x())  # float64 under the x64 fixture
    assert x.dtype == jnp.float64
    want = np.asarray(fn(x))
    # float64 NumPy oracle: the same call on NumPy arrays
    np.testing.assert_allclose(want, _calls(np)[name](np.asarray(x)), rtol=1e-12, atol=1e-12)
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

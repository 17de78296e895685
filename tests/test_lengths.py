"""`lengths=`: variable-length sequences. The rule: each batch element of a padded call gives
the outputs (up to its length) and final state of that element run alone on its own steps;
after its length its state is frozen and its outputs are `fill`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import CASES
from hypothesis import given, settings
from hypothesis import strategies as st
from support import MAKERS, assert_close

import dualstep as ds
from dualstep._tree import leaves_with_path
from dualstep.testing import call_time_first
from dualstep.testing.strategies import sequences

STATEFUL = [c for c in CASES if c.initial_state is not None]
STATEFUL_IDS = [c.name for c in STATEFUL]


@st.composite
def padded(draw, dtypes=("float32", "float64")):
    """A sequence and lengths in ``[0, T]`` for each batch element (0 and T included often)."""
    x = draw(sequences(dtypes=dtypes))
    t, b = x.shape[:2]
    lengths = draw(st.lists(st.sampled_from([0, t, *range(t + 1)]), min_size=b, max_size=b))
    return x, lengths


def _select(tree, b):
    """Element `b` of every array leaf of a final state (None kept), as NumPy."""
    if tree is None:
        return None
    if isinstance(tree, tuple):
        return tuple(_select(v, b) for v in tree)
    if isinstance(tree, dict):
        return {k: _select(v, b) for k, v in tree.items()}
    return np.asarray(tree)[b : b + 1]


def _check_state(got, want, dtype, exact):
    got_leaves = list(leaves_with_path(got, "state", sort_keys=True))
    want_leaves = list(leaves_with_path(want, "state", sort_keys=True))
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (_, g), (_, w) in zip(got_leaves, want_leaves, strict=True):
        if w is not None:
            assert_close(g, w, dtype=dtype, exact=exact)


def _alone(backend, case, x, b, n):
    """Element `b` run alone on its own `n` steps: outputs and final state (NumPy). On JAX
    NumPy runs it (the comparison is within tolerance there; each length would compile)."""
    backend = MAKERS["numpy"]() if backend.name == "jax" else backend
    s0 = backend.tree(case.initial_state((1, *x.shape[2:]), x.dtype))
    if n == 0:
        return None, backend.tree_numpy(s0)
    y, s = call_time_first("multi_step_forward", case.step, backend.asarray(x[:n, b : b + 1]),
                           state=s0)  # fmt: skip
    return backend.tree_numpy(y), backend.tree_numpy(s)


FUNCTIONS = ["multi_step_forward", "t_last_multi_step_forward", "chunk_multi_step_forward"]


def _check_rule(backend, case, function, data):
    """Bit for bit on torch and NumPy; JAX within the dtype's tolerance (XLA may fuse the
    batched step otherwise)."""
    x, lengths = data
    exact = backend.name != "jax"
    state = backend.tree(case.initial_state(x.shape[1:], x.dtype))
    lengths_arg = lengths if len(lengths) % 2 else backend.asarray(np.array(lengths))
    y, final = call_time_first(
        function, case.step, backend.asarray(x), state=state, split_size=3,
        lengths=lengths_arg, fill=-1.0,
    )  # fmt: skip
    y, final = backend.tree_numpy(y), backend.tree_numpy(final)
    ys = y if isinstance(y, tuple) else (y,)
    for b, n in enumerate(lengths):
        y_alone, s_alone = _alone(backend, case, x, b, n)
        alone = () if y_alone is None else (y_alone if isinstance(y_alone, tuple) else (y_alone,))
        for i, out in enumerate(ys):
            if n:
                assert_close(out[:n, b : b + 1], alone[i], dtype=x.dtype, exact=exact)
            np.testing.assert_array_equal(out[n:, b], np.asarray(-1.0, out.dtype))
        _check_state(_select(final, b), s_alone, x.dtype, exact)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("case", STATEFUL, ids=STATEFUL_IDS)
@pytest.mark.parametrize("name", ["numpy", "torch"])
@settings(max_examples=10)
@given(data=padded())
def test_each_element_equals_itself_run_alone(name, case, function, data):
    _check_rule(MAKERS[name](), case, function, data)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("case", STATEFUL, ids=STATEFUL_IDS)
@settings(max_examples=4)  # each example compiles a program for its shapes
@given(data=padded())
def test_each_element_equals_itself_run_alone_on_jax(jax_backend, case, function, data):
    _check_rule(jax_backend, case, function, data)


COMPILED = textwrap.dedent(
    """
    import torch
    import dualstep as ds
    from dualstep.testing import lif_step

    step = lif_step()

    def run(x, v, lengths):
        return ds.multi_step_forward(x, step, state=v, lengths=lengths)

    compiled = torch.compile(run, fullgraph=True, backend="eager", dynamic=False)
    x = torch.rand(8, 3, 4, generator=torch.Generator().manual_seed(0)) * 2
    for i, lengths in enumerate(([8, 2, 5], [1, 7, 0], [0, 0, 8])):
        lengths = torch.tensor(lengths)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            y, v = compiled(x, torch.zeros(3, 4), lengths)
        y_eager, v_eager = run(x, torch.zeros(3, 4), lengths)
        assert torch.equal(y, y_eager) and torch.equal(v, v_eager)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(run)(x, torch.zeros(3, 4), torch.tensor([1, 2, 3]))
    print("graph breaks", explained.graph_break_count)
    """
)


def test_torch_compile_fullgraph_takes_new_lengths_without_recompiling():
    """One graph, no break, and new lengths (a tensor argument) reuse it (a subprocess, as in
    tests/test_torch_compile.py: Dynamo's warnings about array-api-compat's caches are not
    errors there)."""
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", COMPILED], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["graph", "breaks", "0"]


def _smooth():
    from dualstep.testing import lif_step

    return lif_step(spike="sigmoid")


def test_gradients_reach_only_the_valid_steps(torch_backend, jax_backend):
    """Padded inputs get zero gradient; valid ones get the gradient of the element run alone
    (through its frozen final state too), on torch and under jax.grad. The padding is inf
    and NaN: the padded steps' discarded branches must not reach the gradients."""
    import jax
    import torch

    step = _smooth()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3, 2))
    lengths = [7, 0, 4]
    x[:, 1], x[4:, 2] = np.inf, np.nan

    def loss(y, v, xp):
        weights = np.linspace(-1, 1, int(np.prod(y.shape))).reshape(y.shape)
        return (y * xp.asarray(weights)).sum() + (v * v).sum()

    xt = torch.tensor(x, requires_grad=True)
    y, v = ds.multi_step_forward(xt, step, state=torch.zeros(3, 2).double(), lengths=lengths)
    (g_torch,) = torch.autograd.grad(loss(y, v, torch), xt)
    g_jax = jax.grad(
        lambda x: loss(*ds.multi_step_forward(x, step, state=jax.numpy.zeros((3, 2), "float64"),
                                              lengths=jax.numpy.asarray(lengths)), jax.numpy)
    )(jax.numpy.asarray(x))  # fmt: skip
    np.testing.assert_allclose(np.asarray(g_jax), g_torch.numpy(), rtol=1e-12, atol=1e-12)
    weights = np.linspace(-1, 1, y.numel()).reshape(tuple(y.shape))
    for b, n in enumerate(lengths):
        assert not g_torch[n:, b].any()
        if n:
            alone = torch.tensor(x[:n, b : b + 1], requires_grad=True)
            ya, va = ds.multi_step_forward(alone, step, state=torch.zeros(1, 2).double())
            la = (ya * torch.from_numpy(weights[:n, b : b + 1])).sum() + (va * va).sum()
            (ga,) = torch.autograd.grad(la, alone)
            assert torch.equal(g_torch[:n, b : b + 1], ga)


_TRACES: list = []


def test_jax_lengths_are_traced_under_jit_vmap_and_the_eager_cache(jax_backend):
    """New lengths never trace again (jit and the eager compile cache); vmap maps over lengths
    and, with one 0-d length per example, over the batch."""
    import jax
    import jax.numpy as jnp

    from dualstep.backends import jax as jax_backend_module

    traces = _TRACES
    traces.clear()

    def step(x, v):
        _TRACES.append(1)  # a global: the compile cache does not key what the step appends to
        v = v + x
        return v, v

    x = jnp.asarray(np.random.default_rng(1).random((6, 4, 3)))
    v0 = jnp.zeros((4, 3))
    run = jax.jit(lambda x, lengths: ds.multi_step_forward(x, step, state=v0, lengths=lengths))
    counts = []
    for lengths in ([6, 0, 3, 2], [1, 1, 1, 1], [6, 6, 6, 6]):
        _, v = run(x, jnp.asarray(lengths))
        np.testing.assert_allclose(v, [x[:n, b].sum(0) for b, n in enumerate(lengths)])
        counts.append(len(traces))
    assert counts[0] == counts[-1] > 0
    ds.clear_jax_cache()
    traces.clear()
    counts = []
    for lengths in ([6, 0, 3, 2], [2, 2, 5, 1]):  # eager: one cached program
        ds.multi_step_forward(x, step, state=v0, lengths=jnp.asarray(lengths))
        counts.append(len(traces))
    assert counts[0] == counts[-1] > 0 and len(jax_backend_module._cache) == 1
    # vmap over lengths: several length sets of one batch.
    many = jnp.asarray([[6, 0, 3, 2], [1, 2, 3, 4]])
    _, vs = jax.vmap(lambda lengths: run(x, lengths))(many)
    for row, lengths in zip(vs, many.tolist(), strict=True):
        np.testing.assert_allclose(row, [x[:n, b].sum(0) for b, n in enumerate(lengths)])

    # vmap over the batch: each example is [T, 3] with a 0-d length.
    def one(x_b, n):
        return ds.multi_step_forward(x_b, step, state=jnp.zeros(3), lengths=n)[1]

    per = jax.vmap(one, in_axes=(1, 0))(x, jnp.asarray([6, 0, 3, 2]))
    np.testing.assert_allclose(per, [x[:n, b].sum(0) for b, n in enumerate([6, 0, 3, 2])])


def test_pad_sequences_then_lengths_is_each_sequence_alone(backend):
    from dualstep.testing import lif_step

    rng = np.random.default_rng(2)
    seqs = [rng.random((n, 3)) * 2 for n in (5, 1, 3)]
    step = lif_step()
    for time_axis in (0, -1):
        given = [backend.asarray(s if time_axis == 0 else s.T) for s in seqs]
        x_seq, lengths = ds.pad_sequences(given, time_axis=time_axis, fill=9.0)
        assert tuple(x_seq.shape) == ((5, 3, 3) if time_axis == 0 else (3, 3, 5))
        assert backend.to_numpy(lengths).tolist() == [5, 1, 3]
        function = ds.multi_step_forward if time_axis == 0 else ds.t_last_multi_step_forward
        y, v = function(x_seq, step, state=backend.asarray(np.zeros((3, 3))), lengths=lengths)
        y = backend.to_numpy(y)
        for b, s in enumerate(seqs):
            ya, va = ds.multi_step_forward(backend.asarray(s[:, None]), step,
                                           state=backend.asarray(np.zeros((1, 3))))  # fmt: skip
            got = y[: len(s), b] if time_axis == 0 else y[b, :, : len(s)].T
            np.testing.assert_array_equal(got, backend.to_numpy(ya)[:, 0])
            np.testing.assert_array_equal(backend.to_numpy(v)[b], backend.to_numpy(va)[0])
    padded, _ = ds.pad_sequences([backend.asarray(s) for s in seqs], fill=9.0)
    assert (backend.to_numpy(padded)[1:, 1] == 9.0).all()
    with pytest.raises(ValueError, match=r"`sequences\[1\]` must have the shape of"):
        ds.pad_sequences([backend.asarray(np.ones((2, 3))), backend.asarray(np.ones((2, 4)))])
    with pytest.raises(TypeError, match="non-empty list or tuple of arrays; got an empty one"):
        ds.pad_sequences([])


def _summed(x, s):
    """A step whose output has no batch axis (a sum over the batch)."""
    return x.sum(), s + x


@pytest.mark.parametrize("lengths", [[4, 4], [2, 4], [0, 4]], ids=["all-T", "some", "zero"])
@pytest.mark.parametrize("function", ["multi_step_forward", "t_last_multi_step_forward"])
def test_a_state_or_output_without_a_batch_axis_is_refused_at_any_lengths(
    backend, function, lengths
):
    """Steps that every element takes (up to the shortest length) may run without a mask;
    they are checked as the masked ones are."""
    x = backend.asarray(
        np.ones((4, 2, 3)) if function == "multi_step_forward" else np.ones((2, 3, 4))
    )
    call = getattr(ds, function)
    with pytest.raises(ValueError, match=r"so `state` must have the batch \(2\) as its first"):
        call(x, lambda x, s: (x, s + x.sum()), state=backend.asarray(np.zeros(())), lengths=lengths)
    with pytest.raises(
        ValueError, match=r"so `y` must have the batch \(2\) as its first axis; got shape \(\)"
    ):
        call(x, _summed, state=backend.asarray(np.zeros((2, 3))), lengths=lengths)


def test_assert_backends_close_takes_lengths():
    from dualstep.testing import assert_backends_close, installed_backends, lif_step

    x = np.random.default_rng(3).random((7, 3, 2)) * 2
    report = assert_backends_close(lif_step(), x, state=np.zeros((3, 2)), lengths=[7, 0, 3])
    assert report.ok and len(report.rows) == 3 * len(installed_backends())
    with pytest.raises(ValueError, match=r"`lengths` must lie within \[0, T\] \(T = 7\)"):
        assert_backends_close(lif_step(), x, state=np.zeros((3, 2)), lengths=[9, 0, 3])


def test_torch_func_vmap_over_the_batch_and_over_lengths():
    torch = pytest.importorskip("torch")
    from dualstep.testing import lif_step

    step = lif_step()
    x = torch.rand(6, 4, 3, generator=torch.Generator().manual_seed(0)) * 2
    lengths = torch.tensor([6, 0, 3, 2])
    _, v = ds.multi_step_forward(x, step, state=torch.zeros(4, 3), lengths=lengths)

    def one(x_b, n):  # one example [T, 3] and its 0-d length
        return ds.multi_step_forward(x_b, step, state=torch.zeros(3), lengths=n)[1]

    assert torch.equal(torch.func.vmap(one, in_dims=(1, 0))(x, lengths), v)
    many = torch.tensor([[6, 0, 3, 2], [1, 2, 3, 4]])

    def final(lengths):
        return ds.multi_step_forward(x, step, state=torch.zeros(4, 3), lengths=lengths)[1]

    got = torch.func.vmap(final)(many)
    assert torch.equal(got[0], v) and torch.equal(got[1], final(many[1]))


def test_assert_implementations_close_takes_lengths():
    """A port that is right on the valid steps and wrong after them passes with the lengths
    and fails without them, at the first padded step."""
    from dualstep.testing import assert_implementations_close, lif_step

    def port(x, v):  # LIF, but zero input leaves the voltage at 9 (as padding would)
        y, v_new = lif_step()(x, v)
        return y, np.where(x == 0, 9.0, v_new)

    x = np.random.default_rng(4).random((6, 3, 2)) + 0.5
    x[4:, 0], x[2:, 2] = 0.0, 0.0
    state = np.zeros((3, 2))
    kwargs = {"reference_state": state, "candidate_state": state}
    report = assert_implementations_close(lif_step(), port, x, lengths=[4, 6, 2], **kwargs)
    assert report.ok
    report = assert_implementations_close(lif_step(), port, x, check=False, **kwargs)
    assert not report.ok and report.rows[-1].first_bad_step == "final state"


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_fused_kernels_stop_each_element_at_its_length(framework):
    """`fused=True` (interpreted on CPU) against the loop, both with lengths: outputs and
    final states equal, gradients of x and of the initial state close. Three blocks of 64
    elements, whose longest lengths (5, 3, 2) are below T: each block's backward starts
    there; the padding is NaN."""
    from dualstep import neurons, surrogate

    lif = neurons.LIF(surrogate_function=surrogate.ATan())
    rng = np.random.default_rng(5)
    x_np = (rng.random((7, 4, 40)) * 2).astype(np.float32)
    lengths = [5, 0, 3, 2]
    for b, n in enumerate(lengths):
        x_np[n:, b] = np.nan
    w = rng.normal(size=x_np.shape).astype(np.float32)
    results = []
    for fused in (True, False):
        if framework == "torch":
            torch = pytest.importorskip("torch")
            pytest.importorskip("triton")
            x = torch.from_numpy(x_np).requires_grad_()
            v0 = torch.full((4, 40), 0.25).requires_grad_()
            y, v = ds.multi_step_forward(x, lif, state=v0, lengths=lengths, fused=fused, fill=-1.0)
            grads = torch.autograd.grad((y * torch.from_numpy(w)).sum() + (v * v).sum(), (x, v0))
            results.append([a.detach().numpy() for a in (y, v, *grads)])
        else:
            jax = pytest.importorskip("jax")
            pytest.importorskip("jax.experimental.pallas")

            lengths_j = jax.numpy.asarray(lengths)

            def loss(x, v0, fused=fused, lengths_j=lengths_j):
                y, v = ds.multi_step_forward(x, lif, state=v0, lengths=lengths_j, fused=fused,
                                             fill=-1.0)  # fmt: skip
                return (y * w).sum() + (v * v).sum(), (y, v)

            (_, (y, v)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
                jax.numpy.asarray(x_np), jax.numpy.full((4, 40), 0.25)
            )
            results.append([np.asarray(a) for a in (y, v, *grads)])
    (y, v, gx, gv), (y_loop, v_loop, gx_loop, gv_loop) = results
    np.testing.assert_array_equal(y, y_loop)
    np.testing.assert_array_equal(v, v_loop)
    assert (y[3:, 2] == -1).all() and y_loop.max() == 1
    np.testing.assert_allclose(gx, gx_loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gv, gv_loop, rtol=1e-5, atol=1e-6)
    assert not gx[3:, 2].any() and np.abs(gx).max() > 0 and np.isfinite(gv).all()


def test_auto_off_a_gpu_runs_the_loops_rule_not_the_kernels(backend, monkeypatch):
    """``fused='auto'`` on a CPU runs no kernel, so it takes the loop's masks, not the
    kernel's per-element step counts (which would cost the loop several full-size ops a
    step)."""
    from dualstep import _lengths
    from dualstep.testing import lif_step

    calls = []
    monkeypatch.setattr(
        _lengths, "Elementwise", lambda *a, real=_lengths.Elementwise: calls.append(1) or real(*a)
    )
    x, v0 = backend.asarray(np.ones((5, 2, 3))), backend.asarray(np.zeros((2, 3)))
    y, _ = ds.multi_step_forward(x, lif_step(), state=v0, lengths=[5, 2], fused="auto")
    assert not calls
    want = ds.multi_step_forward(x, lif_step(), state=v0, lengths=[5, 2])
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(want[0]))

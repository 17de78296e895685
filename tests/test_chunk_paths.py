"""The fast chunk paths equal the plain path: preallocated output, checkpointed chunks."""

from __future__ import annotations

import numpy as np
import pytest

import dualstep as ds
from dualstep.testing import lif_step

torch = pytest.importorskip("torch")


def _lif_chunk(xc, v):
    return ds.multi_step_forward(xc, lif_step(spike="sigmoid"), state=v)


class _Net(torch.nn.Module):
    """Linear then a smooth LIF with explicit state: a differentiable multi-step module."""

    def __init__(self, n=6):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(n, n)

    def forward(self, xc, v):
        return _lif_chunk(ds.seq_to_ann_forward(xc, self.linear), v)


# --- preallocated output under no_grad -------------------------------------------------------


class _NoCat(torch.overrides.TorchFunctionMode):
    """Fails on any ``torch.cat`` inside the block: the preallocated paths write each chunk
    into one result instead (observed through torch's public function-mode hook)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.cat:
            raise AssertionError("the preallocated path concatenated")
        return func(*args, **(kwargs or {}))


def _weights(y):
    """Loss weights that differ at every element, so each chunk gets its own gradient."""
    return torch.linspace(-1, 1, y.numel()).reshape(y.shape)


@pytest.mark.parametrize("split_size", [1, 2, 3, 7, 9])
def test_no_grad_preallocates_and_equals_cat(split_size):
    x = torch.randn(7, 3, 4)
    with torch.no_grad():
        want = torch.cat([torch.tanh(c) * 2 for c in torch.split(x, split_size)])
        with _NoCat():
            got = ds.chunk_multi_step_forward(split_size, x, lambda c: torch.tanh(c) * 2)
    assert torch.equal(got, want) and got.stride() == want.stride()
    assert not got.requires_grad


def test_no_grad_preallocated_with_state_and_tuple_output():
    x = torch.randn(9, 2, 3)
    v0 = torch.zeros(2, 3)
    step = lif_step(with_v=True)

    def module(xc, v):
        return ds.multi_step_forward(xc, step, state=v)

    (want_s, want_v), want_final = ds.multi_step_forward(x, step, state=v0)
    with torch.no_grad(), _NoCat():
        (got_s, got_v), got_final = ds.chunk_multi_step_forward(4, x, module, state=v0)
    assert torch.equal(got_s, want_s) and torch.equal(got_v, want_v)
    assert torch.equal(got_final, want_final)


def test_no_grad_falls_back_when_output_not_time_aligned():
    x = torch.arange(7.0).reshape(7, 1)
    with torch.no_grad():
        got = ds.chunk_multi_step_forward(3, x, lambda c: c.sum(0, keepdim=True))
    assert torch.equal(got, torch.tensor([[3.0], [12.0], [6.0]]))


def test_no_grad_falls_back_when_dtype_changes_midway():
    x = torch.ones(6, 2)
    calls = []

    def module(c):
        calls.append(1)
        return c if len(calls) == 1 else c.double()

    with torch.no_grad():
        got = ds.chunk_multi_step_forward(2, x, module)
    want = torch.cat([x[:2], x[2:4].double(), x[4:].double()])
    assert torch.equal(got, want) and got.dtype == want.dtype


def test_no_grad_mismatched_trailing_shape_raises_like_cat():
    x = torch.ones(4, 2)
    calls = []

    def module(c):
        calls.append(1)
        return c if len(calls) == 1 else torch.ones(c.shape[0], 3)

    with torch.no_grad(), pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        ds.chunk_multi_step_forward(2, x, module)


def test_no_grad_matches_spikingjelly_multi_step_neuron():
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    import copy

    ours = neuron.IFNode(step_mode="m")
    theirs = copy.deepcopy(ours)
    x = torch.randn(10, 3, 5) * 2
    with torch.no_grad():
        got = ds.chunk_multi_step_forward(3, x, ours)
        want = functional.chunk_multi_step_forward(3, x, theirs)
    assert torch.equal(got, want) and got.stride() == want.stride()
    assert torch.equal(ours.v, theirs.v)


# --- checkpoint=True --------------------------------------------------------------------------


@pytest.mark.parametrize("stateful", [True, False])
def test_torch_checkpoint_gradients_equal_plain(stateful):
    net = _Net()
    x = torch.randn(11, 3, 6)
    v0 = torch.full((3, 6), 0.1)

    def run(checkpoint):
        net.zero_grad()
        xg, vg = x.clone().requires_grad_(), v0.clone().requires_grad_()
        if stateful:
            y, v = ds.chunk_multi_step_forward(4, xg, net, state=vg, checkpoint=checkpoint)
            loss = (y * _weights(y)).sum() + (v**2).sum()
        else:
            y = ds.chunk_multi_step_forward(
                4, xg, lambda c: torch.tanh(net.linear(c)), checkpoint=checkpoint
            )
            loss = (y * _weights(y)).sum()
        loss.backward()
        return y.detach(), xg.grad, vg.grad, net.linear.weight.grad.clone()

    plain = run(False)
    with _NoCat():  # the checkpointed path writes into a preallocated result
        ckpt = run(True)
    for a, b in zip(plain, ckpt, strict=True):
        if a is not None or b is not None:
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def _grads(fn, *inputs):
    """Output and gradients of a weighted sum of `fn`'s outputs (tuple outputs item by item)."""
    out = fn(*inputs)
    items = out if isinstance(out, tuple) else (out,)
    loss = sum((y * _weights(y)).sum() for y in items)
    return (*(y.detach() for y in items), *torch.autograd.grad(loss, inputs))


def test_torch_checkpoint_tuple_output_gradients_equal_plain():
    step = lif_step(spike="sigmoid", with_v=True)

    def run(checkpoint, x, v):
        def module(c, s):
            return ds.multi_step_forward(c * w, step, state=s)

        (spikes, vs), final = ds.chunk_multi_step_forward(
            3, x, module, state=v, checkpoint=checkpoint
        )
        return spikes, vs, final

    w = torch.linspace(0.5, 2.0, 4).requires_grad_()  # a leaf the module closes over
    x = torch.randn(8, 2, 4, requires_grad=True)
    v = torch.zeros(2, 4, requires_grad=True)
    want = _grads(lambda x, v, w: run(False, x, v), x, v, w)
    with _NoCat():
        got = _grads(lambda x, v, w: run(True, x, v), x, v, w)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_torch_checkpoint_falls_back_to_cat_when_output_not_contiguous():
    x = torch.randn(7, 3, 4, requires_grad=True)

    def module(c):
        return torch.tanh(c).transpose(1, 2)  # time-aligned but not contiguous

    want = _grads(lambda x: ds.chunk_multi_step_forward(3, x, module), x)
    got = _grads(lambda x: ds.chunk_multi_step_forward(3, x, module, checkpoint=True), x)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_torch_checkpoint_gradient_reaches_a_non_leaf_the_module_closes_over():
    # What the reentrant variant cannot do: torch.autograd.grad through a captured non-leaf.
    base = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(6, 2, 3)

    def run(checkpoint):
        scale = base * 2
        y = ds.chunk_multi_step_forward(4, x, lambda c: torch.sin(c * scale), checkpoint=checkpoint)
        return torch.autograd.grad(y.square().sum(), base)[0]

    torch.testing.assert_close(run(True), run(False), rtol=1e-6, atol=1e-6)


def test_torch_checkpoint_recomputes_each_chunk():
    calls = []

    def module(c, v):
        calls.append(c.shape[0])
        return _lif_chunk(c, v)

    x = torch.randn(7, 2, requires_grad=True)
    y, _ = ds.chunk_multi_step_forward(3, x, module, state=torch.zeros(2), checkpoint=True)
    assert calls == [3, 3, 1]
    y.sum().backward()
    assert sorted(calls) == sorted([3, 3, 1] * 2)


def test_checkpoint_rejects_spikingjelly_memory_modules():
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), neuron.LIFNode(step_mode="m"))
    with pytest.raises(
        ValueError, match=r"`checkpoint=True` .* got LIFNode in `multi_step_module`"
    ):
        ds.chunk_multi_step_forward(2, torch.ones(4, 1, 3), net, checkpoint=True)
    ds.chunk_multi_step_forward(2, torch.ones(4, 1, 3), net)  # fine without checkpointing


class _HiddenMemory(torch.nn.Module):
    """A multi-step leaky integrator that keeps its membrane in an attribute (no SJ base)."""

    def __init__(self):
        super().__init__()
        self.v = 0.0

    def forward(self, xc):
        ys = []
        for xt in xc:
            self.v = 0.5 * self.v + xt
            ys.append(torch.sigmoid(4 * (self.v - 3.0)))
        return torch.stack(ys)


def _hidden_nets():
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    torch.manual_seed(0)
    return {
        "spikingjelly LIF, spiking": torch.nn.Sequential(
            torch.nn.Linear(4, 3), neuron.LIFNode(step_mode="m", v_threshold=0.2)
        ),
        # no spike at all: the outputs of the recomputation equal the forward's, the
        # membrane (and so the surrogate gradient) does not
        "spikingjelly LIF, silent": torch.nn.Sequential(
            torch.nn.Linear(4, 3), neuron.LIFNode(step_mode="m", v_threshold=2.0)
        ),
        "attribute memory": torch.nn.Sequential(torch.nn.Linear(4, 3), _HiddenMemory()),
    }


@pytest.mark.parametrize(
    "name", ["spikingjelly LIF, spiking", "spikingjelly LIF, silent", "attribute memory"]
)
def test_checkpoint_hidden_memory_in_a_function_raises_in_backward(name):
    """Issue: `lambda c: net(c)` hides the module from the check in `_api`; the gradients
    differed from checkpoint=False by up to 1.2. Now the recomputation is compared."""
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    net = _hidden_nets()[name]
    torch.manual_seed(2)
    x = (2 * torch.randn(6, 2, 4)).requires_grad_()

    def grads(checkpoint):
        functional.reset_net(net)
        if isinstance(net[1], _HiddenMemory):
            net[1].v = 0.0
        y = ds.chunk_multi_step_forward(2, x, lambda c: net(c), checkpoint=checkpoint)
        return torch.autograd.grad((y * _weights(y)).sum(), [x, net[0].weight])

    functional.reset_net(net)
    spikes = ds.chunk_multi_step_forward(2, x, lambda c: net(c)).sum()
    assert (spikes == 0) == name.endswith("silent")
    assert all(g.abs().max() > 1e-3 for g in grads(False))
    with pytest.raises(
        RuntimeError,
        match=r"recomputing a chunk in the backward pass gave other "
        r"values .* hidden memory",
    ):
        grads(True)


class _BufferMemory(torch.nn.Module):
    """Memory in a registered buffer, halved in place after each use."""

    def __init__(self):
        super().__init__()
        self.register_buffer("g", torch.ones(()))

    def forward(self, x):
        y = x * self.g
        with torch.no_grad():
            self.g.mul_(0.5)
        return y


def test_checkpoint_memory_in_a_buffer_raises_instead_of_wrong_gradients():
    """The buffer is the same object in the forward pass and the recomputation, so its values
    were never compared: gradients read 0.125 everywhere instead of 1, 1, .5, .5, .25, .25."""
    x = torch.ones(6, 1, requires_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        ds.chunk_multi_step_forward(2, x, _BufferMemory()).sum().backward()
    y = ds.chunk_multi_step_forward(2, x, _BufferMemory(), checkpoint=True)
    assert y.ravel().tolist() == [1, 1, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(RuntimeError, match=r"recomputing a chunk in the backward pass gave other"):
        y.sum().backward()


@pytest.mark.parametrize("layer", ["batchnorm", "dropout"])
def test_checkpoint_accepts_batchnorm_and_dropout_in_training(layer):
    """Running statistics change between forward and recomputation, and dropout draws random
    numbers, but neither changes what autograd saved: no false alarm, equal gradients."""
    torch.manual_seed(0)
    inner = torch.nn.BatchNorm1d(3) if layer == "batchnorm" else torch.nn.Dropout(0.5)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), inner).train()
    x = torch.randn(6, 5, 4, requires_grad=True)

    def grads(checkpoint):
        torch.manual_seed(1)
        y = ds.chunk_multi_step_forward(
            2, x, lambda c: ds.seq_to_ann_forward(c, net), checkpoint=checkpoint
        )
        return torch.autograd.grad((y * _weights(y)).sum(), [x, net[0].weight])

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_checkpoint_must_be_bool(backend, bad):
    with pytest.raises(TypeError, match=r"`checkpoint` must be a bool; got"):
        ds.chunk_multi_step_forward(
            2, backend.asarray(np.ones((4, 2))), lambda c: c, checkpoint=bad
        )


def test_checkpoint_values_equal_on_every_backend(backend):
    x = np.linspace(-2, 2, 42).reshape(7, 2, 3)
    want, want_v = ds.chunk_multi_step_forward(3, x, _lif_chunk, state=np.zeros((2, 3)))
    got, got_v = ds.chunk_multi_step_forward(
        3, backend.asarray(x), _lif_chunk, state=backend.asarray(np.zeros((2, 3))), checkpoint=True
    )
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(got_v), want_v, rtol=1e-12)


@pytest.mark.parametrize("stateful", [True, False])
def test_jax_checkpoint_gradients_equal_plain(stateful):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    w = jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(11, 3, 6)), jnp.float32)
    weights = jnp.linspace(-1, 1, 6)

    def loss(w, x, checkpoint):
        if stateful:
            module = lambda c, v: _lif_chunk(c @ w, v)  # noqa: E731
            y, v = ds.chunk_multi_step_forward(
                4, x, module, state=jnp.full((3, 6), 0.1), checkpoint=checkpoint
            )
            return (y * weights).sum() + (v**2).sum()
        y = ds.chunk_multi_step_forward(4, x, lambda c: jnp.tanh(c @ w), checkpoint=checkpoint)
        return (y * weights).sum()

    plain = jax.grad(loss, argnums=(0, 1))(w, x, False)
    ckpt = jax.grad(loss, argnums=(0, 1))(w, x, True)
    for a, b in zip(plain, ckpt, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(lambda w, x: loss(w, x, True))(w, x))
    assert "checkpoint" in jaxpr or "remat" in jaxpr

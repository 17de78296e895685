"""Torch with ``state=None`` is a drop-in for SpikingJelly 2.0.0's forward functions.

Checked against a plain loop always, and against SpikingJelly itself when it is installed: exact
equality of values, module memory, gradients, strides, hooks, tuple inputs/outputs, error types.
"""

from __future__ import annotations

import copy

import pytest

import dualstep as ds
from dualstep.testing import FUNCTIONS, call

torch = pytest.importorskip("torch")
nn = torch.nn


def _twins(module):
    """Two identical copies: one for dualstep, one for the reference."""
    return module, copy.deepcopy(module)


def _x(*shape, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(grad)


# --- against a plain loop (no SpikingJelly needed) -------------------------------------------


@pytest.mark.parametrize("as_list", [False, True])
def test_multi_step_equals_plain_loop(as_list):
    torch.manual_seed(0)
    lin, relu = nn.Linear(5, 4), nn.ReLU()
    x = _x(6, 3, 5)
    modules = [lin, relu] if as_list else nn.Sequential(lin, relu)
    want = torch.stack([relu(lin(x[t])) for t in range(6)])
    got = ds.multi_step_forward(x, modules)
    assert torch.equal(got, want)


def test_t_last_layout_is_stack_dim_minus_one():
    x = _x(2, 3, 4, 7)
    got = ds.t_last_multi_step_forward(x, torch.sin)
    want = torch.stack([torch.sin(x[..., t]) for t in range(7)], dim=-1)
    assert torch.equal(got, want)
    assert got.stride() == want.stride()


def test_chunk_hook_sees_chunk_sizes():
    seen = []
    module = nn.Identity()
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    x = _x(7, 2)
    y = ds.chunk_multi_step_forward(3, x, module)
    assert seen == [3, 3, 1]
    assert torch.equal(y, x)


def test_multi_step_hook_fires_once_per_step():
    calls = []
    module = nn.Linear(3, 3)
    module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    ds.multi_step_forward(_x(5, 2, 3), module)
    assert calls == [torch.Size([2, 3])] * 5


def test_t_last_seq_to_ann_sequential_called_once_as_container():
    calls = []
    seq = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    seq.register_forward_hook(lambda m, args, out: calls.append(1))
    x = _x(2, 3, 6)
    got = ds.t_last_seq_to_ann_forward(x, seq)
    assert calls == [1]
    want = torch.stack([seq(x[..., t]) for t in range(6)], dim=-1)
    torch.testing.assert_close(got, want)


def test_seq_to_ann_tuple_in_and_out_pool_then_unpool():
    pool = nn.MaxPool2d(2, return_indices=True)
    unpool = nn.MaxUnpool2d(2)
    x = _x(3, 2, 1, 4, 4)
    values, indices = ds.seq_to_ann_forward(x, pool)
    assert values.shape == (3, 2, 1, 2, 2) and indices.shape == (3, 2, 1, 2, 2)
    restored = ds.seq_to_ann_forward((values, indices), unpool)
    want = torch.stack([unpool(*pool(x[t])) for t in range(3)])
    assert torch.equal(restored, want)


def test_seq_to_ann_tuple_leading_dims_must_match():
    with pytest.raises(ValueError, match=r"\[T, batch_size\] leading dimensions"):
        ds.seq_to_ann_forward((_x(3, 2, 4), _x(3, 1, 4)), lambda a, b: a)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_gradients_flow(function):
    x = _x(4, 3, 5, grad=True)
    call(function, torch.tanh, x, as_given=True).sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2)


# --- against SpikingJelly itself ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sj():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, neuron

    return functional, neuron


def _neurons(neuron):
    return [
        neuron.IFNode(step_mode="s"),
        neuron.LIFNode(step_mode="s"),
        neuron.LIFNode(tau=3.0, v_reset=None, step_mode="s"),
    ]


@pytest.mark.parametrize("which", range(3))
@pytest.mark.parametrize("name", ["multi_step_forward", "t_last_multi_step_forward"])
def test_single_step_neurons_bit_identical(sj, which, name):
    functional, neuron = sj
    ours, theirs = _twins(_neurons(neuron)[which])
    x = _x(9, 4, 6, seed=which) * 2
    if name == "t_last_multi_step_forward":
        x = x.movedim(0, -1).contiguous()
    got, want = getattr(ds, name)(x, ours), getattr(functional, name)(x, theirs)
    assert torch.equal(got, want)
    assert got.stride() == want.stride()
    assert torch.equal(ours.v, theirs.v)  # the module's own memory advanced the same way


def test_module_list_with_neuron_bit_identical(sj):
    functional, neuron = sj
    torch.manual_seed(1)
    ours = [nn.Linear(6, 5), neuron.LIFNode(step_mode="s")]
    theirs = copy.deepcopy(ours)
    x = _x(8, 3, 6, seed=2, grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    got, want = ds.multi_step_forward(x, ours), functional.multi_step_forward(x2, theirs)
    assert torch.equal(got, want)
    (got * torch.arange(5.0)).sum().backward()
    (want * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    assert torch.equal(ours[0].weight.grad, theirs[0].weight.grad)


@pytest.mark.parametrize("split_size", range(1, 10))
def test_chunk_multi_step_neuron_bit_identical(sj, split_size):
    functional, neuron = sj
    torch.manual_seed(3)
    ours, theirs = _twins(nn.Sequential(nn.Linear(4, 4), neuron.LIFNode(step_mode="m")))
    whole = copy.deepcopy(ours)
    x = _x(7, 2, 4, seed=4) * 3
    got = ds.chunk_multi_step_forward(split_size, x, ours)
    want = functional.chunk_multi_step_forward(split_size, x, theirs)
    assert torch.equal(got, want)
    # Memory carried across chunks: equal to one unchunked call.
    assert torch.equal(got, whole(x))


def test_seq_to_ann_bit_identical(sj):
    functional, _ = sj
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = _x(4, 2, 2, 5, 5, seed=6)
    got, want = ds.seq_to_ann_forward(x, conv), functional.seq_to_ann_forward(x, conv)
    assert torch.equal(got, want) and got.stride() == want.stride()
    pool, unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
    x = _x(4, 2, 2, 6, 6, seed=9)
    got_v, got_i = ds.seq_to_ann_forward(x, pool)
    want_v, want_i = functional.seq_to_ann_forward(x, pool)
    assert torch.equal(got_v, want_v) and torch.equal(got_i, want_i)
    assert torch.equal(
        ds.seq_to_ann_forward((got_v, got_i), [unpool, nn.ReLU()]),
        functional.seq_to_ann_forward((want_v, want_i), [unpool, nn.ReLU()]),
    )


@pytest.mark.parametrize("modules", ["linear", "list", "sequential"])
def test_t_last_seq_to_ann_bit_identical(sj, modules):
    functional, _ = sj
    torch.manual_seed(7)
    lin = nn.Linear(3, 4)
    module = {"linear": lin, "list": [lin, nn.ReLU()], "sequential": nn.Sequential(lin, nn.ReLU())}
    x = _x(2, 3, 5, seed=8)
    got = ds.t_last_seq_to_ann_forward(x, module[modules])
    want = functional.t_last_seq_to_ann_forward(x, module[modules])
    assert torch.equal(got, want) and got.stride() == want.stride()


def test_error_types_match_spikingjelly(sj):
    functional, _ = sj
    pair = (_x(3, 2, 4), _x(2, 2, 4))
    for fn in (ds.seq_to_ann_forward, functional.seq_to_ann_forward):
        with pytest.raises(ValueError, match="leading dimensions"):
            fn(pair, lambda a, b: a)
    err = RuntimeError("inside the module")

    def broken(x):
        raise err

    for fn in (ds.multi_step_forward, functional.multi_step_forward):
        with pytest.raises(RuntimeError) as info:
            fn(_x(3, 2), broken)
        assert info.value is err


# --- neurons in the wrong step mode, modules that work in place (issue 11) --------------------


@pytest.mark.parametrize("where", ["alone", "in a list", "in a Sequential"])
def test_neuron_in_the_wrong_step_mode_is_rejected(sj, where):
    """SpikingJelly runs these silently with time and batch swapped; dualstep refuses."""
    _, neuron = sj

    def wrap(n):
        return {"alone": n, "in a list": [nn.Identity(), n], "in a Sequential": nn.Sequential(n)}[
            where
        ]

    x = _x(4, 2, 3)
    for function in (ds.multi_step_forward, ds.t_last_multi_step_forward):
        with pytest.raises(
            ValueError,
            match=r"`single_step_module` must hold SpikingJelly memory modules in single-step "
            r"\('s'\) mode here; got LIFNode with step_mode='m'",
        ):
            function(x, wrap(neuron.LIFNode(step_mode="m")))
    with pytest.raises(
        ValueError,
        match=r"`multi_step_module` must hold SpikingJelly memory modules in multi-step \('m'\) "
        r"mode here; got IFNode with step_mode='s'",
    ):
        ds.chunk_multi_step_forward(2, x, wrap(neuron.IFNode(step_mode="s")))
    # the right modes run
    ds.multi_step_forward(x, wrap(neuron.LIFNode(step_mode="s")))
    ds.chunk_multi_step_forward(2, x, wrap(neuron.LIFNode(step_mode="m")))


def _sj_containers():
    from spikingjelly.activation_based import functional, layer, neuron

    return functional, layer, neuron


def test_spikingjelly_containers_are_accepted_as_spikingjelly_accepts_them(sj):
    """A MultiStepContainer of single-step neurons is multi-step (SpikingJelly's standard
    pattern), chunked or not, and so is a Sequential of SeqToANNContainer and
    MultiStepContainer; the same containers are refused where a single-step module is due."""
    functional, layer, neuron = _sj_containers()
    x = _x(6, 2, 3)
    torch.manual_seed(0)
    nets = [
        layer.MultiStepContainer(neuron.LIFNode()),
        nn.Sequential(
            layer.SeqToANNContainer(nn.Linear(3, 4)), layer.MultiStepContainer(neuron.IFNode())
        ),
        layer.StepModeContainer(True, "m", neuron.LIFNode()),
    ]
    for net in nets:
        ours, theirs = _twins(net)
        got = ds.chunk_multi_step_forward(2, x, ours)
        functional.reset_net(theirs)
        want = functional.chunk_multi_step_forward(2, x, theirs)
        assert torch.equal(got, want)
        with pytest.raises(
            ValueError,
            match=r"`single_step_module` must hold SpikingJelly memory modules in single-step "
            rf"\('s'\) mode here; got {type(net if len(net) == 1 else net[1]).__qualname__} "
            "with step_mode='m'",
        ):
            ds.multi_step_forward(x, net)
    with pytest.raises(ValueError, match="got TLastMultiStepContainer with step_mode='m'"):
        ds.t_last_multi_step_forward(
            x.movedim(0, -1), layer.TLastMultiStepContainer(neuron.IFNode())
        )
    # A single-step StepModeContainer runs step by step; the same container in 'm' does not.
    step = layer.StepModeContainer(True, "s", neuron.LIFNode())
    ref = copy.deepcopy(step)
    got = ds.multi_step_forward(x, step)
    assert torch.equal(got, torch.stack([ref(xt_) for xt_ in x]))


def _in_place_modules():
    return {
        "mul_": lambda t: t.mul_(2.0),
        "ReLU(inplace=True)": nn.ReLU(inplace=True),
    }


@pytest.mark.parametrize("module", list(_in_place_modules()))
@pytest.mark.parametrize("name", ["multi_step_forward", "t_last_multi_step_forward"])
def test_first_module_in_place_on_a_non_leaf_input_matches_spikingjelly(sj, module, name):
    """Issue: "Output 0 of Unbind is a view and is being modified inplace"; SpikingJelly
    selects each step and runs. Forward and backward now do what SpikingJelly does: the same
    outputs, the same change to the input, and the same gradients, or the same autograd error
    where SpikingJelly's backward fails (an in-place ReLU saves the view it modified, which
    the next step's modification invalidates)."""
    functional, _ = sj
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    leaf = torch.randn(5, 3, 4, requires_grad=True)

    def run(fn):
        leaf.grad, lin.weight.grad = None, None
        x = leaf * 1.5  # a non-leaf input
        if name == "t_last_multi_step_forward":
            x = x.movedim(0, -1)
        y = fn(x, [_in_place_modules()[module], torch.tanh, lin])
        try:
            (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        except RuntimeError as e:
            return x.detach(), y.detach(), str(e)
        return x.detach(), y.detach(), (leaf.grad.clone(), lin.weight.grad.clone())

    ours, theirs = run(getattr(ds, name)), run(getattr(functional, name))
    assert torch.equal(ours[1], theirs[1])
    assert torch.equal(ours[0], theirs[0])  # the input was changed in place, as in SJ
    if isinstance(theirs[2], str):
        assert ours[2] == theirs[2] and module == "ReLU(inplace=True)"
    else:
        assert all(torch.equal(a, b) for a, b in zip(ours[2], theirs[2], strict=True))


def test_in_place_then_a_module_that_saves_its_input_fails_as_in_spikingjelly(sj):
    """All steps are views of one tensor, sharing a version counter: a Linear that saved
    step t's view sees it change when step t+1 is modified. SpikingJelly refuses too."""
    functional, _ = sj
    for fn in (ds.multi_step_forward, functional.multi_step_forward):
        leaf = torch.randn(5, 3, 4, requires_grad=True)
        y = fn(leaf * 1.5, [lambda t: t.mul_(2.0), nn.Linear(4, 4)])
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


@pytest.mark.parametrize("checkpoint", [False, True])
def test_chunk_module_in_place_on_a_non_leaf_input(checkpoint):
    """`torch.split`'s views (SpikingJelly's) refuse this too; dualstep's chunks are slices."""
    leaf = torch.randn(7, 2, requires_grad=True)
    y = ds.chunk_multi_step_forward(3, leaf * 1.0, lambda c: c.mul_(2.0), checkpoint=checkpoint)
    y.sum().backward()
    torch.testing.assert_close(y, leaf.detach() * 2)
    torch.testing.assert_close(leaf.grad, torch.full_like(leaf, 2.0))

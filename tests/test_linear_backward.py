"""The torch loops' backward is linear in T: the gradient of the sequence is assembled once.

A select view per step (SpikingJelly's way) gives each step a backward that adds a zero tensor
the size of the whole sequence into the sequence's gradient, so T steps cost T full-size
tensors. The tests count the autograd edges into the sequence's own gradient node: T of them
before, one now (one unbind or split, the first step reading a copy of its part). The speed is
measured by `python -m benchmarks.training`.
"""

from __future__ import annotations

import copy

import pytest

import dualstep as ds

torch = pytest.importorskip("torch")

T = 12


def _edges_into(root, target) -> int:
    """How many autograd edges of the graph behind `root` lead into the node `target`."""
    seen, todo, count = set(), [root], 0
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            count += nxt is target
            todo.append(nxt)
    return count


def _lif(x, v):
    v = v + (x - v) * 0.5
    s = torch.sigmoid(4 * (v - 1.0))
    return s, v * (1 - s)


def _chunk_lif(xc, v):
    return ds.multi_step_forward(xc, _lif, state=v)


CALLS = {
    "multi_step_forward": lambda x, v: ds.multi_step_forward(x, _lif, state=v)[0],
    # given time last: [B, N, T]
    "t_last_multi_step_forward": lambda x, v: ds.t_last_multi_step_forward(x, _lif, state=v)[
        0
    ].movedim(-1, 0),
    "chunk 1": lambda x, v: ds.chunk_multi_step_forward(1, x, _chunk_lif, state=v)[0],
    "chunk 5": lambda x, v: ds.chunk_multi_step_forward(5, x, _chunk_lif, state=v)[0],
    "chunk 5, checkpointed": lambda x, v: ds.chunk_multi_step_forward(
        5, x, _chunk_lif, state=v, checkpoint=True
    )[0],
}


def _hand(x, v):
    ys = []
    for xt in x.unbind(0):
        y, v = _lif(xt, v)
        ys.append(y)
    return torch.stack(ys)


@pytest.mark.parametrize("name", list(CALLS))
def test_the_sequence_gradient_is_assembled_once_and_equals_a_hand_loop(name):
    leaf = torch.randn(T, 3, 4, requires_grad=True)
    x = leaf * 1.5  # a non-leaf input, as a previous layer's output
    if name.startswith("t_last"):
        x = x.movedim(0, -1)
    y = CALLS[name](x, torch.zeros(3, 4))
    assert _edges_into(y.grad_fn, x.grad_fn) == 1  # it was T (one per step or chunk)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    ours = leaf.grad.clone()
    leaf.grad = None
    want = _hand(leaf * 1.5, torch.zeros(3, 4))
    assert torch.equal(y, want)
    (want * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    assert torch.equal(ours, leaf.grad)


@pytest.mark.parametrize("split_size", [None, 1, 3])
def test_spikingjelly_module_path_stays_bit_identical_with_a_linear_backward(split_size):
    """A SpikingJelly neuron in step mode 's' with `state=None`: outputs, memory and gradients
    bit-identical to SpikingJelly's own function, which keeps the quadratic backward."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, neuron

    torch.manual_seed(0)
    ours = neuron.LIFNode(step_mode="s" if split_size is None else "m")
    theirs = copy.deepcopy(ours)
    leaf = torch.randn(T, 3, 4, requires_grad=True)
    twin = leaf.detach().clone().requires_grad_(True)
    if split_size is None:
        got = ds.multi_step_forward(leaf * 2.0, ours)
        want = functional.multi_step_forward(twin * 2.0, theirs)
    else:
        got = ds.chunk_multi_step_forward(split_size, leaf * 2.0, ours)
        want = functional.chunk_multi_step_forward(split_size, twin * 2.0, theirs)
    assert torch.equal(got, want) and torch.equal(ours.v, theirs.v)
    weights = torch.linspace(-1, 1, got.numel()).reshape(got.shape)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert torch.equal(leaf.grad, twin.grad)


def test_a_first_step_that_works_in_place_keeps_spikingjellys_views():
    """The first step decides: one that changes its input in place has the change written into
    the sequence, and every later step gets a select view, so the sequence is changed in place
    as SpikingJelly changes it, and its gradient is SpikingJelly's."""
    leaf = torch.randn(T, 3, requires_grad=True)
    x = leaf * 1.0
    y = ds.multi_step_forward(x, lambda t: t.mul_(2.0))
    assert torch.equal(x, leaf.detach() * 2)  # every step's view of the input was doubled
    y.sum().backward()
    assert torch.equal(leaf.grad, torch.full_like(leaf, 2.0))


def test_a_later_step_that_works_in_place_raises_torchs_error():
    """The limit of deciding at the first step (docs, "Errors": "The first step decides"):
    a step that changes its input in place only after the first step gets a view of one
    unbind, and torch refuses the change, where SpikingJelly's select views allow it."""
    calls = []

    def step(t):
        calls.append(1)
        return t.mul_(2.0) if len(calls) > 1 else t * 2.0

    x = torch.randn(T, 3, requires_grad=True) * 1.0
    with pytest.raises(RuntimeError, match="output of a function that returns multiple views"):
        ds.multi_step_forward(x, step)


@pytest.mark.parametrize("split_size", [None, 2])
def test_a_first_step_that_changes_a_leafs_view_in_place_fails_as_in_spikingjelly(split_size):
    """A sequence that is a leaf requiring grad: SpikingJelly's view may not be changed in
    place, and the write of the changed copy raises torch's same error."""
    x = torch.randn(T, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
        if split_size is None:
            ds.multi_step_forward(x, lambda t: t.mul_(2.0))
        else:
            ds.chunk_multi_step_forward(split_size, x, lambda c: c.mul_(2.0))


def test_a_first_step_that_changes_the_sequence_itself_keeps_spikingjellys_views():
    """A step that writes into the captured sequence (not its input): the later steps get
    select views, which stay valid after the write, where the views of one unbind would not."""
    leaf = torch.randn(T, 3, requires_grad=True)
    x = leaf * 1.0
    calls = []

    def step(t):
        if not calls:
            x[-1].mul_(0.0)
        calls.append(1)
        return t * 2.0

    y = ds.multi_step_forward(x, step)
    assert torch.equal(y[-1], torch.zeros(3)) and torch.equal(y[:-1], leaf.detach()[:-1] * 2)
    y.sum().backward()
    want = torch.full_like(leaf, 2.0)
    want[-1] = 0.0
    assert torch.equal(leaf.grad, want)

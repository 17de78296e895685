"""Under torch.compile(fullgraph=True) a stateful loop is one `scan`, whatever T: the graph does
not grow with T, a new T does not recompile with dynamic shapes, values and gradients equal the
eager loop. Elsewhere (state=None, fullgraph=False, `unroll` >= T) the loop is unrolled as
before. The compile-time and speed figures are `python -m benchmarks.compile_loop`'s."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import dualstep as ds  # noqa: E402

SCAN = torch.ops.higher_order.scan


class Graphs:
    """A torch.compile backend that keeps every graph dynamo hands it and runs it as is."""

    def __init__(self) -> None:
        self.graphs: list = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs.append(gm)
        return gm.forward

    def calls(self, target: object) -> int:
        return sum(n.target is target for g in self.graphs for n in g.graph.nodes)

    def size(self) -> int:
        return sum(len(g.graph.nodes) for g in self.graphs)


def _lif(x, v):
    v = v + (x - v) * 0.5
    s = torch.sigmoid(4.0 * (v - 1.0))
    return s, v * (1.0 - s)


def _compiled(fn, **kwargs):
    torch._dynamo.reset()
    graphs = Graphs()
    return torch.compile(fn, fullgraph=True, backend=graphs, **kwargs), graphs


def test_a_compiled_stateful_loop_is_one_scan_of_the_same_size_whatever_T():
    def fn(x, v):
        return ds.multi_step_forward(x, _lif, state=v)

    sizes = []
    for steps in (3, 40):
        x, v = torch.randn(steps, 2, 3), torch.zeros(2, 3)
        compiled, graphs = _compiled(fn, dynamic=False)
        torch.utils._pytree.tree_map(torch.testing.assert_close, compiled(x, v), fn(x, v))
        assert graphs.calls(SCAN) == 1
        assert graphs.calls(torch.ops.aten.select.int) == 0
        sizes.append(graphs.size())
    assert sizes[0] == sizes[1]


def test_the_unrolled_loop_grows_with_T_where_unroll_reaches_T():
    """`unroll` >= T traces the steps one by one, as lax.scan unrolls fully (a step with side
    effects, which `scan` refuses, compiles this way)."""
    log = []

    def counted(x, v):
        log.append(1)
        return _lif(x, v)

    for steps in (3, 6):
        x, v = torch.randn(steps, 2, 3), torch.zeros(2, 3)

        def fn(x, v, steps=steps):
            return ds.multi_step_forward(x, counted, state=v, unroll=steps)

        compiled, graphs = _compiled(fn, dynamic=False)
        log.clear()
        got = compiled(x, v)
        assert graphs.calls(SCAN) == 0 and len(log) == steps  # traced once per step
        assert graphs.calls(torch.sigmoid) == steps
        torch.utils._pytree.tree_map(torch.testing.assert_close, got, fn(x, v))


def test_every_stateful_layout_lowers_and_equals_the_loop():
    """Dict states with a tensor given twice, tuple outputs, module lists with stateless
    (None) entries, time last."""
    linear = torch.nn.Linear(3, 3)

    def dict_step(x, s):
        v = s["v"] + x
        a = s["a"] * 0.9 + v
        return (v, a.tanh()), {"v": v * 0.5, "a": a}

    def integrate(x, v):
        return torch.tanh(x + v), v + x

    x, v = torch.randn(5, 2, 3), torch.zeros(2, 3)
    calls = [
        lambda x, v: ds.multi_step_forward(x, dict_step, state={"v": v, "a": v}),
        lambda x, v: ds.multi_step_forward(
            x, [linear, integrate, torch.relu], state=(None, v, None)
        ),
        lambda x, v: ds.t_last_multi_step_forward(x.movedim(0, -1), integrate, state=v),
    ]
    for fn in calls:
        compiled, graphs = _compiled(fn, dynamic=False)
        got, want = compiled(x, v), fn(x, v)
        assert graphs.calls(SCAN) == 1
        assert torch.utils._pytree.tree_structure(got) == torch.utils._pytree.tree_structure(want)
        torch.utils._pytree.tree_map(torch.testing.assert_close, got, want)
        if isinstance(want, tuple) and isinstance(want[0], torch.Tensor):
            assert got[0].stride() == want[0].stride()  # time last laid out as torch.stack's


def test_chunks_are_a_loop_over_chunks_each_one_scan():
    """A chunk module that is a stateful multi_step_forward: one scan per chunk (torch 2.13
    cannot differentiate a scan inside a scan), gradients equal to the eager loop."""

    def chunk(xc, v):
        return ds.multi_step_forward(xc, _lif, state=v)

    def fn(x, v):
        y, v = ds.chunk_multi_step_forward(3, x, chunk, state=v)
        return y.sum() + v.square().sum()

    x, v = torch.randn(7, 2, 3, requires_grad=True), torch.zeros(2, 3)
    compiled, graphs = _compiled(fn, dynamic=False)
    loss = compiled(x, v)
    assert graphs.calls(SCAN) == 3  # chunks of 3, 3 and 1 steps
    torch.testing.assert_close(loss, fn(x, v))
    got = torch.autograd.grad(loss, x)[0]
    torch.testing.assert_close(got, torch.autograd.grad(fn(x, v), x)[0])


def test_scan_under_inductor_gives_the_loops_values_and_gradients():
    """Inductor's own lowering of `scan`, forward and backward, with a Linear inside the step
    (its weight a lifted input of the scan) and the input, the weight and the initial state
    all requiring grad."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 4)

    def step(x, v):
        return _lif(linear(x), v)

    def fn(x, v):
        y, v = ds.multi_step_forward(x, step, state=v)
        return y.sum() + v.square().sum()

    x = torch.randn(9, 3, 4, requires_grad=True)
    v = torch.rand(3, 4, requires_grad=True)
    inputs = (x, v, linear.weight, linear.bias)
    want = torch.autograd.grad(fn(x, v), inputs)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    loss = compiled(x, v)
    torch.testing.assert_close(loss, fn(x, v))
    for got, ref in zip(torch.autograd.grad(loss, inputs), want, strict=True):
        torch.testing.assert_close(got, ref)


def test_a_new_T_compiles_nothing_with_dynamic_shapes():
    def fn(x, v):
        return ds.multi_step_forward(x, _lif, state=v)

    compiled, graphs = _compiled(fn, dynamic=True)
    v = torch.zeros(2, 3)
    for steps in (4, 9, 17):
        x = torch.randn(steps, 2, 3)
        torch.utils._pytree.tree_map(torch.testing.assert_close, compiled(x, v), fn(x, v))
    assert len(graphs.graphs) == 1 and graphs.calls(SCAN) == 1


def test_state_none_and_graphs_with_breaks_keep_the_unrolled_loop():
    """state=None may be a SpikingJelly neuron's hidden memory, which `scan` cannot carry;
    without fullgraph torch 2.13's Inductor cannot lower a `scan` (it reads the loop index as
    a scalar, allowed only in full graphs), so the loop stays unrolled and compiles."""
    x, v = torch.randn(4, 2, 3), torch.zeros(2, 3)

    def stateless(x, v):
        return ds.multi_step_forward(x, torch.tanh)

    compiled, graphs = _compiled(stateless, dynamic=False)
    torch.testing.assert_close(compiled(x, v), torch.tanh(x))
    assert graphs.calls(SCAN) == 0

    def stateful(x, v):
        return ds.multi_step_forward(x, _lif, state=v)

    torch._dynamo.reset()
    got = torch.compile(stateful, dynamic=False)(x, v)  # Inductor, not a full graph
    torch.utils._pytree.tree_map(torch.testing.assert_close, got, stateful(x, v))


def test_a_step_that_breaks_the_state_rule_fails_as_the_unrolled_loop_does():
    """The first step is traced outside the scan for its checks, so the error is dualstep's
    TypeError inside dynamo's, as with the unrolled loop, not torch's error about a body."""

    def bad(x, v):
        return x, v[0]

    x, v = torch.randn(4, 2, 3), torch.zeros(2, 3)
    messages = []
    for unroll in (None, 4):

        def fn(x, v, unroll=unroll):
            return ds.multi_step_forward(x, bad, state=v, unroll=unroll)

        compiled, _ = _compiled(fn)
        with pytest.raises(Exception) as caught:
            compiled(x, v)
        messages.append((type(caught.value), str(caught.value)))
    assert messages[0][0] is messages[1][0]
    for _, text in messages:
        assert "a module called with a state must return it with the structure" in text

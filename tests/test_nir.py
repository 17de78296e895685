"""`dualstep.nir`: NIR graphs run on torch, JAX and NumPy, cross-checked with the frameworks'
own exporters and importers step by step (`assert_implementations_close`)."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

import dualstep as ds
from dualstep.testing import BACKENDS, assert_backends_close, assert_implementations_close

nir = pytest.importorskip("nir")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy
from benchmarks import nir_cycles as cycles  # noqa: E402
from dualstep.nir import NIRFileError, UnsupportedNode, load  # noqa: E402

DT = 1e-4


def _states(model, x):
    """The model's initial state on each backend, for `x` (NumPy)."""
    return {
        "numpy": model.initial_state(x),
        "torch": model.initial_state(torch.from_numpy(x)),
        "jax": model.initial_state(jnp.asarray(x)),
    }


def _sj():
    pytest.importorskip("spikingjelly")
    pytest.importorskip("nirtorch")
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir
    from spikingjelly.activation_based.nir_exchange.to_nir import export_to_nir

    return layer, neuron, functional, export_to_nir, import_from_nir


def _sj_dense():
    layer, neuron, _, export, _ = _sj()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Linear(6, 5), neuron.LIFNode(tau=2.0), layer.Linear(5, 4), neuron.IFNode()
    )
    with torch.no_grad():  # excitatory weights: the neurons fire
        net[0].weight.abs_()
        net[2].weight.abs_()
    return net, export(net, torch.rand(1, 6), dt=DT)


def _x(shape, scale=2.0, seed=0):
    return (np.random.default_rng(seed).random(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_spikingjelly_export_runs_step_for_step_like_spikingjelly(backend):
    net, graph = _sj_dense()
    model = load(graph, dt=DT, convention="spikingjelly")
    x = _x((16, 3, 6))
    report = assert_implementations_close(
        net, model.step, x, candidate_state=_states(model, x)[backend]
    )
    assert [(r.backend, r.leaf, r.max_abs_error) for r in report.rows] == [
        (f"{backend} vs torch", "y", 0.0)
    ]
    y, _ = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    assert 0 < y.sum() < y.size  # it spikes, and not everywhere


@pytest.mark.parametrize("backend", BACKENDS)
def test_spikingjelly_conv_snn_export(backend):
    layer, neuron, _, export, _ = _sj()
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 2, 3, padding=1),
        neuron.LIFNode(tau=2.0),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(8, 3),
        neuron.IFNode(),
    )
    with torch.no_grad():
        net[0].weight.abs_()
        net[4].weight.abs_()
    graph = export(net, torch.rand(1, 1, 4, 4), dt=DT)
    assert {type(n).__name__ for n in graph.nodes.values()} >= {"Conv2d", "AvgPool2d", "Flatten"}
    model = load(graph, dt=DT, convention="spikingjelly")
    x = _x((10, 2, 1, 4, 4), scale=3.0, seed=1)
    report = assert_implementations_close(
        net, model.step, x, candidate_state=_states(model, x)[backend]
    )
    assert report.rows[0].max_abs_error == 0.0


def test_spikingjelly_fires_at_the_threshold_where_nir_does_not():
    """SpikingJelly's neurons fire at v >= v_threshold, NIR documents v > v_threshold: with a
    membrane that reaches the threshold exactly, the NIR reading of SpikingJelly's own export
    diverges at that step; `convention="spikingjelly"` reads it as SpikingJelly runs it."""
    layer, neuron, _, export, _ = _sj()
    net = torch.nn.Sequential(layer.Linear(1, 1, bias=False), neuron.IFNode())
    with torch.no_grad():
        net[0].weight.fill_(0.5)
    graph = export(net, torch.rand(1, 1), dt=DT)
    x = np.ones((4, 1, 1), np.float32)  # v = 0.5, 1.0 (SpikingJelly fires), ...
    model = load(graph, dt=DT, convention="spikingjelly")
    assert_implementations_close(net, model.step, x, candidate_state=model.initial_state(x))
    strict = load(graph, dt=DT)
    report = assert_implementations_close(
        net, strict.step, x, candidate_state=strict.initial_state(x), check=False
    )
    (row,) = report.rows
    assert (row.first_bad_step, row.leaf, row.max_abs_error) == (1, "y", 1.0)


def test_spikingjelly_import_of_its_export_agrees():
    """The other way: SpikingJelly's `import_from_nir` of the graph runs like dualstep."""
    *_, import_from_nir = _sj()
    _, graph = _sj_dense()
    model = load(graph, dt=DT, convention="spikingjelly")
    imported = _Stepper(import_from_nir(graph, dt=DT))
    x = _x((16, 3, 6))
    assert_implementations_close(
        imported, model.step, x, reference_backend="torch", candidate_state=model.initial_state(x)
    )


class _Stepper:
    """A NIR importer's ``forward(x, state) -> (y, state)`` module as a step with hidden state."""

    def __init__(self, module):
        self.module, self.state = module, None

    def __call__(self, x):
        y, self.state = self.module(x, self.state)
        return y[0] if isinstance(y, tuple) else y


def _snntorch():
    snn = pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    import snntorch.utils
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(0)
    # Per-neuron beta and threshold: with scalars the exporter's graph fails nir 1.0.8's type
    # check (docs, "NIR graphs").
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 3),
        snn.Leaky(
            beta=torch.full((3,), 0.9), threshold=torch.ones(3), init_hidden=True, output=True
        ),
    )
    with torch.no_grad():
        net[0].weight.abs_()
    return net, export_to_nir(net, torch.rand(4)), snntorch.utils.reset, import_from_nir


def test_snntorch_export_changes_the_reset_and_the_report_says_where():
    """snnTorch's Leaky subtracts the threshold one step late; its exporter writes a reset to
    zero. Read as NIR defines it, the graph diverges from snnTorch's own loop at a named step;
    `convention="snntorch"` reproduces the loop."""
    net, graph, reset, _ = _snntorch()

    def reference(x):
        return net(x)[0]  # (spikes, membrane) -> spikes

    x = _x((20, 2, 4), scale=1.5)
    nir_model = load(graph, dt=DT)
    reset(net)
    report = assert_implementations_close(
        reference,
        nir_model.step,
        x,
        reference_backend="torch",
        candidate_state=nir_model.initial_state(jnp.asarray(x)),
        check=False,
    )
    (row,) = report.rows
    assert (row.ok, row.first_bad_step, row.leaf) == (False, 5, "y")  # as the docs say
    snn_model = load(graph, dt=DT, convention="snntorch")
    reset(net)
    assert_implementations_close(
        reference,
        snn_model.step,
        x,
        reference_backend="torch",
        candidate_state=snn_model.initial_state(jnp.asarray(x)),
    )


def test_snntorch_import_of_its_export_runs_nir_semantics():
    """The other way: snnTorch's `import_from_nir` of that graph resets to zero, as NIR says
    (so the round trip changes snnTorch's own dynamics); dualstep's NIR reading agrees."""
    _, graph, reset, import_from_nir = _snntorch()
    imported = import_from_nir(graph)
    reset(imported)
    model = load(graph, dt=DT)
    x = _x((20, 2, 4), scale=1.5)
    assert_implementations_close(
        _Stepper(imported),
        model.step,
        x,
        reference_backend="torch",
        candidate_state=model.initial_state(x),
    )


def _graph(*nodes, edges=None, in_shape=(3,)):
    named = {"input": nir.Input(input_type=np.array(in_shape))}
    named.update({f"n{i}": node for i, node in enumerate(nodes)})
    out_shape = next(iter(nodes[-1].output_type.values()))
    named["output"] = nir.Output(output_type=np.array(out_shape))
    if edges is None:
        names = list(named)
        edges = list(itertools.pairwise(names))
    return nir.NIRGraph(nodes=named, edges=edges)


def _neurons(n=3):
    ones, zeros = np.ones(n), np.zeros(n)
    return {
        "lif": nir.LIF(
            tau=ones * 2e-3, r=ones * 2, v_leak=zeros + 0.1, v_threshold=ones, v_reset=zeros
        ),
        "if": nir.IF(r=ones * 1e3, v_threshold=ones, v_reset=zeros - 0.2),
        "li": nir.LI(tau=ones * 3e-3, r=ones, v_leak=zeros),
        "i": nir.I(r=ones * 500.0),
        "cubalif": nir.CubaLIF(
            tau_syn=ones * 2e-3,
            tau_mem=ones * 4e-3,
            r=ones * 2,
            v_leak=zeros,
            v_threshold=ones * 0.5,
            v_reset=zeros,
            w_in=ones * 1.5,
        ),
        "cubali": nir.CubaLI(tau_syn=ones * 2e-3, tau_mem=ones * 4e-3, r=ones, v_leak=zeros),
        "threshold": nir.Threshold(threshold=ones * 0.7),
        "scale": nir.Scale(scale=np.array([0.5, -1.0, 2.0])),
    }


@pytest.mark.parametrize("kind", list(_neurons()))
def test_every_node_agrees_across_backends_with_the_float64_oracle(kind):
    w = np.array([[0.6, -0.2, 0.4], [0.1, 0.9, -0.3], [0.2, 0.2, 0.7]])
    graph = _graph(nir.Affine(weight=w, bias=np.array([0.1, 0.0, -0.1])), _neurons()[kind])
    model = load(graph, dt=1e-3)
    x = _x((12, 2, 3), scale=1.2, seed=3)
    report = assert_backends_close(model.step, x, state=model.initial_state(x))
    assert report.ok


def test_neuron_equations_as_nir_documents_them():
    """LIF by hand: v += dt / tau * (v_leak - v + r * I), fire at v > threshold, reset."""
    lif = _neurons(1)["lif"]
    model = load(_graph(nir.Linear(weight=np.eye(1)), lif, in_shape=(1,)), dt=1e-3)
    x = np.array([0.7, 0.7, 0.9, 0.0, 2.0]).reshape(5, 1, 1)
    y, final = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    v, spikes = 0.0, []
    for i in x.ravel():
        v = v + 1e-3 / 2e-3 * (0.1 - v + 2 * i)
        spikes.append(float(v > 1.0))
        v = 0.0 if v > 1.0 else v
    np.testing.assert_allclose(y.ravel(), spikes)
    np.testing.assert_allclose(final["n1"]["v"].ravel(), [v])


def test_conv1d_sum_pool_and_flatten_across_backends():
    rng = np.random.default_rng(5)
    conv = nir.Conv1d(
        input_shape=8,
        weight=rng.normal(size=(4, 2, 3)),
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        bias=rng.normal(size=4),
    )
    conv2 = nir.Conv2d(
        input_shape=(6, 6),
        weight=rng.normal(size=(2, 1, 3, 3)),
        stride=2,
        padding="valid",
        dilation=1,
        groups=1,
        bias=np.zeros(2),
    )
    pool = nir.SumPool2d(
        kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([0, 0])
    )
    flat = nir.Flatten(input_type={"input": np.array([2, 1, 1])}, start_dim=0, end_dim=-1)
    report = assert_backends_close(
        load(_graph(conv, in_shape=(2, 8)), dt=1.0).step, _x((3, 2, 2, 8)), state={}
    )
    assert report.ok
    model = load(_graph(conv2, pool, flat, in_shape=(1, 6, 6)), dt=1.0)
    assert assert_backends_close(model.step, _x((3, 2, 1, 6, 6)), state={}).ok


def test_recurrent_edges_feed_the_previous_step():
    """input -> affine -> li -> output, and li -> recurrent linear -> li: the recurrent
    term is the previous step's output, as a hand-written loop computes it."""
    ones = np.ones(2)
    nodes = {
        "input": nir.Input(input_type=np.array([2])),
        "aff": nir.Affine(weight=np.eye(2), bias=np.zeros(2)),
        "li": nir.LI(tau=ones * 2.0, r=ones, v_leak=0 * ones),
        "rec": nir.Linear(weight=np.array([[0.0, 0.5], [-0.5, 0.0]])),
        "output": nir.Output(output_type=np.array([2])),
    }
    edges = [("input", "aff"), ("aff", "li"), ("li", "rec"), ("rec", "li"), ("li", "output")]
    model = load(nir.NIRGraph(nodes=nodes, edges=edges), dt=1.0)
    x = _x((6, 1, 2), seed=7).astype(np.float64)
    y, _ = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    v, rec, want = np.zeros(2), np.zeros(2), []
    for xt in x[:, 0]:
        v = v + 0.5 * (-v + xt + rec)
        rec = nodes["rec"].weight @ v
        want.append(v)
    np.testing.assert_allclose(y[:, 0], np.array(want))
    assert assert_backends_close(model.step, x, state=model.initial_state(x)).ok


def test_which_edge_of_a_cycle_is_delayed_is_decided_by_the_graph_not_its_lists(tmp_path):
    """The issue's graph: Input feeds both a (LI) and b (Scale 0.5), a <-> b. The delayed edge
    used to be the one the edge list met second: [0.5, 1.125, ...] in one order, [0.75, 1.3125,
    ...] in another, and a file keeps the order. Now every edge order and node order, in memory
    and read from a file, gives one result: a and b are both one edge from the input, so a runs
    first by name and b -> a carries the previous step's value."""
    edges = [("input", "a"), ("input", "b"), ("a", "b"), ("b", "a"), ("a", "output")]
    x = np.linspace(0.5, 1.5, 5).reshape(5, 1, 1)
    v, b, want = 0.0, 0.0, []
    for xt in x[:, 0, 0]:
        v += (xt + b - v) / 2  # a: LI, tau 2, fed the input and b's previous output
        b = 0.5 * (xt + v)
        want.append(v)
    nodes = {"a": cycles.li(), "b": nir.Scale(scale=np.array([0.5]))}
    results = []
    for i, perm in enumerate(itertools.permutations(edges)):
        for node_order in (None, ["b", "output", "input", "a"]):
            results.append(cycles.dualstep_run(cycles.graph(nodes, perm, node_order), x))
        if i % 40 == 0:  # through a file too, which keeps the edge list's order
            nir.write(tmp_path / "g.nir", cycles.graph(nodes, perm))
            results.append(cycles.dualstep_run(nir.read(tmp_path / "g.nir"), x))
    np.testing.assert_allclose(results[0][:, 0, 0], want, rtol=1e-15)
    assert all(np.array_equal(r, results[0]) for r in results)
    # Named the other way round, the Scale runs first and reads the LI's previous output.
    swapped = {"b": cycles.li(), "a": nir.Scale(scale=np.array([0.5]))}
    edges = [("input", "a"), ("input", "b"), ("a", "b"), ("b", "a"), ("b", "output")]
    v, want = 0.0, []
    for xt in x[:, 0, 0]:
        v += (xt + 0.5 * (xt + v) - v) / 2
        want.append(v)
    np.testing.assert_allclose(cycles.dualstep_run(cycles.graph(swapped, edges), x)[:, 0, 0], want)


def test_a_cycle_starts_at_its_node_nearest_the_input_whatever_the_names():
    """q (one edge from the input) runs before p (two edges, through m), though p sorts first:
    p -> q is the edge that carries the previous step's value."""
    nodes = {
        "m": nir.Scale(scale=np.array([1.0])),
        "p": cycles.li(),
        "q": nir.Scale(np.array([0.5])),
    }
    edges = [("input", "m"), ("input", "q"), ("m", "p"), ("q", "p"), ("p", "q"), ("p", "output")]
    x = np.linspace(0.5, 1.5, 5).reshape(5, 1, 1)
    v, want = 0.0, []
    for xt in x[:, 0, 0]:
        q = 0.5 * (xt + v)  # v: p's previous output
        v += (xt + q - v) / 2
        want.append(v)
    np.testing.assert_allclose(cycles.dualstep_run(cycles.graph(nodes, edges), x)[:, 0, 0], want)


def test_cycles_run_as_nirtorch_runs_them_wherever_its_result_does_not_depend_on_node_order():
    """nirtorch (the importer of snnTorch, Norse and Sinabs) breaks a cycle where its walk over
    the node dict first finds a node whose other inputs are ready, so its result can change with
    the order of the nodes. On every random graph where it does not (every order of the nodes
    tried), dualstep gives nirtorch's result; a snnTorch-style recurrent layer is one such
    graph. `python -m benchmarks.nir_cycles` runs the same check on more graphs."""
    pytest.importorskip("nirtorch")
    rng = np.random.default_rng(3)
    recurrent = (
        {"lif": cycles.li(), "w": nir.Scale(np.array([-0.5]))},
        [("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")],
    )
    n = int(os.environ.get("DUALSTEP_MAX_EXAMPLES", "12"))
    compared = []
    for nodes, edges in [recurrent] + [cycles.random_cyclic_graph(rng) for _ in range(n)]:
        theirs = cycles.nirtorch_results(nodes, edges)
        if len(theirs) == 1:
            ours = cycles.dualstep_run(cycles.graph(nodes, edges)).ravel()
            np.testing.assert_allclose(ours, next(iter(theirs)), rtol=1e-12, atol=0)
            compared.append(bool(load(cycles.graph(nodes, edges), dt=1.0).recurrent))
    # Most of the seed's graphs do not depend on the order, and a third of all have cycles.
    assert len(compared) > n // 2 and sum(compared) >= n // 3, compared


def test_jax_jit_grad_and_vmap_of_a_nir_step():
    _, graph = _sj_dense()
    model = load(graph, dt=DT)
    x = jnp.asarray(_x((8, 3, 6)))
    state = model.initial_state(x)

    def rate(x):
        y, _ = ds.multi_step_forward(x, model.step, state=state)
        return y.mean()

    assert float(jax.jit(rate)(x)) == pytest.approx(float(rate(x)))
    assert (
        jax.grad(lambda x: ds.multi_step_forward(x, model.step, state=state)[1]["_1"]["v"].sum())(
            x
        ).shape
        == x.shape
    )
    batched = jax.vmap(lambda xb: ds.multi_step_forward(xb, model.step, state=state)[0])(
        jnp.stack([x, x])
    )
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(batched[1]))


def test_files_written_by_nir_are_read(tmp_path):
    pytest.importorskip("h5py")
    _, graph = _sj_dense()
    path = tmp_path / "net.nir"
    nir.write(str(path), graph)
    x = _x((5, 2, 6))
    a = ds.multi_step_forward(x, load(path, dt=DT).step, state=load(graph, dt=DT).initial_state(x))
    b = ds.multi_step_forward(x, load(graph, dt=DT).step, state=load(graph, dt=DT).initial_state(x))
    np.testing.assert_array_equal(a[0], b[0])


def test_unsupported_nodes_and_bad_arguments_are_named():
    delay = nir.Delay(delay=np.ones(3)) if hasattr(nir, "Delay") else None
    if delay is not None:
        with pytest.raises(UnsupportedNode, match=r"node 'n0' is a Delay"):
            load(_graph(delay), dt=1.0)
    lif = _neurons()["lif"]
    for dt in (0, -1.0, float("inf"), float("nan"), "0.5"):
        with pytest.raises(ValueError, match="`dt` must be a finite positive number; got"):
            load(_graph(lif), dt=dt)
    assert load(_graph(lif), dt=np.float32(0.5)).dt == 0.5
    with pytest.raises(ValueError, match="`convention` must be one of"):
        load(_graph(lif), dt=1.0, convention="norse")
    graph = _graph(lif)
    graph.edges.append(("n0", "ghost"))
    with pytest.raises(UnsupportedNode, match="edge endpoint 'ghost' names no node"):
        load(graph, dt=1.0)


def test_main_job_runs_a_nir_file_on_every_backend(tmp_path, capsys):
    pytest.importorskip("h5py")
    from dualstep import __main__ as main_job

    _, graph = _sj_dense()
    path = tmp_path / "net.nir"
    nir.write(str(path), graph)
    assert main_job.main(["nir", str(path), "--T", "8", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "against the NumPy float64 oracle" in out and "9 agree, 0 disagree" in out
    assert main_job.main(["nir", str(path), "--T", "8", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["T"] == 8 and found["convention"] == "nir"
    assert {(r["backend"], r["function"]) for r in found["rows"]} >= {
        ("numpy", "multi_step_forward"),
        ("torch", "chunk_multi_step_forward"),
        ("jax", "t_last_multi_step_forward"),
    }
    assert all(r["first_bad_step"] is None for r in found["rows"])
    assert main_job.main(["nir", str(path), "--T", "4", "--no-type-check"]) == 0
    with pytest.raises(SystemExit) as info:  # beyond memory: one line, not a traceback
        main_job.main(["nir", str(path), "--T", "1000000000000"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("dualstep nir: error: out of memory: ")
    with pytest.raises(SystemExit):
        main_job.main(["nir", str(path), "--dt", "0"])


def test_a_missing_nir_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "nir", None)  # import nir -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'dualstep\[nir\]'"):
        load("net.nir", dt=1.0)


def _conv_pool_flatten_graph():
    """Conv2d -> SumPool2d -> Flatten -> LIF, the shape of the NIR paper's CSNN."""
    rng = np.random.default_rng(11)
    conv = nir.Conv2d(
        input_shape=(6, 6),
        weight=rng.normal(size=(4, 2, 3, 3)),
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        bias=rng.normal(size=4) * 0.1,
    )
    pool = nir.SumPool2d(
        kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])
    )
    flat = nir.Flatten(input_type={"input": np.array([4, 3, 3])}, start_dim=0, end_dim=-1)
    ones = np.ones(36)
    lif = nir.LIF(tau=ones * 2e-3, r=ones, v_leak=0 * ones, v_threshold=ones, v_reset=0 * ones)
    return _graph(conv, pool, flat, lif, in_shape=(2, 6, 6))


def test_conv_graphs_read_from_a_file_run_on_every_backend(tmp_path):
    """nir.read gives NumPy integers for `groups` and Flatten's dims: they are static values
    (eager JAX once traced them and failed), and the file runs as the in-memory graph does."""
    pytest.importorskip("h5py")
    graph = _conv_pool_flatten_graph()
    path = tmp_path / "csnn.nir"
    nir.write(str(path), graph)
    read = nir.read(str(path))
    assert isinstance(read.nodes["n0"].groups, np.integer)  # what made JAX fail
    x = _x((4, 2, 2, 6, 6), scale=3.0)
    want, _ = ds.multi_step_forward(
        x, load(graph, dt=1e-3).step, state=load(graph, dt=1e-3).initial_state(x)
    )
    model = load(path, dt=1e-3)
    assert assert_backends_close(model.step, x, state=model.initial_state(x)).ok
    xj = jnp.asarray(x)
    y, _ = ds.multi_step_forward(xj, model.step, state=model.initial_state(xj))
    np.testing.assert_allclose(np.asarray(y), want, atol=1e-6)
    assert 0 < want.sum() < want.size


def test_numpy_scalars_in_a_step_are_static_values_on_jax():
    """A NumPy scalar is immutable, like a Python int: part of the cache key, usable as a
    static value (`int(...)`, a shape), and a new value gives a new program."""

    def make(k):
        def step(x, s):
            return jnp.reshape(x, (x.shape[0], int(k), -1)).sum(-1), s

        return step

    x = jnp.ones((3, 2, 6))
    for k in (np.int64(2), np.int64(3)):
        y, _ = ds.multi_step_forward(x, make(k), state=jnp.zeros(()))
        assert y.shape == (3, 2, int(k)) and float(y[0, 0, 0]) == 6 / k


@pytest.mark.parametrize("content", [None, b"", b"not a NIR file", "dir"])
def test_unreadable_files_are_one_error_naming_the_file(tmp_path, content):
    pytest.importorskip("h5py")
    path = tmp_path / "bad.nir"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(NIRFileError, match=r"cannot read '.*bad\.nir' as a NIR graph: ") as info:
        load(path, dt=1.0)
    assert isinstance(info.value, ValueError)
    assert (info.value.__cause__ is None) == (content in (None, "dir"))


def test_truncated_file_is_a_nir_file_error(tmp_path):
    pytest.importorskip("h5py")
    _, graph = _sj_dense()
    path = tmp_path / "net.nir"
    nir.write(str(path), graph)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NIRFileError, match=r"net\.nir"):
        load(path, dt=DT)


def test_type_check_is_passed_to_nir_read_and_untyped_nodes_are_named(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    seen = []
    real = nir.read
    monkeypatch.setattr(
        nir,
        "read",
        lambda p, type_check=True: seen.append(type_check) or real(p, type_check=type_check),
    )
    _, graph = _sj_dense()
    path = tmp_path / "net.nir"
    nir.write(str(path), graph)
    load(path, dt=DT, type_check=False)
    load(path, dt=DT)
    assert seen == [False, True]
    pool = nir.SumPool2d(
        kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])
    )
    nodes = {
        "input": nir.Input(input_type=np.array([1, 4, 4])),
        "pool": pool,
        "output": nir.Output(output_type=np.array([1, 2, 2])),
    }
    untyped = nir.NIRGraph(nodes, [("input", "pool"), ("pool", "output")], type_check=False)
    pool.input_type = {"input": None}  # as nir 1.0.4 writes it
    with pytest.raises(UnsupportedNode, match=r"node 'pool' \(SumPool2d\) has no input shape"):
        load(untyped, dt=1.0)


def test_main_job_nir_bad_files_are_one_line_and_exit_2(tmp_path, capsys):
    pytest.importorskip("h5py")
    from dualstep import __main__ as main_job

    readme = tmp_path / "README.md"
    readme.write_text("# not a graph\n")
    for path in (tmp_path / "missing.nir", readme):
        with pytest.raises(SystemExit) as info:
            main_job.main(["nir", str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"dualstep nir: error: cannot read {str(path)!r} as a NIR graph")
    for bad in ("inf", "nan", "0"):
        with pytest.raises(SystemExit) as info:
            main_job.main(["nir", str(readme), "--dt", bad])
        assert info.value.code == 2
        assert "argument --dt: must be a finite positive number" in capsys.readouterr().err


def _recurrent_layer(n=2, decay=0.5):
    """A recurrent LI layer as a subgraph, the way snnTorch and Spyx write RLeaky."""
    ones = np.ones(n)
    return nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([n])),
            "li": nir.LI(tau=ones * 2.0, r=ones, v_leak=0 * ones),
            "w_rec": nir.Linear(weight=np.array([[0.0, decay], [-decay, 0.0]])),
            "output": nir.Output(output_type=np.array([n])),
        },
        edges=[("input", "li"), ("li", "w_rec"), ("w_rec", "li"), ("li", "output")],
    )


def _outer(inner, type_check=True):
    nodes = {
        "input": nir.Input(input_type=np.array([3])),
        "aff": nir.Affine(weight=np.arange(6.0).reshape(2, 3) / 6, bias=np.zeros(2)),
        "rnn": inner,
        "output": nir.Output(output_type=np.array([2])),
    }
    edges = [("input", "aff"), ("aff", "rnn"), ("rnn", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=type_check)


def test_nested_graphs_run_as_the_flat_graph_with_their_own_recurrent_edges(tmp_path):
    """A NIRGraph node (a recurrent layer written as a subgraph) runs as one step with its own
    state and recurrent edges: the same as the flat graph; read from a file too, on every
    backend against the oracle, and a subgraph inside a subgraph."""
    pytest.importorskip("h5py")
    inner = _recurrent_layer()
    flat_nodes = {
        "input": nir.Input(input_type=np.array([3])),
        "aff": nir.Affine(weight=np.arange(6.0).reshape(2, 3) / 6, bias=np.zeros(2)),
        "li": inner.nodes["li"],
        "w_rec": inner.nodes["w_rec"],
        "output": nir.Output(output_type=np.array([2])),
    }
    flat_edges = [("input", "aff"), ("aff", "li"), ("li", "w_rec"), ("w_rec", "li")]
    flat = nir.NIRGraph(nodes=flat_nodes, edges=[*flat_edges, ("li", "output")])
    x = _x((9, 2, 3), seed=4).astype(np.float64)
    want, want_state = ds.multi_step_forward(
        x, load(flat, dt=1.0).step, state=load(flat, dt=1.0).initial_state(x)
    )
    path = tmp_path / "nested.nir"
    nir.write(str(path), _outer(inner))
    for source in (_outer(inner), path):
        model = load(source, dt=1.0)
        state = model.initial_state(x)
        assert set(state) == {"rnn"} and set(state["rnn"]) == {"li", "recurrent"}
        y, final = ds.multi_step_forward(x, model.step, state=state)
        np.testing.assert_allclose(y, want, rtol=1e-12)
        np.testing.assert_allclose(final["rnn"]["li"]["v"], want_state["li"]["v"], rtol=1e-12)
        assert assert_backends_close(
            model.step, x.astype(np.float32), state=model.initial_state(x.astype(np.float32))
        ).ok
    twice = _graph(inner, in_shape=(2,))  # input -> n0 (the subgraph) -> output
    model = load(_outer(twice), dt=1.0)
    y, final = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    np.testing.assert_allclose(y, want, rtol=1e-12)
    assert set(final["rnn"]["n0"]) == {"li", "recurrent"}


def test_a_subgraph_with_two_outputs_is_named():
    inner = _recurrent_layer()
    inner.nodes["output2"] = nir.Output(output_type=np.array([2]))
    inner.edges.append(("li", "output2"))
    with pytest.raises(UnsupportedNode, match=r"node 'rnn' is a subgraph with 2 Output nodes"):
        load(_outer(inner, type_check=False), dt=1.0)


def test_a_neuron_without_v_reset_is_named_at_load():
    """nir 1.0.4 and 1.0.5 have no `v_reset` (they reset by subtraction); such a node failed
    with a KeyError at the first step. dualstep[nir] needs nir>=1.0.6."""
    lif = _neurons()["lif"]
    del lif.v_reset
    with pytest.raises(
        UnsupportedNode, match=r"node 'n0' \(LIF\) has no v_reset \(nir before 1\.0\.6"
    ):
        load(_graph(lif), dt=1.0)


def test_main_job_nir_graphs_that_cannot_run_are_one_line(tmp_path, capsys, monkeypatch):
    """A graph without an Input node (a ValueError of `load`), a node that cannot run, and a
    missing nir package: one line naming what is wrong, exit 2, no traceback."""
    from dualstep import __main__ as main_job

    lif = _neurons()["lif"]
    no_input = nir.NIRGraph(
        nodes={"n0": lif, "output": nir.Output(output_type=np.array([3]))},
        edges=[("n0", "output")],
        type_check=False,
    )
    no_reset = _graph(_neurons()["lif"])
    del no_reset.nodes["n0"].v_reset
    path = tmp_path / "graph.nir"
    path.write_bytes(b"read by the patched nir.read")
    for graph, message in ((no_input, "needs one Input node"), (no_reset, "has no v_reset")):
        monkeypatch.setattr(nir, "read", lambda p, type_check=True, graph=graph: graph)
        with pytest.raises(SystemExit) as info:
            main_job.main(["nir", str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("dualstep nir: error:")
    monkeypatch.setitem(__import__("sys").modules, "nir", None)
    with pytest.raises(SystemExit) as info:
        main_job.main(["nir", str(path)])
    assert "pip install 'dualstep[nir]'" in capsys.readouterr().err and info.value.code == 2


def test_split_and_merge_inside_a_subgraph():
    """NIR's branch and merge-and-split shapes: the input feeds two branches whose outputs a
    node sums, here inside a subgraph, against the step written by hand."""
    w1, w2 = np.array([[1.0, 0.5], [0.0, 2.0]]), np.array([[-1.0, 0.0], [0.5, 0.5]])
    ones = np.ones(2)
    inner = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([2])),
            "a": nir.Linear(weight=w1),
            "b": nir.Linear(weight=w2),
            "li": nir.LI(tau=ones * 2.0, r=ones, v_leak=0 * ones),
            "output": nir.Output(output_type=np.array([2])),
        },
        edges=[("input", "a"), ("input", "b"), ("a", "li"), ("b", "li"), ("li", "output")],
    )
    graph = _graph(inner, in_shape=(2,))  # input -> n0 (the subgraph) -> output
    model = load(graph, dt=1.0)
    x = _x((5, 1, 2), seed=9).astype(np.float64)
    y, _ = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    # A subgraph without state (the two branches alone) runs too.
    inner.nodes["output"] = nir.Output(output_type=np.array([2]))
    stateless = nir.NIRGraph(
        nodes={k: v for k, v in inner.nodes.items() if k != "li"},
        edges=[("input", "a"), ("input", "b"), ("a", "output"), ("b", "output")],
    )
    graph.nodes["n0"] = stateless
    branches = load(graph, dt=1.0)
    assert branches.initial_state(x) == {}
    z, _ = ds.multi_step_forward(x, branches.step, state={})
    np.testing.assert_allclose(z[:, 0], x[:, 0] @ (w1 + w2).T, rtol=1e-12)
    v, want = np.zeros(2), []
    for xt in x[:, 0]:
        v = v + 0.5 * (-v + w1 @ xt + w2 @ xt)
        want.append(v)
    np.testing.assert_allclose(y[:, 0], np.array(want), rtol=1e-12)


# --- issue 24: odd graphs ----------------------------------------------------------------------


def test_an_edge_into_the_input_node_is_refused():
    """It was dropped silently (the output equalled the graph without it)."""
    ones = np.ones(3)
    nodes = {
        "input": nir.Input(input_type=np.array([3])),
        "li": nir.LI(tau=ones, r=ones, v_leak=0 * ones),
        "output": nir.Output(output_type=np.array([3])),
    }
    graph = nir.NIRGraph(nodes, [("input", "li"), ("li", "input"), ("li", "output")])
    with pytest.raises(UnsupportedNode, match=r"edge \('li', 'input'\) goes into the Input node"):
        load(graph, dt=1.0)


def test_same_padding_with_a_stride_is_refused():
    conv = nir.Conv2d(
        input_shape=(5, 6),
        weight=np.ones((3, 1, 3, 3)),
        stride=2,
        padding="same",
        dilation=1,
        groups=1,
        bias=np.zeros(3),
    )
    with pytest.raises(UnsupportedNode, match=r"node 'n0' \(Conv2d\) has padding='same' with"):
        load(_graph(conv, in_shape=(1, 5, 6)), dt=1.0)


def test_flatten_without_an_input_type_is_named():
    flat = nir.Flatten(input_type={"input": np.array([2, 3])}, start_dim=0, end_dim=-1)
    flat.input_type = None
    nodes = {
        "input": nir.Input(input_type=np.array([2, 3])),
        "flat": flat,
        "output": nir.Output(output_type=np.array([6])),
    }
    graph = nir.NIRGraph(nodes, [("input", "flat"), ("flat", "output")], type_check=False)
    with pytest.raises(UnsupportedNode, match=r"node 'flat' \(Flatten\) has no input shape"):
        load(graph, dt=1.0)


def test_a_chain_of_thousands_of_nodes_loads_and_runs():
    """The depth-first order was recursive: a valid chain of ~1000 nodes hit RecursionError."""
    chain = [nir.Scale(scale=np.full(2, 1.001)) for _ in range(3000)]
    model = load(_graph(*chain, in_shape=(2,)), dt=1.0)
    y, _ = ds.multi_step_forward(np.ones((2, 1, 2)), model.step, state={})
    np.testing.assert_allclose(y, np.full((2, 1, 2), 1.001**3000), rtol=1e-9)


@pytest.mark.parametrize("tau", [0.0, -1.0, np.inf, np.nan])
def test_a_time_constant_that_is_not_positive_is_refused(tau):
    """tau=0 was accepted (a divide warning, then NaN membranes)."""
    lif = _neurons()["lif"]
    lif.tau = np.array([2e-3, tau, 2e-3])
    with pytest.raises(ValueError, match=r"node 'n0' \(LIF\): `tau` must be finite and positive"):
        load(_graph(lif), dt=1e-3)
    cuba = _neurons()["cubalif"]
    cuba.tau_syn = np.array([tau, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"`tau_syn` must be finite and positive"):
        load(_graph(cuba), dt=1e-3)


@pytest.mark.parametrize("convention", ["nir", "spikingjelly", "snntorch"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_infinite_input_resets_to_v_reset_not_nan(convention, backend):
    """`z * v_reset + (1 - z) * v` gave 0 * inf = NaN; the reset is a select."""
    import support

    b = support.MAKERS[backend]()
    ones = np.ones(1)
    lif = nir.IF(r=ones, v_threshold=ones, v_reset=0 * ones)
    model = load(_graph(lif, in_shape=(1,)), dt=1.0, convention=convention)
    x = b.asarray(np.array([np.inf, 0.0, 0.0]).reshape(3, 1, 1))
    y, final = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    v = b.to_numpy(final["n0"]["v"])
    if convention == "snntorch":  # subtracts the threshold one step late: inf stays inf
        assert b.to_numpy(y).ravel().tolist() == [1.0, 1.0, 1.0] and np.isinf(v).all()
    else:
        assert b.to_numpy(y).ravel().tolist() == [1.0, 0.0, 0.0] and v.tolist() == [[0.0]]


def test_float64_input_keeps_no_parameter_alive():
    """The conversion cache held `np.asarray(p, float64)`, which is `p` itself (and on torch
    a tensor sharing its memory), so its weak reference never fired."""
    import gc
    import weakref

    def arrays(fn, seen):
        """The NumPy arrays a step function holds, through its closures."""
        for cell in getattr(fn, "__closure__", None) or ():
            value = cell.cell_contents
            if isinstance(value, np.ndarray):
                yield value
            elif callable(value) and id(value) not in seen:
                seen.add(id(value))
                yield from arrays(value, seen)

    def run(x):
        w = np.full((30, 30), 0.01)
        model = load(nir.NIRGraph.from_list(nir.Linear(weight=w)), dt=1.0)
        ds.multi_step_forward(x, model.step, state=model.initial_state(x))
        held = list(arrays(model.nodes["linear"].apply, set()))
        assert held  # the transposed weight
        return [weakref.ref(a) for a in held]

    for x in (np.ones((2, 1, 30)), torch.ones(2, 1, 30, dtype=torch.float64)):
        refs = run(x)
        gc.collect()
        assert all(r() is None for r in refs)


@pytest.mark.parametrize("dtype", ["int32", "bool", "uint8"])
def test_integer_and_bool_input_is_refused_by_name(dtype):
    """The weights were cast to the input's dtype: a Linear of 0.5 on int ones gave 0."""
    model = load(_graph(nir.Linear(weight=np.full((3, 3), 0.5))), dt=1.0)
    x = np.ones((2, 1, 3), dtype)
    message = rf"`x_seq` of a NIR graph must be a floating array .*; got {dtype}"
    with pytest.raises(TypeError, match=message):
        model.initial_state(x)
    with pytest.raises(TypeError, match=rf"`x` of a NIR graph must be a floating array .*{dtype}"):
        ds.multi_step_forward(x, model.step, state={})


def test_shapes_that_would_broadcast_are_refused_at_load():
    """A Linear with one output into a 2-neuron LIF ran silently (broadcast) in a graph built
    with type_check=False; the edge is now refused as nir's type check would."""
    ones = np.ones(2)
    nodes = {
        "input": nir.Input(input_type=np.array([3])),
        "lin": nir.Linear(weight=np.ones((1, 3))),
        "lif": nir.LIF(tau=ones, r=ones, v_leak=0 * ones, v_threshold=ones, v_reset=0 * ones),
        "output": nir.Output(output_type=np.array([2])),
    }
    edges = [("input", "lin"), ("lin", "lif"), ("lif", "output")]
    graph = nir.NIRGraph(nodes, edges, type_check=False)
    with pytest.raises(
        UnsupportedNode,
        match=r"edge \('lin', 'lif'\) joins an output of shape \[1\] to an input of shape \[2\]",
    ):
        load(graph, dt=1.0)

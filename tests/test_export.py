"""Exported time loops (docs, "Deploying"): `torch.export`, ONNX through ONNX Runtime, and
`jax.export` in a fresh process each run the exported SNN at three T from one export, equal to
the eager call (spikes identical, every other value within 1e-6 relative), with one loop in the
graph whatever T."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from support import EXPORT_WARNINGS

import dualstep as ds
from dualstep import neurons
from dualstep.export import dynamic_shapes, symbolic_args

pytestmark = [pytest.mark.filterwarnings(w) for w in EXPORT_WARNINGS]

RUN_AT = (3, 8, 12)  # none of them the example's T
RUN_AT_CHUNKS = (4, 8, 12)  # multiples of the split size, 2, two chunks at least


def _agree(got, want, spikes):
    """Each leaf of `got` equals `want`'s: spikes exactly, others within 1e-6 relative."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    if spikes:
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(got - want).max() <= 1e-6 * max(np.abs(want).max(), 1e-30)


def _leaves(tree):
    from dualstep._tree import leaves_with_path

    return [np.asarray(a) for _, a in leaves_with_path(tree, "", sort_keys=True) if a is not None]


def _check_outputs(got, want):
    """The first output leaf holds spikes; the rest values."""
    got, want = _leaves(got), _leaves(want)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        _agree(g, w, spikes=i == 0 and set(np.unique(w)) <= {0.0, 1.0})


# --- torch ---------------------------------------------------------------------------------


@pytest.fixture
def torch_export(torch_backend):
    import torch

    yield torch
    torch._dynamo.reset()  # a failed export leaves state that breaks the next one


def _torch_cases(torch):
    """name -> (call, example arguments, helper options, T to run at); each call an SNN."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(8, 8)
    lif, alif = neurons.LIF(tau=2.0), neurons.AdaptiveLIF()

    def step(x, v):
        return lif(fc(x), v)

    def x(t, b=3, t_last=False):
        a = torch.rand(b, 8, t) if t_last else torch.rand(t, b, 8)
        return a * 3

    def chunk(xc, v):
        return ds.multi_step_forward(xc, step, state=v)

    v = torch.zeros(3, 8)
    cases = {
        "multi_step_forward": (lambda x, v: ds.multi_step_forward(x, step, state=v), (x(5), v)),
        "t_last_multi_step_forward": (
            lambda x, v: ds.t_last_multi_step_forward(x, lif, state=v),
            (x(5, t_last=True), v),
            {"t_last": True},
        ),
        "module list, dict state": (
            lambda x, s: ds.multi_step_forward(x, [fc, alif], state=s),
            (x(5), (None, alif.initial_state(x(5)))),
        ),
        "chunk_multi_step_forward": (
            lambda x, v: ds.chunk_multi_step_forward(2, x, chunk, state=v),
            (x(6), v),
            {"split_size": 2},
            RUN_AT_CHUNKS,
        ),
        "lengths": (
            lambda x, v, n: ds.multi_step_forward(x, step, state=v, lengths=n),
            (x(5), v, torch.tensor([5, 2, 0])),
        ),
        "state=None": (lambda x: ds.multi_step_forward(x, [fc, torch.relu]), (x(5),)),
        "t_last_seq_to_ann_forward": (
            lambda x: ds.t_last_seq_to_ann_forward(x, fc),
            (x(5, t_last=True),),
            {"t_last": True},
        ),
    }
    return fc, {name: _case(*c) for name, c in cases.items()}, x


def _case(call, example, options=None, run_at=RUN_AT):
    """(call, example arguments, helper options, T to run at)."""
    return call, example, options or {}, run_at


def _module(torch, fc, call):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = fc  # its parameters are the program's

        def forward(self, *args):
            return call(*args)

    return Model()


def _run_args(torch, example, x, t, options):
    """The example's arguments at `t` steps and another batch size (4)."""
    out = [x(t, 4, options.get("t_last", False))]
    for a in example[1:]:
        if isinstance(a, torch.Tensor) and a.dtype == torch.int64:  # lengths
            out.append(torch.tensor([t, t // 2, 0, 1]))
        else:
            out.append(
                torch.utils._pytree.tree_map(
                    lambda s: None if s is None else torch.zeros(4, *s.shape[1:]), a
                )
            )
    return out


def _top_level_loops(torch, program):
    """The program's `scan`s that compute its results (not the first step's checks, which a
    pass such as ``run_decompositions`` drops), outside the scans' own bodies."""
    module = copy.deepcopy(program.graph_module)
    module.graph.eliminate_dead_code()
    return sum(n.target is torch.ops.higher_order.scan for n in module.graph.nodes)


@pytest.mark.parametrize(
    "name",
    [
        "multi_step_forward",
        "t_last_multi_step_forward",
        "module list, dict state",
        "chunk_multi_step_forward",
        "lengths",
        "state=None",
        "t_last_seq_to_ann_forward",
    ],
)
def test_torch_export_runs_at_other_lengths_as_one_scan(torch_export, name):
    torch = torch_export
    fc, cases, x = _torch_cases(torch)
    call, example, options, run_at = cases[name]
    model = _module(torch, fc, call)
    spec = dynamic_shapes(*example, **options)
    program = torch.export.export(model, tuple(example), dynamic_shapes={"args": spec})
    assert _top_level_loops(torch, program) == 1 and len(run_at) == 3
    with torch.no_grad():
        for t in run_at:
            args = _run_args(torch, example, x, t, options)
            _check_outputs(program.module()(*args), model(*args))


def test_torch_export_saves_and_keeps_one_scan_at_any_example_length(torch_export, tmp_path):
    """Exported at T = 4 and at T = 40 without dynamic shapes, the graphs are the same size;
    a program saved and loaded runs as before."""
    torch = torch_export
    fc, cases, x = _torch_cases(torch)
    call, (_, v), *_ = cases["multi_step_forward"]
    model = _module(torch, fc, call)
    sizes = [len(torch.export.export(model, (x(t), v)).graph.nodes) for t in (4, 40)]
    assert sizes[0] == sizes[1]
    program = torch.export.export(
        model, (x(5), v), dynamic_shapes={"args": dynamic_shapes(x(5), v)}
    )
    torch.export.save(program, tmp_path / "snn.pt2")
    loaded = torch.export.load(tmp_path / "snn.pt2")
    args = (x(9, 4), torch.zeros(4, 8))
    with torch.no_grad():
        _check_outputs(loaded.module()(*args), model(*args))


@pytest.mark.parametrize("name", ["multi_step_forward", "module list, dict state", "lengths"])
def test_onnx_export_runs_in_onnx_runtime_at_other_lengths(torch_export, name, tmp_path):
    """``torch.onnx.export(program, dynamo=True)`` of the exported program: one `Scan` node
    whatever T, and ONNX Runtime (CPU) equal to eager at three T."""
    torch = torch_export
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    fc, cases, x = _torch_cases(torch)
    call, example, *_ = cases[name]
    model = _module(torch, fc, call)
    program = torch.export.export(
        model, tuple(example), dynamic_shapes={"args": dynamic_shapes(*example)}
    )
    path = tmp_path / "snn.onnx"
    torch.onnx.export(program, f=str(path), dynamo=True, verbose=False)
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node].count("Scan") == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    with torch.no_grad():
        for t in RUN_AT:
            args = _run_args(torch, example, x, t, {})
            flat = [a.numpy() for a in torch.utils._pytree.tree_leaves(args) if a is not None]
            got = session.run(None, dict(zip(names, flat, strict=True)))
            want = [
                a.numpy() for a in torch.utils._pytree.tree_leaves(model(*args)) if a is not None
            ]
            _check_outputs(got, want)


def test_torch_export_refuses_hidden_memory_and_kernels_naming_the_way_out(torch_export):
    torch = torch_export
    x = torch.rand(5, 3, 8)
    spec = {"args": dynamic_shapes(x)}
    sj = pytest.importorskip("spikingjelly.activation_based.neuron")
    lif_node = sj.LIFNode()
    node = _module(torch, torch.nn.Linear(1, 1), lambda x: ds.multi_step_forward(x, lif_node))
    with pytest.raises(ValueError, match=r"LIFNode keeps its state in itself\. Pass the state"):
        torch.export.export(node, (x,), dynamic_shapes=spec)
    torch._dynamo.reset()
    fused = _module(
        torch,
        torch.nn.Linear(1, 1),
        lambda x, v: ds.multi_step_forward(x, neurons.LIF(), state=v, fused=True),
    )
    with pytest.raises(ds.NotFusable, match=r"`torch\.export` cannot export a Triton kernel"):
        v = torch.zeros(3, 8)
        torch.export.export(fused, (x, v), dynamic_shapes={"args": dynamic_shapes(x, v)})


def test_dynamic_shapes_marks_time_and_every_batch_axis(torch_backend):
    import torch

    x, lengths = torch.zeros(5, 3, 8), torch.tensor([5, 1, 2])
    state = (None, {"v": torch.zeros(3, 8), "w": torch.zeros(8, 8)}, torch.tensor(1.0))
    x_spec, s_spec, l_spec = dynamic_shapes(x, state, lengths)
    assert x_spec[0].__name__ == "T" and x_spec[1].__name__ == "batch"
    assert s_spec[0] is None and s_spec[1]["w"] is None and s_spec[2] is None
    assert s_spec[1]["v"][0] is x_spec[1] and l_spec[0] is x_spec[1]
    (t_last,) = dynamic_shapes(torch.zeros(3, 8, 5), t_last=True)
    assert set(t_last) == {0, 2} and t_last[2].__name__ == "T"
    with pytest.raises(ValueError, match="a batch of 2 or more"):
        dynamic_shapes(torch.zeros(5, 1, 8))
    with pytest.raises(ValueError, match=r"multiple of `split_size` \(2\), two chunks at least"):
        dynamic_shapes(x, split_size=2)
    with pytest.raises(TypeError, match="must be a torch array with a time and a batch axis"):
        dynamic_shapes(np.zeros((5, 3)))


# --- JAX -----------------------------------------------------------------------------------


_JAX_CASES = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import dualstep as ds
    from dualstep import neurons

    W = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32) / 3)
    LIF, ALIF = neurons.LIF(tau=2.0), neurons.AdaptiveLIF()

    def step(x, v):
        return LIF(x @ W, v)

    def chunk(xc, v):
        return ds.multi_step_forward(xc, step, state=v)

    # name -> (call, helper options, T to run at, loops in the program)
    CASES = {
        "multi_step_forward": (lambda x, v: ds.multi_step_forward(x, step, state=v), {}),
        "t_last_multi_step_forward": (
            lambda x, v: ds.t_last_multi_step_forward(x, LIF, state=v), {"t_last": True}),
        "module list, dict state": (
            lambda x, s: ds.multi_step_forward(x, [lambda x: x @ W, ALIF], state=s), {}),
        "chunk_multi_step_forward": (
            lambda x, v: ds.chunk_multi_step_forward(2, x, chunk, state=v), {"split_size": 2}),
        "lengths": (lambda x, v, n: ds.multi_step_forward(x, step, state=v, lengths=n), {}),
        "state=None": (lambda x: ds.multi_step_forward(x, lambda x: jnp.tanh(x @ W)), {}),
    }

    def args(name, t, b):
        options = CASES[name][1]
        rng = np.random.default_rng(t)
        shape = (b, 8, t) if options.get("t_last") else (t, b, 8)
        x = (rng.random(shape) * 3).astype(np.float32)
        v = np.zeros((b, 8), np.float32)
        if name == "module list, dict state":
            return x, (None, {"v": v, "a": v})
        if name == "lengths":
            return x, v, np.array([t, t // 2] + [0] * (b - 2), np.int32)
        return (x,) if name == "state=None" else (x, v)
    """
)


def test_jax_export_runs_in_a_fresh_process_at_other_lengths(jax_backend, tmp_path):
    """Every case exported once with a symbolic T and batch, serialized (with its first
    derivative), then in a fresh process deserialized and run at three T and another batch,
    equal to eager here; the gradient through the multi_step_forward program too. Each program
    holds one loop (two for chunks: the chunk loop around the step loop) whatever T."""
    import jax

    pytest.importorskip("flatbuffers")
    namespace: dict = {}
    exec(_JAX_CASES, namespace)
    cases, make = namespace["CASES"], namespace["args"]
    for name, (call, options) in cases.items():
        program = jax.export.export(jax.jit(call))(*symbolic_args(*make(name, 6, 3), **options))
        loops = program.mlir_module().count("stablehlo.while")
        assert loops == (2 if name == "chunk_multi_step_forward" else 1), (name, loops)
        (tmp_path / f"{len(list(tmp_path.iterdir()))}.bin").write_bytes(
            program.serialize(vjp_order=1)
        )
    script = _JAX_CASES + textwrap.dedent(
        f"""
        import pathlib, pickle
        out = {{}}
        folder = pathlib.Path({str(tmp_path)!r})
        for i, name in enumerate(CASES):
            program = jax.export.deserialize((folder / f"{{i}}.bin").read_bytes())
            steps = (4, 8, 12) if name == "chunk_multi_step_forward" else (3, 8, 12)
            runs = [program.call(*args(name, t, 4)) for t in steps]
            out[name] = [jax.tree_util.tree_map(np.asarray, r) for r in runs]
            if name == "multi_step_forward":
                x, v = args(name, 8, 4)
                grad = jax.grad(lambda x: program.call(x, v)[1].sum())(x)
                out["gradient"] = np.asarray(grad)
        (folder / "out.pkl").write_bytes(pickle.dumps(out))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    import pickle

    out = pickle.loads((tmp_path / "out.pkl").read_bytes())
    for name, (call, _) in cases.items():
        steps = RUN_AT_CHUNKS if name == "chunk_multi_step_forward" else RUN_AT
        for t, got in zip(steps, out[name], strict=True):
            _check_outputs(got, call(*jax.tree_util.tree_map(jax.numpy.asarray, make(name, t, 4))))
    x, v = map(jax.numpy.asarray, make("multi_step_forward", 8, 4))
    want = jax.grad(lambda x: cases["multi_step_forward"][0](x, v)[1].sum())(x)
    _agree(out["gradient"], want, spikes=False)


def test_jax_export_of_a_fused_call_says_why_it_cannot(jax_backend):
    import jax

    pytest.importorskip("jax.experimental.pallas")
    x, v = np.zeros((5, 3, 8), np.float32), np.zeros((3, 8), np.float32)

    def call(x, v):
        return ds.multi_step_forward(x, neurons.LIF(), state=v, fused=True)

    with pytest.raises(ds.NotFusable, match=r"symbolic shape \(T, batch, 8\) \(jax.export\)"):
        jax.export.export(jax.jit(call))(*symbolic_args(x, v))


def test_symbolic_args_marks_time_and_every_batch_axis(jax_backend):
    x, lengths = np.zeros((6, 3, 8), np.float32), np.array([5, 1, 2], np.int32)
    state = (None, {"v": np.zeros((3, 8)), "w": np.zeros((8, 8), np.float32)})
    x_spec, s_spec, l_spec = symbolic_args(x, state, lengths)
    assert str(x_spec.shape) == "(T, batch, 8)" and x_spec.dtype == np.float32
    assert s_spec[0] is None and str(s_spec[1]["v"].shape) == "(batch, 8)"
    assert s_spec[1]["w"].shape == (8, 8) and str(l_spec.shape) == "(batch,)"
    (chunks,) = symbolic_args(x, split_size=3)
    assert str(chunks.shape) == "(3*chunks, batch, 8)"
    (t_last,) = symbolic_args(np.zeros((3, 8, 6)), t_last=True)
    assert str(t_last.shape) == "(batch, 8, T)"


_JAX2ONNX_SNN = textwrap.dedent(
    """
    import jax.numpy as jnp
    import numpy as np

    import dualstep as ds
    from dualstep import neurons

    W = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32) / 3
    LIF = neurons.LIF(tau=2.0)


    def snn(x_seq, v):
        return ds.multi_step_forward(x_seq, lambda x, v: LIF(x @ W, v), state=v)
    """
)


def test_jax2onnx_converts_the_loop_for_onnx_runtime(jax_backend, tmp_path):
    """The optional path from JAX to ONNX: jax2onnx turns a dualstep scan with a symbolic T
    and batch into one ONNX `Loop`, which ONNX Runtime runs equal to eager at three T. The
    conversion runs in its own process: jax2onnx 0.17 leaves `jnp.cumsum` patched after
    `to_onnx` (docs, "Deploying")."""
    import jax.numpy as jnp

    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "snn.onnx"
    script = _JAX2ONNX_SNN + textwrap.dedent(
        f"""
        from jax2onnx import to_onnx

        model = to_onnx(snn, [("T", "B", 8), ("B", 8)], return_mode="proto")
        open({str(path)!r}, "wb").write(model.SerializeToString())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Loop") == 1
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the unused initializers ONNX Runtime drops
    session = ort.InferenceSession(str(path), options)
    names = [i.name for i in session.get_inputs()]
    namespace: dict = {}
    exec(_JAX2ONNX_SNN, namespace)
    for t in RUN_AT:
        x = (np.random.default_rng(t).random((t, 4, 8)) * 3).astype(np.float32)
        v = np.zeros((4, 8), np.float32)
        got = session.run(None, dict(zip(names, (x, v), strict=True)))
        _check_outputs(got, namespace["snn"](jnp.asarray(x), jnp.asarray(v)))

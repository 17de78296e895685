"""The benchmark compares like with like: every system of a workload computes the same result."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")
from benchmarks import run, systems


def _first(out):
    out = out[0] if isinstance(out, tuple) else out
    return out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)


def _outputs(built):
    return {s.name: _first(s.fn()) for s in built if s.framework != "copy"}


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_neuron_systems_agree_exactly(kind):
    outs = _outputs(systems.neuron_systems(kind, (6, 3, 8), "cpu", compile_torch=False))
    assert len(outs) >= 7
    want = outs["torch Python loop"]
    assert want.any() and not want.all()  # spikes and silences: the comparison means something
    for name, got in outs.items():
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_linear_lif_systems_agree():
    outs = _outputs(systems.linear_lif_systems((6, 3, 8), "cpu", compile_torch=False))
    want = outs["torch Python loop"]
    for name, got in outs.items():
        # matmul rounding differs between frameworks: allow a rare flipped spike in JAX
        mismatch = np.mean(got != want)
        assert mismatch <= (0.02 if "JAX" in name or "jit" in name else 0.0), name


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_seq_to_ann_systems_agree(layer):
    outs = _outputs(systems.seq_to_ann_systems(layer, (4, 2, 64), "cpu"))
    want = outs["torch flatten-call-unflatten"]
    for name, got in outs.items():
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_chunk_systems_agree_exactly():
    outs = _outputs(systems.chunk_systems((40, 2, 8), "cpu"))
    want = outs["dualstep torch, state="]
    assert len(outs) >= 4
    for name, got in outs.items():
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_side_by_side_timer_and_report():
    times = run.time_side_by_side([lambda: None, lambda: sum(range(1000))], budget=0.01, rounds=2)
    assert len(times) == 2 and 0 < times[0] < times[1]
    rows = [
        {
            "workload": "IF neuron",
            "size": [64, 32, 512],
            "system": name,
            "framework": "torch",
            "seconds": t,
        }
        for name, t in [
            ("memory copy", 1.0),
            ("SpikingJelly multi_step_forward", 40.0),
            ("dualstep torch, module (SJ neuron)", 41.0),
            ("dualstep torch.compile", 2.0),
        ]
    ]
    result = {
        "rows": rows,
        "dispatch": {
            "api_us": 3.0,
            "backend_us": 2.0,
            "direct_us": 1.5,
            "overhead_us": 1.5,
            "spikingjelly_overhead_us": 1.0,
        },
        "compile_equals_spikingjelly": True,
        "memory": {},
        "device": "cpu",
        "quick": True,
    }
    got = {t["target"].split(".")[0]: t for t in run.targets(result)}
    assert got["1"]["value"] == pytest.approx(41 / 40) and got["1"]["met"] is True
    assert got["2"]["met"] is True
    assert got["2b"]["value"] == pytest.approx(0.5) and got["2b"]["met"] is False
    assert got["3"]["value"] == pytest.approx(20.0) and got["3"]["met"] is True
    text = run.markdown(result, run.targets(result))
    assert "| dualstep torch.compile | 2000.000 (2.0x) |" in text
    result["compile_equals_spikingjelly"] = False  # fast, but not equal: not met
    got = {t["target"].split(".")[0]: t for t in run.targets(result)}
    assert got["3"]["value"] == pytest.approx(20.0) and got["3"]["met"] is False


def test_gpu_benchmark_smoke_run_checks_every_system(tmp_path):
    """`python -m benchmarks.gpu --smoke` on CPU (interpreted kernels): every system agrees
    with the torch loop and every target finds both of its systems."""
    pytest.importorskip("triton")
    pytest.importorskip("jax")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    for label, checks in result["checks"].items():
        assert checks and set(checks.values()) == {"ok"}, (label, checks)
    assert result["targets"] and all(t["value"] is not None for t in result["targets"])
    assert "| target | figure | bound | met |" in (tmp_path / "gpu.md").read_text()


def _quick(module: str) -> subprocess.CompletedProcess:
    """`python -m <module> --quick` from the checkout; it must succeed."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--quick"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_nir_benchmark_checks_then_times_both_steps():
    pytest.importorskip("nir")
    out = _quick("benchmarks.nir")
    assert "NIR step / hand-written step (Linear -> LIF, 8x4x16, jax.jit):" in out.stdout
    for label in ("CSNN, T=4, batch 8, 2x10x10", "RSNN, T=8, batch 8"):
        line = next(
            line for line in out.stdout.splitlines() if line.startswith(f"dualstep / Spyx ({label}")
        )
        assert "(bound <= " in line or "Spyx is not installed (pip install spyx)" in line


def test_targets_name_only_systems_that_exist(monkeypatch):
    """A renamed system fails loudly: a System must be in systems.NAMES, and a target naming
    a system that is not raises instead of reading "n/a"."""
    with pytest.raises(ValueError, match=r"is not in systems\.NAMES"):
        systems.System("dualstep torch (renamed)", lambda: None, "torch")
    result = {
        "rows": [],
        "dispatch": {"api_us": 3.0, "backend_us": 2.0, "direct_us": 1.5, "overhead_us": 1.5},
        "compile_equals_spikingjelly": None,
        "memory": {},
    }
    assert all(t["met"] is None for t in run.targets(result) if t["value"] is None)
    # As if the system had been renamed in systems.py but not in the targets:
    monkeypatch.setattr(systems, "NAMES", systems.NAMES - {"SpikingJelly multi_step_forward"})
    with pytest.raises(KeyError, match="SpikingJelly multi_step_forward"):
        run.targets(result)


def test_training_systems_compute_the_same():
    """`python -m benchmarks.training` times like with like: each builder checks its systems'
    outputs and input gradients (bit-identical where stated) before returning them."""
    from benchmarks import training

    assert len(training.loop_systems(6)) == 4
    if importlib.util.find_spec("spikingjelly") is not None:
        assert len(training.spikingjelly_systems(6)) == 3
        assert len(training.open_neuromorphic_systems(steps=4)) == 3


def test_compile_loop_report_holds_each_figure_to_its_target():
    """`python -m benchmarks.compile_loop` fails when the cold compile at T=500 takes 60 s or
    more, when a T after the first two compiles a graph, or when the compiled LIF is under 3x
    the eager loop; the other workloads are reported without a bound."""
    from benchmarks import compile_loop

    def result(compile_s=10.0, graphs=0, lif=(0.12, 0.036), other=(0.4, 1.2)) -> dict:
        return {
            "compile_s": [
                {"workload": "LIF", "loop": "scan", "T": 500, "s": compile_s, "graphs": 1}
            ],
            "new_T": [
                {"workload": "LIF", "T": t, "s": 1.0, "graphs": g}
                for t, g in ((500, 1), (300, 1), (700, graphs))
            ],
            "speed": [
                {"workload": "LIF", "T": 500, "eager_s": lif[0], "compiled_s": lif[1]},
                {"workload": "other", "T": 500, "eager_s": other[0], "compiled_s": other[1]},
            ],
        }

    assert compile_loop.report(result())[1]
    assert not compile_loop.report(result(compile_s=61.0))[1]
    assert not compile_loop.report(result(graphs=1))[1]
    assert not compile_loop.report(result(lif=(0.12, 0.05)))[1]
    assert (
        "| eager / compiled, other, T=500 | 0.33x | (no bound) |"
        in compile_loop.report(result())[0]
    )


def test_host_cost_excludes_the_kernel_and_restores_it():
    """`python -m benchmarks.host_cost` times the torch call with its kernel launch replaced
    by a no-op, and only while it times: afterwards the kernels run again and equal the
    loop."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    import dualstep as ds
    from benchmarks import host_cost
    from dualstep.fused import triton as fused_triton

    x, v = torch.full((4, 3), 1.5), torch.zeros(3)
    kernels = fused_triton._kernels(x, host_cost._lif, v, [v], True)
    with host_cost._without_kernels():
        assert isinstance(kernels.launch("fwd", x)[0], host_cost._NoLaunch)
        ds.multi_step_forward(x, host_cost._lif, state=v, fused=True)
    assert not isinstance(kernels.launch("fwd", x)[0], host_cost._NoLaunch)
    loop = ds.multi_step_forward(x, host_cost._lif, state=v)
    fused = ds.multi_step_forward(x, host_cost._lif, state=v, fused=True)
    for a, b in zip(fused, loop, strict=True):
        assert torch.equal(a, b)
    times = host_cost.torch_us(budget=0.05)
    assert set(times) == {"inference", "training", "torch.add", "bare Function"}
    assert all(t > 0 for t in times.values())


def test_port_benchmark_checks_then_times_three_systems():
    """`python -m benchmarks.port --quick`: the hand-written model and SpikingJelly are checked
    against the port (spikes, gradients) before timing; both ratios are reported."""
    for module in ("jax", "spikingjelly"):
        pytest.importorskip(module)
    out = _quick("benchmarks.port")
    for workload in ("forward (eval)", "training step"):
        assert f"port / by hand ({workload}, T=4, batch 4, 1x8x8): " in out.stdout
        assert re.search(
            rf"\| {re.escape(workload)} \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ ms", out.stdout
        )


def test_lengths_benchmark_checks_then_times_each_pair():
    """`python -m benchmarks.lengths --quick`: each pair is checked equal before timing, and
    every row reports its ratio against its bound, but the masked steps' cost, which has none."""
    for module in ("jax", "torch"):
        pytest.importorskip(module)
    out = _quick("benchmarks.lengths")
    rows = [line for line in out.stdout.splitlines() if line.startswith("| cost") or
            line.startswith("| saving")]  # fmt: skip
    assert len(rows) == 6
    masked = [r for r in rows if "lengths uniform in [T/4, T]" in r]
    assert len(masked) == 1 and re.search(r"\| [\d.]+ \| none \(masked steps\) \| - \|$", masked[0])
    bounded = [r for r in rows if r not in masked]
    assert all(re.search(r"\| [\d.]+ \| (<=|>=) 1\.[15] \| (met|not met) \|$", r) for r in bounded)


def test_export_benchmark_checks_then_times_each_pair():
    """`python -m benchmarks.export --quick`: the exported programs are checked equal to the
    eager calls before timing; torch's rows report, JAX's against the 1.05 bound."""
    for module in ("jax", "torch", "onnxruntime", "onnxscript", "flatbuffers"):
        pytest.importorskip(module)
    out = _quick("benchmarks.export")
    lines = out.stdout.splitlines()
    torch_rows = [line for line in lines if line.startswith("| torch, T=")]
    jax_rows = [line for line in lines if line.startswith("| JAX, T=")]
    assert len(torch_rows) == len(jax_rows) == 2
    assert all(re.search(r"\| [\d.]+ \| none \| - \|$", r) for r in torch_rows)
    assert all(re.search(r"\| [\d.]+ \| <= 1\.05 \| (met|not met) \|$", r) for r in jax_rows)
    assert any(line.startswith("| torch, sizes | ONNX file ") for line in lines)


def test_memory_figure_measures_checkpointing_below_the_loop():
    """Two points of `python -m benchmarks.memory_figure` (T = 256, each in its own process):
    checkpointed chunks peak well below the plain loop (0.35x measured)."""
    pytest.importorskip("torch")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak memory is read from Linux's /proc")
    from benchmarks.memory import measure

    peak = {k: measure("train_at", k, "256")["extra_peak_bytes"] for k in ("plain", "checkpointed")}
    assert 0 < peak["checkpointed"] < 0.6 * peak["plain"]

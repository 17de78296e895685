"""The time loop under torch.compile: `python -m benchmarks.compile_loop [--quick]`.

``torch.compile(fullgraph=True)`` of ``multi_step_forward(x, step, state=v0)``, forward +
backward of ``y.sum()`` with respect to the input sequence, one thread, float32,
``[T, 16, 512]``, on three workloads: the LIF step of ``benchmarks.training`` (a sigmoid
spike), and the Open Neuromorphic benchmark's Linear(512) then LIF, laid out as users write it
for speed (``seq_to_ann_forward`` for the Linear, then the LIF) and with the Linear inside the
step (where torch's `scan` saves the step's view of the weight at every step). Inductor's
caches are off, so every compile is cold. Measured in one run:

- compile time (the first call, which also runs once) at several T, of the loop lowered to one
  ``scan`` (the default) and, for contrast, of the loop traced step by step (``unroll=T``) at
  small T;
- what a new T costs after the first compile: torch's automatic dynamic shapes recompile once
  with T symbolic, after which no T recompiles (counted); ``dynamic=True`` compiles once;
- the compiled call against the eager loop, timed side by side, best of 5 interleaved rounds;
  values and gradients checked against the eager loop.

Writes ``benchmarks/results/compile_loop.md`` and ``compile_loop.json`` and prints the issue's
targets with the figures: compile under 60 s at T=500, a new T costs no recompile beyond the
one to dynamic shapes, compiled forward + backward at least 3x faster than eager.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import dualstep as ds

from .run import RESULTS, publish, time_side_by_side
from .training import B, N, lif


def _linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(N, N)


def _linear_in_step() -> Callable:
    linear = _linear()

    def step(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lif(linear(x), v)

    return step


def _call(step: Callable, unroll: int | None = None, before: Any = None) -> Callable:
    """The stateful call that is compiled. `before`: a stateless module applied to the whole
    sequence first (``seq_to_ann_forward``)."""

    def call(x: torch.Tensor, v0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if before is not None:
            x = ds.seq_to_ann_forward(x, before)
        y, v = ds.multi_step_forward(x, step, state=v0, unroll=unroll)
        return y, v

    return call


def _train(fn: Callable, x: torch.Tensor, v0: torch.Tensor) -> tuple[Any, Any]:
    """Forward + backward of ``fn(x, v0)``: the output and the input's gradient."""
    x.grad = None
    y, v = fn(x, v0)
    (y.sum() + v.sum()).backward()
    return y, x.grad


def _inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return (torch.rand(steps, B, N) * 2).requires_grad_(True), torch.zeros(B, N)


def _frames() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _first_call(fn: Callable, steps: int) -> tuple[float, int]:
    """Seconds of the first call at `steps` (compile and one run) and the graphs it made."""
    x, v0 = _inputs(steps)
    before = _frames()
    start = time.perf_counter()
    _train(fn, x, v0)
    return time.perf_counter() - start, _frames() - before


def _check_equal(call: Callable, fn: Callable, steps: int) -> None:
    x, v0 = _inputs(steps)
    want = [t.clone() for t in _train(call, x, v0)]
    got = _train(fn, x, v0)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def measure(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"compile_s": [], "new_T": [], "speed": []}
    lengths = (100, 500) if quick else (100, 500, 1000)
    workloads = {
        "LIF": _call(lif),
        "Linear(512) by seq_to_ann, then LIF": _call(lif, before=_linear()),
        "Linear(512) inside the LIF step": _call(_linear_in_step()),
    }
    for name, call in workloads.items():
        # Compile time against T, each a fresh compile with static shapes.
        for steps in lengths if name == "LIF" else (500,):
            torch._dynamo.reset()
            fn = torch.compile(call, fullgraph=True, dynamic=False)
            seconds, graphs = _first_call(fn, steps)
            _check_equal(call, fn, steps)
            out["compile_s"].append(
                {"workload": name, "loop": "scan", "T": steps, "s": seconds, "graphs": graphs}
            )
            print(f"{name}: scan, T={steps}: first call {seconds:.1f} s", flush=True)
        # A new T after the first compile (default dynamic=None), then more.
        torch._dynamo.reset()
        fn = torch.compile(call, fullgraph=True)
        for steps in (500, 300, 700, 1000) if name == "LIF" else ():
            seconds, graphs = _first_call(fn, steps)
            out["new_T"].append({"workload": name, "T": steps, "s": seconds, "graphs": graphs})
            print(f"{name}: new T={steps}: {seconds:.2f} s, {graphs} new graph(s)", flush=True)
        if name == "LIF":
            torch._dynamo.reset()
            fn_dynamic = torch.compile(call, fullgraph=True, dynamic=True)
            for steps in (500, 300, 700):
                seconds, graphs = _first_call(fn_dynamic, steps)
                out["new_T"].append(
                    {"workload": name, "T": steps, "s": seconds, "graphs": graphs, "dynamic": 1}
                )
        # Speed at T=500 against the eager loop.
        x, v0 = _inputs(500)
        fn = torch.compile(call, fullgraph=True, dynamic=False)
        calls = [functools.partial(_train, f, x, v0) for f in (call, fn)]
        eager, compiled = time_side_by_side(calls, 2.0 if quick else 6.0, 5)
        out["speed"].append({"workload": name, "T": 500, "eager_s": eager, "compiled_s": compiled})
        print(f"{name}: eager {eager * 1e3:.1f} ms, compiled {compiled * 1e3:.1f} ms", flush=True)
    # The loop traced step by step, for contrast: its compile grows with T.
    call = _call(lif, unroll=10**9)
    for steps in (16,) if quick else (16, 32, 64):
        torch._dynamo.reset()
        fn = torch.compile(call, fullgraph=True, dynamic=False)
        seconds, graphs = _first_call(fn, steps)
        out["compile_s"].append(
            {"workload": "LIF", "loop": "unrolled", "T": steps, "s": seconds, "graphs": graphs}
        )
        print(f"LIF: unrolled, T={steps}: first call {seconds:.1f} s", flush=True)
    return out


def report(out: dict[str, Any]) -> tuple[str, bool]:
    lines = [
        f"torch {torch.__version__}, {platform.machine()}, one thread, float32, [T, {B}, {N}], "
        "forward + backward, Inductor caches off (cold compiles)",
        "",
        "| target | figure | bound | met |",
        "|---|---|---|---|",
    ]
    ok = True
    cold = [r for r in out["compile_s"] if r["loop"] == "scan" and r["T"] == 500]
    for r in cold:
        met = r["s"] < 60
        ok &= met
        lines.append(f"| cold compile, {r['workload']}, T=500 | {r['s']:.1f} s | < 60 s | {met} |")
    later = [r for r in out["new_T"] if not r.get("dynamic")][2:]
    if later:
        graphs = sum(r["graphs"] for r in later)
        ok &= graphs == 0
        ts = ", ".join(str(r["T"]) for r in later)
        lines.append(
            f"| graphs compiled for T = {ts} after the first two | {graphs} | 0 | {graphs == 0} |"
        )
    for r in out["speed"]:
        ratio = r["eager_s"] / r["compiled_s"]
        if r["workload"] == "LIF":  # the target's workload: multi_step_forward of a neuron
            ok &= ratio >= 3
            bound, met = ">= 3x", str(ratio >= 3)
        else:
            bound, met = "(no bound)", ""
        lines.append(
            f"| eager / compiled, {r['workload']}, T=500 | {ratio:.2f}x | {bound} | {met} |"
        )
    lines += [
        "",
        "| loop | workload | T | first call (compile + run) | graphs |",
        "|---|---|---|---|---|",
    ]
    for r in out["compile_s"]:
        lines.append(
            f"| {r['loop']} | {r['workload']} | {r['T']} | {r['s']:.1f} s | {r['graphs']} |"
        )
    lines += ["", "| compile | T | first call at this T | new graphs |", "|---|---|---|---|"]
    for r in out["new_T"]:
        how = "dynamic=True" if r.get("dynamic") else "default (automatic dynamic)"
        lines.append(f"| {how} | {r['T']} | {r['s']:.2f} s | {r['graphs']} |")
    lines += ["", "| workload | T | eager ms | compiled ms |", "|---|---|---|---|"]
    for r in out["speed"]:
        eager, compiled = r["eager_s"] * 1e3, r["compiled_s"] * 1e3
        lines.append(f"| {r['workload']} | {r['T']} | {eager:.1f} | {compiled:.1f} |")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compile_loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer T, a short budget")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # Cold compiles: nothing from an earlier run's caches.
    torch.compiler.config.force_disable_caches = True
    out = measure(args.quick)
    text, ok = report(out)
    publish("compile_loop", text)
    (RESULTS / "compile_loop.json").write_text(
        json.dumps({**out, "quick": args.quick}, indent=1) + "\n"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

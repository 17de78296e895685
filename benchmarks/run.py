"""Run the benchmark suite: `python -m benchmarks [--quick] [--device cuda] [--out DIR]`.

Times every system of every workload side by side in one process, measures memory in fresh
subprocesses, and writes `bench.md` (tables and targets), `bench.json` (every figure) and
`bench.png` (time per call against size, one line per system) under `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import memory, systems

RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, text: str, *, write: bool = True) -> None:
    """Print a benchmark's markdown report and, with `write` (not for a ``--quick`` run),
    write it to ``results/<name>.md``."""
    print(text)
    if not write:
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text + "\n")


def _block(value: Any) -> Any:
    """Wait for asynchronous work (JAX dispatch, CUDA kernels) behind `value`."""
    if "jax" in sys.modules:
        import jax

        value = jax.block_until_ready(value)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
    return value


def time_side_by_side(
    fns: list[Callable[[], Any]],
    budget: float,
    rounds: int = 7,
    summary: Callable[[list[float]], float] = min,
    block_each: bool = True,
) -> list[float]:
    """Seconds per call of each function, timed in interleaved rounds (`summary` of the rounds,
    the best by default). With ``block_each=False`` a round waits for the device once, after
    its last call, rather than after every call (kernel time without a sync per call).

    Two warm-up calls first (they include any compilation); then each function gets a call
    count that fills its share of `budget`, and the rounds alternate between functions so that
    a noisy moment on the machine hits them all alike.
    """
    numbers = []
    for fn in fns:
        _block(fn())
        _block(fn())
        start = time.perf_counter()
        _block(fn())
        once = max(time.perf_counter() - start, 1e-7)
        numbers.append(max(1, int(budget / rounds / once)))
    seen: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, (fn, number) in enumerate(zip(fns, numbers, strict=True)):
            start = time.perf_counter()
            for _ in range(number):
                out = fn()
                if block_each:
                    _block(out)
            _block(out)
            seen[i].append((time.perf_counter() - start) / number)
    return [summary(times) for times in seen]


def dispatch_overhead_us(rounds: int = 40, number: int = 2000) -> dict:
    """Per-call overhead over a direct call, `seq_to_ann_forward(x, nn.Identity())` on a
    4x2x3 tensor: dualstep's public API, its backend function and SpikingJelly's function, each
    against ``Identity()(x.flatten(0, 1)).unflatten(0, (4, 2))``; medians of interleaved rounds
    (the machine's noise hits all alike)."""
    import statistics

    import torch

    import dualstep as ds
    from dualstep.backends import torch as backend

    x, m = torch.ones(4, 2, 3), torch.nn.Identity()
    timers = {
        "direct": timeit.Timer(lambda: m(x.flatten(0, 1)).unflatten(0, (4, 2))),
        "api": timeit.Timer(lambda: ds.seq_to_ann_forward(x, m)),
        "backend": timeit.Timer(lambda: backend.seq_to_ann_forward(x, m)),
    }
    sj = _sj_functional()
    if sj is not None:
        timers["spikingjelly"] = timeit.Timer(lambda: sj.seq_to_ann_forward(x, m))
    seen: dict[str, list] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            seen[name].append(timer.timeit(number) / number)
    median = {name: statistics.median(times) * 1e6 for name, times in seen.items()}
    out = {
        "api_us": median["api"],
        "backend_us": median["backend"],
        "direct_us": median["direct"],
        "overhead_us": median["api"] - median["direct"],
    }
    if "spikingjelly" in median:
        out["spikingjelly_overhead_us"] = median["spikingjelly"] - median["direct"]
    return out


def _sj_functional() -> Any:
    try:
        from spikingjelly.activation_based import functional
    except ImportError:
        return None
    return functional


def compile_matches_spikingjelly() -> bool | None:
    """torch.compile(fullgraph=True) of multi_step_forward with state= equals SJ's IFNode."""
    import torch

    import dualstep as ds

    try:
        from spikingjelly.activation_based import functional, neuron
    except ImportError:
        return None
    x = torch.randn(64, 32, 512) + 0.5
    compiled = torch.compile(
        lambda x, v: ds.multi_step_forward(x, systems.torch_if, state=v), fullgraph=True
    )
    ours, _ = compiled(x, torch.zeros(32, 512))
    node = neuron.IFNode(step_mode="s")
    return bool(torch.equal(ours, functional.multi_step_forward(x, node)))


def _label(size: tuple) -> str:
    return "x".join(map(str, size))


def run(
    quick: bool, device: str, progress: Callable[[str], None], compile_torch: bool = True
) -> dict:
    sizes = systems.QUICK_SIZES if quick else systems.SIZES
    chunk_sizes = systems.QUICK_CHUNK_SIZES if quick else systems.CHUNK_SIZES
    budget = 0.1 if quick else 0.5
    workloads: list[tuple[str, tuple, Callable[[], list]]] = []
    for size in sizes:
        for kind in ("if", "lif"):
            workloads.append(
                (
                    f"{kind.upper()} neuron",
                    size,
                    lambda k=kind, s=size: systems.neuron_systems(k, s, device, compile_torch),
                )
            )
        workloads.append(
            (
                "Linear then LIF",
                size,
                lambda s=size: systems.linear_lif_systems(s, device, compile_torch),
            )
        )
        workloads.append(
            (
                "seq_to_ann Linear",
                size,
                lambda s=size: systems.seq_to_ann_systems("linear", s, device),
            )
        )
        workloads.append(
            (
                "seq_to_ann Conv2d",
                size,
                lambda s=size: systems.seq_to_ann_systems("conv", s, device),
            )
        )
    for size in chunk_sizes:
        workloads.append(
            ("chunk inference (split 16)", size, lambda s=size: systems.chunk_systems(s, device))
        )

    rows = []
    for i, (workload, size, build) in enumerate(workloads, start=1):
        progress(f"[{i:>2}/{len(workloads)}] {workload} {_label(size)}")
        if "torch" in sys.modules:
            # Each workload compiles its own functions; dynamo's per-code recompile limit
            # would otherwise be reached by the same benchmark code over many sizes.
            sys.modules["torch"]._dynamo.reset()
        built = build()
        times = time_side_by_side([s.fn for s in built], budget * len(built))
        for system, seconds in zip(built, times, strict=True):
            rows.append(
                {
                    "workload": workload,
                    "size": list(size),
                    "system": system.name,
                    "framework": system.framework,
                    "seconds": seconds,
                }
            )
    progress("dispatch overhead")
    overhead = dispatch_overhead_us()
    progress("torch.compile against SpikingJelly")
    compile_equal = compile_matches_spikingjelly()
    mem: dict[str, Any] = {}
    if device == "cpu":
        for label, args in [
            ("chunk_inference_sj", ("chunk_inference", "sj")),
            ("chunk_inference_dualstep", ("chunk_inference", "dualstep")),
            ("train_torch_plain", ("train", "torch", "off")),
            ("train_torch_checkpoint", ("train", "torch", "on")),
            ("train_torch_plain_held", ("train", "torch", "off", "held")),
            ("train_torch_checkpoint_held", ("train", "torch", "on", "held")),
            ("train_jax_plain", ("train", "jax", "off")),
            ("train_jax_checkpoint", ("train", "jax", "on")),
            ("jax_chunk_temp_unchunked", ("jax_chunk_temp", "none")),
            *[(f"jax_chunk_temp_split{s}", ("jax_chunk_temp", str(s))) for s in (16, 64, 256)],
        ]:
            progress(f"memory: {label}")
            mem[label] = memory.measure(*args)
    return {
        "rows": rows,
        "dispatch": overhead,
        "compile_equals_spikingjelly": compile_equal,
        "memory": mem,
        "device": device,
        "quick": quick,
    }


def _time(rows: list, workload: str, size: tuple, system: str) -> float | None:
    for r in rows:
        if r["workload"] == workload and tuple(r["size"]) == tuple(size) and r["system"] == system:
            return r["seconds"]
    return None


REFERENCE = "(reference)"  # the bound of a figure quoted for comparison only


def met(value: float | None, bound: str) -> bool | None:
    """Whether `value` is within `bound` (``"<= 1.05"``, ``">= 10"``); None when not measured
    or for a reference figure."""
    if value is None or bound == REFERENCE:
        return None
    op, limit = bound.split()
    return value >= float(limit) if op == ">=" else value <= float(limit)


_MID, _SMALL = (64, 32, 512), (16, 8, 64)
# The timing ratios the docs quote ("Performance"): (label, numerator system, denominator
# system, sizes, bound, a result flag that must also be True or None), all on the IF neuron
# workload. A system that did not run reads n/a; a system outside systems.NAMES raises.
TIME_TARGETS = [
    (
        "1. torch module path / SpikingJelly multi_step_forward",
        "dualstep torch, module (SJ neuron)",
        "SpikingJelly multi_step_forward",
        [_MID],
        "<= 1.05",
        None,
    ),
    (
        "3. SpikingJelly IFNode loop / dualstep torch.compile, equal results",
        "SpikingJelly multi_step_forward",
        "dualstep torch.compile",
        [_MID],
        ">= 10",
        "compile_equals_spikingjelly",
    ),
    (
        "4a. dualstep JAX in jit / hand-written scan",
        "dualstep JAX in jit",
        "hand-written jit(lax.scan)",
        systems.SIZES,
        "<= 1.05",
        None,
    ),
    (
        "4b. dualstep JAX eager / hand-written scan",
        "dualstep JAX eager",
        "hand-written jit(lax.scan)",
        systems.SIZES,
        "<= 1.2",
        None,
    ),
    (
        "4c. JAX Python loop / dualstep JAX eager",
        "JAX Python loop",
        "dualstep JAX eager",
        [_SMALL],
        ">= 20",
        None,
    ),
]


def targets(result: dict) -> list[dict]:
    """The figures the docs quote ("Performance"), each as (figure, bound, met)."""
    rows, out = result["rows"], []
    run_sizes = systems.QUICK_SIZES if result.get("quick") else systems.SIZES

    def add(name: str, value: float | None, bound: str, flag: str | None = None) -> None:
        """One figure; with `flag`, the result's flag must also be True for it to be met."""
        ok = met(value, bound)
        if ok and flag is not None:
            ok = result.get(flag) is True
        out.append({"target": name, "value": value, "bound": bound, "met": ok})

    for label, num, den, sizes, bound, flag in TIME_TARGETS:
        for name in (num, den):
            if name not in systems.NAMES:
                raise KeyError(f"target {label!r} names system {name!r}, which systems.NAMES lacks")
        for size in [s for s in sizes if s in run_sizes]:
            a, b = _time(rows, "IF neuron", size, num), _time(rows, "IF neuron", size, den)
            value = None if a is None or b is None else a / b
            add(f"{label} (IF, {_label(size)})", value, bound, flag)
    o = result["dispatch"]["overhead_us"]
    add("2. dispatch overhead over a direct call, microseconds", o, "<= 2")
    sj_o = result["dispatch"].get("spikingjelly_overhead_us")
    add(
        "2b. dispatch overhead, dualstep - SpikingJelly's seq_to_ann_forward, microseconds",
        None if sj_o is None else o - sj_o,
        "<= 0",
    )
    big = (256, 64, 1024)
    copy_t = _time(rows, "IF neuron", big, "memory copy")
    if copy_t is not None:
        best = min(
            (
                row
                for row in rows
                if row["workload"] == "IF neuron"
                and tuple(row["size"]) == big
                and row["system"].startswith("dualstep")
            ),
            key=lambda row: row["seconds"],
        )
        frac = copy_t / best["seconds"]
        add(
            f"5. fraction of copy bandwidth, best dualstep path "
            f"({best['system']}, IF, 256x64x1024)",
            frac,
            ">= 0.5",
        )
    mem = result["memory"]
    if mem:
        sj, ours = mem["chunk_inference_sj"], mem["chunk_inference_dualstep"]
        r = ours["extra_peak_bytes"] / ours["output_bytes"]
        add(
            "6a. chunked inference extra peak / output bytes, dualstep torch",
            r,
            "<= 1.25",
        )
        add(
            "6b. chunked inference extra peak / output bytes, SpikingJelly",
            sj["extra_peak_bytes"] / sj["output_bytes"],
            REFERENCE,
        )
        r = (
            mem["jax_chunk_temp_split16"]["temp_bytes"]
            / mem["jax_chunk_temp_unchunked"]["temp_bytes"]
        )
        add("6c. JAX chunked MLP temp memory, split 16 / unchunked", r, "<= 0.125")
        r = (
            mem["train_torch_checkpoint"]["extra_peak_bytes"]
            / mem["train_torch_plain"]["extra_peak_bytes"]
        )
        add("7a. training peak memory, checkpoint / plain, torch", r, "<= 0.25")
        r = (
            mem["train_torch_checkpoint_held"]["extra_peak_bytes"]
            / mem["train_torch_plain_held"]["extra_peak_bytes"]
        )
        add(
            "7a'. the same with the output held through backward, torch",
            r,
            "<= 0.25",
        )
        r = mem["train_jax_checkpoint"]["temp_bytes"] / mem["train_jax_plain"]["temp_bytes"]
        add("7b. training temp memory, checkpoint / plain, JAX", r, "<= 0.25")
    return sorted(out, key=lambda t: t["target"].split(".")[0])


def markdown(result: dict, target_rows: list[dict]) -> str:
    rows = result["rows"]
    lines = [
        f"# dualstep benchmarks ({result['device']}{', quick' if result['quick'] else ''})",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'unknown CPU'}; "
        f"Python {platform.python_version()}. Times per call are the best of 7 interleaved "
        "rounds; ratios compare systems measured in the same rounds.",
        "",
        "## Targets",
        "",
        "| target | figure | bound | met |",
        "|---|---|---|---|",
    ]
    for t in target_rows:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {value} | {t['bound']} | {met} |")
    d = result["dispatch"]
    lines += [
        "",
        f"Dispatch (`seq_to_ann_forward`, Identity, 4x2x3; medians): public API "
        f"{d['api_us']:.2f} us, backend function {d['backend_us']:.2f} us, direct call "
        f"{d['direct_us']:.2f} us per call.",
        "",
        "A `-` is a system not run at that size: SpikingJelly's neurons under torch.compile run "
        f"up to T={systems.SJ_COMPILE_MAX_T} (Inductor's compile time of the unrolled LIFNode "
        "passed 15 minutes at T=256).",
        "",
    ]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        sizes = list(dict.fromkeys(tuple(r["size"]) for r in rows if r["workload"] == workload))
        names = list(dict.fromkeys(r["system"] for r in rows if r["workload"] == workload))
        lines += [
            f"## {workload}",
            "",
            "time per call in ms (and as a multiple of the memory copy)",
            "",
            "| system | " + " | ".join(_label(s) for s in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for name in names:
            cells = []
            for s in sizes:
                t, c = _time(rows, workload, s, name), _time(rows, workload, s, "memory copy")
                cells.append(
                    "-" if t is None else f"{t * 1e3:.3f} ({t / c:.1f}x)" if c else f"{t * 1e3:.3f}"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    cols = 3
    fig, axes = plt.subplots(
        (len(workloads) + cols - 1) // cols,
        cols,
        figsize=(6 * cols, 4.5 * ((len(workloads) + cols - 1) // cols)),
        squeeze=False,
    )
    for ax, workload in zip(axes.flat, workloads, strict=False):
        sub = [r for r in rows if r["workload"] == workload]
        for name in dict.fromkeys(r["system"] for r in sub):
            pts = sorted(
                (r["size"][0] * r["size"][1] * r["size"][2], r["seconds"], r["size"])
                for r in sub
                if r["system"] == name
            )
            style = "k--" if name == "memory copy" else "-o"
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], style, label=name, markersize=4)
        ticks = sorted(
            {(r["size"][0] * r["size"][1] * r["size"][2], _label(r["size"])) for r in sub}
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks])
        ax.minorticks_off()
        ax.set_title(workload)
        ax.set_xlabel("T x B x N")
        ax.set_ylabel("ms per call (log)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="two sizes, short timings")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="leave out the torch.compile systems (their compiles dominate a short GPU run)",
    )
    args = parser.parse_args(argv)
    started = time.time()

    def progress(message: str) -> None:
        print(f"{time.time() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    result = run(args.quick, args.device, progress, compile_torch=not args.no_compile)
    target_rows = targets(result)
    result["targets"] = target_rows
    args.out.mkdir(parents=True, exist_ok=True)
    name = "bench" if args.device == "cpu" else f"bench-{args.device}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    text = markdown(result, target_rows)
    (args.out / f"{name}.md").write_text(text)
    plotted = plot(result, args.out / f"{name}.png")
    print(text)
    print(
        f"\nwrote {args.out / name}.md, .json{', .png' if plotted else ' (no matplotlib: no plot)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

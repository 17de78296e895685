"""Memory against T for a torch training step: `python -m benchmarks.memory_figure [--quick]`.

The training workload of ``benchmarks/memory.py`` (Linear 256 -> 256, then a smooth LIF, batch
32, float32; one forward and backward) at several sequence lengths, each point in a fresh
process, peak resident memory above the start (VmHWM): the plain loop, chunks of 32 steps, and
checkpointed chunks. The loop and the chunks keep every step's activations for the backward
pass, so both grow with T (the chunks a little more: their outputs are concatenated);
checkpointing keeps the outputs and one chunk's activations. Writes
``benchmarks/results/memory_vs_T.md`` and ``memory_vs_T.png``.
"""

from __future__ import annotations

import argparse
import sys

from .memory import TRAIN_SHAPE, TRAIN_SPLIT, measure
from .run import RESULTS, publish

KINDS = {
    "plain": "one loop (multi_step_forward)",
    "chunked": f"chunks of {TRAIN_SPLIT} steps",
    "checkpointed": f"checkpointed chunks of {TRAIN_SPLIT}",
}


def sweep(steps: list[int]) -> dict[str, list[float]]:
    """MiB of peak extra memory per kind, one entry per T."""
    return {
        kind: [measure("train_at", kind, str(t))["extra_peak_bytes"] / 2**20 for t in steps]
        for kind in KINDS
    }


def plot(steps: list[int], found: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ax = Figure(figsize=(6.4, 3.6), layout="constrained").add_subplot()
    for kind, label in KINDS.items():
        ax.plot(steps, found[kind], marker="o", label=label)
    _, b, n = TRAIN_SHAPE
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("peak extra memory (MiB)")
    ax.set_title(f"torch, one training step: Linear {n} -> LIF, batch {b}, float32", fontsize=9)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_figure", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="two short lengths, no files")
    args = parser.parse_args(argv)
    steps = [64, 128] if args.quick else [128, 256, 512, 1024, 2048]
    found = sweep(steps)
    lines = [
        "# Peak memory of one torch training step against T (MiB above the start)",
        "",
        "Each point in a fresh process; `python -m benchmarks.memory_figure`",
        "",
        "| T | " + " | ".join(KINDS.values()) + " |",
        "|---|" + "---|" * len(KINDS),
    ]
    for i, t in enumerate(steps):
        lines.append(f"| {t} | " + " | ".join(f"{found[k][i]:.0f}" for k in KINDS) + " |")
    text = "\n".join(lines)
    if args.quick:
        print(text)
        return 0
    publish("memory_vs_T", text)
    try:
        plot(steps, found, str(RESULTS / "memory_vs_T.png"))
    except ImportError:
        print("no matplotlib: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training on torch, forward + backward against T: `python -m benchmarks.training [--quick]`.

One thread, float32, ``[T, 16, 512]``, the gradient of ``y.sum()`` with respect to the input
sequence (which requires grad, as a previous layer's output does). Timed side by side in
interleaved rounds, best round each:

- a LIF step with a sigmoid spike, ``step(x, v) -> (s, v)``: dualstep's stateful loop
  ``multi_step_forward(x, step, state=v0)``, chunked (``chunk_multi_step_forward`` with split
  1 and 8, each chunk a stateful ``multi_step_forward``), and a hand-written loop over
  ``x.unbind(0)`` (the baseline of every ratio);
- SpikingJelly's ``LIFNode``: in step mode 's' through dualstep's ``multi_step_forward`` and
  through SpikingJelly's ``functional.multi_step_forward`` (outputs and gradients checked
  bit-identical), and SpikingJelly's multi-step ``LIFNode(step_mode="m")``;
- the Open Neuromorphic benchmark's workload at T=500: Linear(512) then LIF, through
  ``seq_to_ann_forward`` for the Linear and ``multi_step_forward`` for a ``LIFNode(step_mode=
  "s")``, against SpikingJelly's multi-step network (``layer.Linear`` and ``LIFNode`` in step
  mode 'm'); outputs checked equal.

SpikingJelly's ``functional.multi_step_forward`` is quadratic in T; it is timed up to T=400.
Writes ``benchmarks/results/training.md``, ``training.json`` and ``training.png`` (time
against T, one line per system) and prints the targets of the docs ("Performance") with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
from collections.abc import Callable
from typing import Any

import torch

import dualstep as ds

from .run import RESULTS, time_side_by_side

B, N = 16, 512
SJ_FUNCTIONAL_UP_TO = 400


def lif(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = v + (x - v) * 0.5
    s = torch.sigmoid(4.0 * (v - 1.0))
    return s, v * (1.0 - s)


def _chunk(xc: torch.Tensor, v: torch.Tensor) -> Any:
    return ds.multi_step_forward(xc, lif, state=v)


def _hand(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    ys = []
    for xt in x.unbind(0):
        y, v = lif(xt, v)
        ys.append(y)
    return torch.stack(ys)


def _train(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable:
    """One forward + backward of ``forward(x).sum()``, the input's gradient cleared first."""

    def call() -> torch.Tensor:
        x.grad = None
        y = forward(x)
        y.sum().backward()
        return y

    return call


def loop_systems(steps: int) -> dict[str, Callable]:
    torch.manual_seed(0)
    x = (torch.rand(steps, B, N) * 2).requires_grad_(True)
    v0 = torch.zeros(B, N)
    systems = {
        "hand unbind loop": _train(lambda x: _hand(x, v0), x),
        "dualstep state=": _train(lambda x: ds.multi_step_forward(x, lif, state=v0)[0], x),
        "dualstep chunk 1": _train(
            lambda x: ds.chunk_multi_step_forward(1, x, _chunk, state=v0)[0], x
        ),
        "dualstep chunk 8": _train(
            lambda x: ds.chunk_multi_step_forward(8, x, _chunk, state=v0)[0], x
        ),
    }
    want, grad = _result(systems["hand unbind loop"], x)
    for name, fn in systems.items():
        got, got_grad = _result(fn, x)
        assert torch.equal(got, want) and torch.equal(got_grad, grad), name
    return systems


def _result(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = fn()
    return y.detach().clone(), x.grad.clone()


def spikingjelly_systems(steps: int) -> dict[str, Callable]:
    """SpikingJelly's LIFNode three ways; empty without SpikingJelly."""
    try:
        from spikingjelly.activation_based import functional, neuron
    except ImportError:
        return {}
    torch.manual_seed(0)
    x = (torch.rand(steps, B, N) * 2).requires_grad_(True)
    single = neuron.LIFNode(step_mode="s")
    twin = copy.deepcopy(single)
    multi = neuron.LIFNode(step_mode="m")

    def reset_then(net: torch.nn.Module, forward: Callable) -> Callable:
        def run(x: torch.Tensor) -> torch.Tensor:
            functional.reset_net(net)
            return forward(x)

        return run

    systems = {
        "dualstep, SJ LIFNode 's'": _train(
            reset_then(single, lambda x: ds.multi_step_forward(x, single)), x
        ),
        "SJ LIFNode 'm'": _train(reset_then(multi, multi), x),
    }
    if steps <= SJ_FUNCTIONAL_UP_TO:
        systems["SJ functional.multi_step_forward"] = _train(
            reset_then(twin, lambda x: functional.multi_step_forward(x, twin)), x
        )
        ours, theirs = (
            _result(systems[k], x)
            for k in ("dualstep, SJ LIFNode 's'", "SJ functional.multi_step_forward")
        )
        assert all(map(torch.equal, ours, theirs)), "not bit-identical to SpikingJelly"
    return systems


def open_neuromorphic_systems(steps: int = 500) -> dict[str, Callable]:
    """Linear(512) then LIF, batch 16: dualstep's layout (the LIF as a step function with
    SpikingJelly's equations and surrogate, and as SpikingJelly's own single-step LIFNode)
    against SpikingJelly's multi-step network. Outputs checked bit-identical, the Linear's
    weight gradient too through the LIFNode, and to 1e-5 of its largest entry through the step
    function (autograd orders the ops otherwise than SpikingJelly's hand-written backward)."""
    try:
        from spikingjelly.activation_based import functional, layer, neuron, surrogate
    except ImportError:
        return {}
    torch.manual_seed(0)
    x = torch.rand(steps, B, N)
    linear, lif_node = torch.nn.Linear(N, N), neuron.LIFNode(step_mode="s")
    theirs = torch.nn.Sequential(layer.Linear(N, N, step_mode="m"), neuron.LIFNode(step_mode="m"))
    theirs[0].load_state_dict(linear.state_dict())
    spike, v0 = surrogate.Sigmoid(), torch.zeros(B, N)

    def sj_lif(h: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # LIFNode's defaults as one step: tau 2, decay_input, v_threshold 1, hard reset to 0.
        v = v + (h - v) / 2.0
        s = spike(v - 1.0)
        return s, (1.0 - s) * v

    def step_function(x: torch.Tensor) -> torch.Tensor:
        return ds.multi_step_forward(ds.seq_to_ann_forward(x, linear), sj_lif, state=v0)[0]

    def module(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(lif_node)
        return ds.multi_step_forward(ds.seq_to_ann_forward(x, linear), lif_node)

    def spikingjelly(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(theirs)
        return theirs(x)

    def train(forward: Callable, net: torch.nn.Module) -> Callable:
        def call() -> tuple[torch.Tensor, torch.Tensor]:
            net.zero_grad()
            y = forward(x)
            y.sum().backward()
            return y, net.weight.grad

        return call

    systems = {
        "dualstep seq_to_ann + multi_step, LIF step": train(step_function, linear),
        "dualstep seq_to_ann + multi_step, SJ LIFNode 's'": train(module, linear),
        "SJ multi-step network": train(spikingjelly, theirs[0]),
    }
    want_y, want_grad = (t.clone() for t in systems["SJ multi-step network"]())
    for name, fn in systems.items():
        y, grad = fn()
        assert torch.equal(y, want_y), name
        if name.endswith("LIF step"):  # autograd's order of ops, not SJ's hand-written backward
            scale = float(want_grad.abs().max())
            torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5 * scale)
        else:
            assert torch.equal(grad, want_grad), name
    return systems


TARGETS = [
    # (what, numerator system, denominator system, workload T, bound)
    ("stateful loop / hand loop", "dualstep state=", "hand unbind loop", (100, 400, 1000), 1.1),
    ("chunk 1 / unchunked loop", "dualstep chunk 1", "dualstep state=", (400,), 1.2),
    ("chunk 8 / unchunked loop", "dualstep chunk 8", "dualstep state=", (400,), 1.2),
    (
        "dualstep SJ module path / SJ functional (at most 1/3)",
        "dualstep, SJ LIFNode 's'",
        "SJ functional.multi_step_forward",
        (400,),
        1 / 3,
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="T = 100 and 400, a short budget")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lengths = (100, 400) if args.quick else (100, 200, 400, 1000)
    budget = 1.0 if args.quick else 4.0
    rows = []
    for steps in lengths:
        systems = {**loop_systems(steps), **spikingjelly_systems(steps)}
        times = time_side_by_side(list(systems.values()), budget, rounds=5)
        rows += [
            {"workload": "LIF", "T": steps, "system": k, "seconds": t}
            for k, t in zip(systems, times, strict=True)
        ]
        print(
            f"T={steps}: "
            + ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in zip(systems, times, strict=True)),
            flush=True,
        )
    onm = open_neuromorphic_systems()
    if onm:
        times = time_side_by_side(list(onm.values()), budget, rounds=5)
        rows += [
            {"workload": "Open Neuromorphic", "T": 500, "system": k, "seconds": t}
            for k, t in zip(onm, times, strict=True)
        ]
    found = {(r["workload"], r["T"], r["system"]): r["seconds"] for r in rows}
    lines = [
        f"torch {torch.__version__}, {platform.machine()}, one thread, float32, [T, {B}, {N}], "
        "forward + backward, best of 5 interleaved rounds",
        "",
        "| target | T | ratio | bound | met |",
        "|---|---|---|---|---|",
    ]
    ok = True
    for what, num, den, ts, bound in TARGETS:
        for t in ts:
            if ("LIF", t, num) in found and ("LIF", t, den) in found:
                ratio = found["LIF", t, num] / found["LIF", t, den]
                ok &= ratio <= bound
                lines.append(f"| {what} | {t} | {ratio:.2f} | {bound:.2f} | {ratio <= bound} |")
    for name in list(onm)[:2]:
        ratio = (
            found["Open Neuromorphic", 500, name]
            / found["Open Neuromorphic", 500, "SJ multi-step network"]
        )
        if name.endswith("LIF step"):
            ok &= ratio <= 1.0
        met = ratio <= 1.0 if name.endswith("LIF step") else "(no bound)"
        lines.append(
            f"| Open Neuromorphic (Linear 512 + LIF), {name} / SJ multi-step network | 500 "
            f"| {ratio:.2f} | 1.00 | {met} |"
        )
    lines += ["", "| workload | T | system | ms | / hand loop |", "|---|---|---|---|---|"]
    for r in rows:
        hand = found.get((r["workload"], r["T"], "hand unbind loop"))
        rel = f"{r['seconds'] / hand:.2f}" if hand else ""
        lines.append(
            f"| {r['workload']} | {r['T']} | {r['system']} | {r['seconds'] * 1e3:.1f} | {rel} |"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.md").write_text(text + "\n")
    (RESULTS / "training.json").write_text(
        json.dumps({"rows": rows, "quick": args.quick}, indent=1) + "\n"
    )
    _plot(rows)
    return 0 if ok else 1


def _plot(rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["system"] for r in rows if r["workload"] == "LIF"):
        pts = sorted(
            (r["T"], r["seconds"]) for r in rows if r["system"] == name and r["workload"] == "LIF"
        )
        ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], "-o", label=name, markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("T")
    ax.set_ylabel("ms per forward + backward (log)")
    ax.set_title(f"LIF, [T, {B}, {N}], one thread")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "training.png", dpi=90)


if __name__ == "__main__":
    sys.exit(main())

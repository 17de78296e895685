"""What the fused Triton kernels would do on an H100/H200, modelled without a GPU:
`python -m benchmarks.gpu_model`.

Each kernel of the GPU benchmark's workloads (IF and LIF forward for inference, LIF with a
sigmoid surrogate for training: forward and backward) is built at each benchmark size with
the launch a fused call picks there (``dualstep.fused.gpu_launch``, for a 132-SM card) and
compiled for sm_90 on this CPU machine; ``ptxas -v`` (shipped in the triton wheel) gives its
registers and spills. Per size it then reports the launch, the programs per SM, how many of
them an SM can hold at once (by registers, warps and its 32-program limit), the bytes each
step moves against the minimum (one read of ``x[t]`` and one write of each output; training
also writes the state saved for backward, as SpikingJelly's kernel does), and the loads in
flight while a step computes: steps per program, and bytes per SM with every program an SM
holds loading. Nothing runs on a GPU: these are the compiled kernels' figures, not
measurements. Writes ``benchmarks/results/gpu_model.md``.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import torch

from dualstep.fused import GPU
from dualstep.fused import triton as fused_triton
from dualstep.testing import surrogate_spike

from .gpu import FORWARD_SIZES, TRAIN_SIZES
from .run import RESULTS

CC = 90
# An SM of sm_90 (H100, H200): 64K registers, 64 warps, 32 programs at most.
SM = {"registers": 65536, "warps": 64, "programs": 32}


def _if(x, v):
    h = v + x
    s = (h >= 1.0).to(x.dtype)
    return s, h * (1.0 - s)


def _lif(x, v):
    h = v + (x - v) / 2.0
    s = (h >= 1.0).to(x.dtype)
    return s, h * (1.0 - s)


_SPIKE = surrogate_spike("torch")


def _lif_surrogate(x, v):
    h = v + (x - v) / 2.0
    s = _SPIKE(h - 1.0)
    return s, h * (1.0 - s)


def _kernels(step: Any, grad: bool, t: int, n: int) -> list:
    """The kernels, with their launches, that a fused call of `step` makes over `t` steps of
    `n` float32 elements on a GPU (one state array)."""
    x = torch.empty(t, n, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        return fused_triton.gpu_kernels(x, step, torch.zeros(n))


def _per_step(params: list[str], name: str, grad: bool) -> tuple[int, int, int]:
    """Arrays one time step reads and writes in the kernel, the fewest it could (forward: x
    read, each output written, and with gradients the saved state, as SpikingJelly's kernel
    saves it; backward: the saved state and the output gradients read, x's gradient written),
    and the arrays it loads per step. From the kernel's parameters."""
    count = {
        kind: sum(re.fullmatch(rf"{kind}\d+_ptr", p) is not None for p in params)
        for kind in ("y", "saved", "gy")
    }
    if name == "fwd":
        moved = 1 + count["y"] + (count["saved"] if grad else 0)
        return moved, moved, 1
    loads = 1 + count["saved"] + count["gy"]
    return loads + 1, loads, loads


def _resident(registers: int, warps: int) -> int:
    """Programs an SM holds at once."""
    by_registers = SM["registers"] // (registers * 32 * warps)
    return min(SM["programs"], SM["warps"] // warps, by_registers)


def measure() -> list[dict]:
    rows = []
    workloads = [
        ("IF, inference", _if, False, FORWARD_SIZES),
        ("LIF, inference", _lif, False, FORWARD_SIZES),
        ("LIF + surrogate, training", _lif_surrogate, True, TRAIN_SIZES),
    ]
    sms = int(GPU["sms"])
    for label, step, grad, sizes in workloads:
        for t, b, n in sizes:
            elements = b * n
            for kernel, launch in _kernels(step, grad, t, elements):
                name = kernel.fn.__name__
                compiled = fused_triton.compile_ahead(kernel, launch, torch.float32, CC)
                registers, spills = fused_triton.registers_and_spills(compiled)
                moved, minimum, loads = _per_step(kernel.arg_names, name, grad)
                programs = math.ceil(elements / launch["block"])
                loading = min(programs / sms, _resident(registers, launch["num_warps"]))
                rows.append(
                    {
                        "workload": label,
                        "kernel": name,
                        "size": f"{t}x{b}x{n}",
                        **launch,
                        "programs": programs,
                        "programs_per_sm": programs / sms,
                        "resident_per_sm": _resident(registers, launch["num_warps"]),
                        "registers": registers,
                        "spill_bytes": spills,
                        "bytes_per_step": moved * elements * 4,
                        "minimum_bytes_per_step": minimum * elements * 4,
                        "steps_in_flight": launch["unroll"],
                        "kb_in_flight_per_sm": loading
                        * launch["block"]
                        * launch["unroll"]
                        * loads
                        * 4
                        / 1024,
                    }
                )
    return rows


def main() -> int:
    rows = measure()
    lines = [
        f"Modelled, not measured: kernels compiled for sm_{CC} on CPU with the launch "
        f"`dualstep.fused.gpu_launch` picks for {GPU['sms']} SMs, float32. Minimum bytes per "
        "step: inference x read and y written; training forward also the saved state written; "
        "backward the saved state and the output gradient read, x's gradient written. In "
        "flight: steps' loads per program, and KB per SM with as many programs loading as it "
        "holds (or has).",
        "",
        "| workload | kernel | T x B x N | block | warps | programs | per SM | SM holds "
        "| registers | spills (B) | bytes per step / minimum | steps in flight | KB in flight "
        "per SM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['kernel']} | {r['size']} | {r['block']} "
            f"| {r['num_warps']} | {r['programs']} | {r['programs_per_sm']:.2f} "
            f"| {r['resident_per_sm']} | {r['registers']} | {r['spill_bytes']} "
            f"| {r['bytes_per_step'] / r['minimum_bytes_per_step']:.2f} "
            f"| {r['steps_in_flight']} | {r['kb_in_flight_per_sm']:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_model.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

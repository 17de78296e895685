"""What the fused Triton kernels would do on an H100/H200, modelled without a GPU:
`python -m benchmarks.gpu_model`.

Each kernel of the GPU benchmark's workloads (IF and LIF forward for inference, LIF with a
sigmoid surrogate for training: forward and backward) is generated with the GPU launch
(``dualstep.fused.LAUNCH``) and compiled for sm_90 on this CPU machine; ``ptxas -v`` (shipped
in the triton wheel) gives its registers and spills. Per benchmark size it then reports the
programs per SM of a 132-SM card, the bytes each step moves against the minimum (one read of
``x[t]`` and one write of each output; training also writes the state saved for backward, as
SpikingJelly's kernel does), and the loads of later steps in flight while a step computes.
Nothing runs on a GPU: these are the compiled kernels' figures, not measurements.
Writes ``benchmarks/results/gpu_model.md``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from dualstep.fused import LAUNCH
from dualstep.fused import triton as fused_triton
from dualstep.testing import surrogate_spike

from .gpu import FORWARD_SIZES, TRAIN_SIZES
from .run import RESULTS

SMS = 132  # H100 SXM and H200
CC = 90


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


def _kernels(step: Any, grad: bool) -> list:
    """The kernels a fused call of `step` builds with the GPU launch (one float32 state)."""
    x = torch.rand(3, 8, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        return fused_triton.gpu_kernels(x, step, torch.zeros(8))


def _ptxas(ptx: str) -> tuple[int, int]:
    """Registers per thread and spill bytes (stores + loads) of one compiled PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(CC).path  # the one Triton compiles with
    target = re.search(r"\.target (sm_\w+)", ptx).group(1)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        out = subprocess.run(
            [ptxas, "-v", f"--gpu-name={target}", str(path), "-o", str(Path(tmp) / "k.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    registers = int(re.search(r"Used (\d+) registers", out).group(1))  # type: ignore[union-attr]
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill", out))
    return registers, spills


def _per_step(params: list[str], name: str, grad: bool) -> tuple[int, int, int]:
    """Arrays one time step reads and writes in the kernel, the fewest it could (forward: x
    read, each output written, and with gradients the saved state, as SpikingJelly's kernel
    saves it; backward: the saved state and the output gradients read, x's gradient written),
    and the steps whose loads are issued together. From the kernel's parameters."""
    count = {
        kind: sum(re.fullmatch(rf"{kind}\d+_ptr", p) is not None for p in params)
        for kind in ("y", "saved", "gy")
    }
    if name == "fwd":
        moved = 1 + count["y"] + (count["saved"] if grad else 0)
        return moved, moved, LAUNCH["unroll"]
    return 2 + count["saved"] + count["gy"], 1 + count["saved"] + count["gy"], 1


def measure() -> list[dict]:
    rows = []
    workloads = [
        ("IF, inference", _if, False, FORWARD_SIZES),
        ("LIF, inference", _lif, False, FORWARD_SIZES),
        ("LIF + surrogate, training", _lif_surrogate, True, TRAIN_SIZES),
    ]
    for label, step, grad, sizes in workloads:
        for kernel in _kernels(step, grad):
            name = kernel.fn.__name__
            compiled = fused_triton.compile_ahead(kernel, torch.float32, CC)
            registers, spills = _ptxas(compiled.asm["ptx"])
            moved, minimum, in_flight = _per_step(kernel.arg_names, name, grad)
            for t, b, n in sizes:
                elements = b * n
                programs = math.ceil(elements / LAUNCH["block"])
                rows.append(
                    {
                        "workload": label,
                        "kernel": name,
                        "size": f"{t}x{b}x{n}",
                        "programs": programs,
                        "programs_per_sm": programs / SMS,
                        "registers": registers,
                        "spill_bytes": spills,
                        "bytes_per_step": moved * elements * 4,
                        "minimum_bytes_per_step": minimum * elements * 4,
                        "steps_in_flight": in_flight,
                    }
                )
    return rows


def main() -> int:
    rows = measure()
    lines = [
        f"Modelled, not measured: kernels compiled for sm_{CC} on CPU with LAUNCH = {LAUNCH}, "
        f"{SMS} SMs, float32. Minimum bytes per step: inference x read and y written; training "
        "forward also the saved state written; backward the saved state and the output "
        "gradient read, x's gradient written.",
        "",
        "| workload | kernel | T x B x N | programs | per SM | registers | spills (B) "
        "| bytes per step / minimum | steps' loads in flight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['kernel']} | {r['size']} | {r['programs']} "
            f"| {r['programs_per_sm']:.2f} | {r['registers']} | {r['spill_bytes']} "
            f"| {r['bytes_per_step'] / r['minimum_bytes_per_step']:.2f} | {r['steps_in_flight']} |"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_model.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the fused Triton kernels would do on an H100/H200, modelled without a GPU:
`python -m benchmarks.gpu_model`.

Each kernel of the GPU benchmark's workloads (IF and LIF forward for inference, LIF with a
sigmoid surrogate for training: forward and backward), on torch and on JAX, is built at each
benchmark size with the launch a fused call picks there (``dualstep.fused.gpu_launch``, for a
132-SM card) and compiled for sm_90 on this CPU machine: torch's Triton kernels, and the
Triton modules Pallas lowers JAX's calls to, compiled by the installed triton (on a GPU XLA
compiles those itself). ``ptxas -v`` (shipped in the triton wheel) gives their registers and
spills. Per size it then reports the launch, the programs per SM, how many of
them an SM can hold at once (by registers, warps and its 32-program limit), the bytes each
step moves against the minimum (one read of ``x[t]`` and one write of each output; training
also saves one array for the backward kernel, as SpikingJelly's kernel does), and the loads in
flight while a step computes: steps per program, and bytes per SM with every program an SM
holds loading. Nothing runs on a GPU: these are the compiled kernels' figures, not
measurements. Writes ``benchmarks/results/gpu_model.md``.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from dualstep.fused import GPU
from dualstep.fused import triton as fused_triton
from dualstep.testing import surrogate_spike

from .gpu import FORWARD_SIZES, TRAIN_SIZES
from .run import publish

CC = 90
# An SM of sm_90 (H100, H200): 64K registers, 64 warps, 32 programs at most.
SM = {"registers": 65536, "warps": 64, "programs": 32}


def _steps(backend: str) -> dict:
    """The workloads' steps written for `backend`: IF, LIF, LIF with a sigmoid surrogate."""
    spike = surrogate_spike(backend)

    def cast(s, x):
        return s.to(x.dtype) if backend == "torch" else s.astype(x.dtype)

    def if_(x, v):
        h = v + x
        s = cast(h >= 1.0, x)
        return s, h * (1.0 - s)

    def lif(x, v):
        h = v + (x - v) / 2.0
        s = cast(h >= 1.0, x)
        return s, h * (1.0 - s)

    def lif_surrogate(x, v):
        h = v + (x - v) / 2.0
        s = spike(h - 1.0)
        return s, h * (1.0 - s)

    return {"IF": if_, "LIF": lif, "LIF + surrogate": lif_surrogate}


def _torch_kernels(step: Any, grad: bool, t: int, n: int) -> list:
    """``(name, compiled, launch)`` for each kernel a fused torch call of `step` makes over
    `t` steps of `n` float32 elements on a GPU (one state array)."""
    x = torch.empty(t, n, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        kernels = fused_triton.gpu_kernels(x, step, torch.zeros(n))
    return [
        (k.fn.__name__, fused_triton.compile_ahead(k, launch, torch.float32, CC), launch)
        for k, launch in kernels
    ]


def _jax_kernels(step: Any, grad: bool, t: int, n: int) -> list:
    """The same for a fused JAX call: Pallas' Triton modules, compiled by the installed
    triton with the launch's warps and Pallas' one stage."""
    import jax.numpy as jnp
    import triton
    from triton.backends.compiler import GPUTarget

    from dualstep.fused import pallas

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, launch in pallas.gpu_kernels(
            jnp.zeros((t, n)), step, jnp.zeros(n), grad=grad
        ):
            path = Path(tmp) / f"{name}.ttir"
            path.write_text(module)
            options = {"num_warps": launch["num_warps"], "num_stages": 1, "enable_fp_fusion": False}
            compiled = triton.compile(str(path), target=GPUTarget("cuda", CC, 32), options=options)
            out.append((name, compiled, launch))
    return out


def _minimum(name: str, grad: bool) -> int:
    """The fewest arrays one time step of the kernel `name` could read and write, for a step
    with one output and one state array: forward, x read and the output written, and with
    gradients the charged voltage saved, as SpikingJelly's kernel saves it; backward, that
    saved voltage and the output's gradient read, x's gradient written."""
    return 2 + grad if name == "fwd" else 3


def _resident(registers: int, warps: int) -> int:
    """Programs an SM holds at once."""
    by_registers = SM["registers"] // (registers * 32 * warps)
    return min(SM["programs"], SM["warps"] // warps, by_registers)


WORKLOADS = [
    ("IF", False, FORWARD_SIZES),
    ("LIF", False, FORWARD_SIZES),
    ("LIF + surrogate", True, TRAIN_SIZES),
]


def measure(jax_workloads: tuple = tuple(w[0] for w in WORKLOADS)) -> list[dict]:
    """Every workload's rows on torch, then those of `jax_workloads` on JAX."""
    rows = []
    for backend, build in (("torch", _torch_kernels), ("JAX", _jax_kernels)):
        steps = _steps(backend.lower())
        for workload, grad, sizes in WORKLOADS:
            if backend == "JAX" and workload not in jax_workloads:
                continue
            for t, b, n in sizes:
                for name, compiled, launch in build(steps[workload], grad, t, b * n):
                    row = _row(name, compiled, launch, b * n, grad)
                    mode = "training" if grad else "inference"
                    rows.append({"backend": backend, "workload": f"{workload}, {mode}", **row})
                    rows[-1]["size"] = f"{t}x{b}x{n}"
    return rows


def _row(name: str, compiled: Any, launch: dict, elements: int, grad: bool) -> dict:
    """One kernel's figures on a card of ``GPU["sms"]`` SMs."""
    sms = int(GPU["sms"])
    registers, spills = fused_triton.registers_and_spills(compiled)
    loads, stores = launch["arrays"]
    moved, minimum = loads + stores, _minimum(name, grad)
    programs = math.ceil(elements / launch["block"])
    resident = _resident(registers, launch["num_warps"])
    loading = min(programs / sms, resident)
    in_flight = loading * launch["block"] * launch["unroll"] * loads * 4
    return {
        "kernel": name,
        **{k: v for k, v in launch.items() if k != "arrays"},
        "programs": programs,
        "programs_per_sm": programs / sms,
        "resident_per_sm": resident,
        "registers": registers,
        "spill_bytes": spills,
        "bytes_per_step": moved * elements * 4,
        "minimum_bytes_per_step": minimum * elements * 4,
        "steps_in_flight": launch["unroll"],
        "kb_in_flight_per_sm": in_flight / 1024,
    }


def main() -> int:
    rows = measure()
    lines = [
        f"Modelled, not measured: kernels compiled for sm_{CC} on CPU with the launch "
        f"`dualstep.fused.gpu_launch` picks for {GPU['sms']} SMs, float32. Minimum bytes per "
        "step: inference x read and y written; training forward also one saved array written "
        "(SpikingJelly's kernel saves the charged voltage); backward that array and the output "
        "gradient read, x's gradient written. In "
        "flight: steps' loads per program, and KB per SM with as many programs loading as it "
        "holds (or has).",
        "",
        "| backend | workload | kernel | T x B x N | block | warps | programs | per SM | SM holds "
        "| registers | spills (B) | bytes per step / minimum | steps in flight | KB in flight "
        "per SM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['workload']} | {r['kernel']} | {r['size']} | {r['block']} "
            f"| {r['num_warps']} | {r['programs']} | {r['programs_per_sm']:.2f} "
            f"| {r['resident_per_sm']} | {r['registers']} | {r['spill_bytes']} "
            f"| {r['bytes_per_step'] / r['minimum_bytes_per_step']:.2f} "
            f"| {r['steps_in_flight']} | {r['kb_in_flight_per_sm']:.0f} |"
        )
    publish("gpu_model", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

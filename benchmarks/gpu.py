"""Fused kernels against SpikingJelly's fused neurons and a plain copy: `python -m benchmarks.gpu`.

    python -m benchmarks.gpu --device cuda [--out DIR]   # the figures, on a GPU
    python -m benchmarks.gpu --smoke                     # tiny sizes on CPU (interpreted kernels)

Every system is first checked against the torch loop (spikes equal; voltages and gradients
close), then the systems of a workload are timed side by side: medians of interleaved rounds,
one device sync per round, compiles in the warm-up calls. Results are written after every
workload (`gpu.json`, `gpu.md` under the output folder), so a run cut short keeps what it did.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import dualstep as ds
from dualstep.testing import surrogate_spike

from .run import RESULTS, met, time_side_by_side
from .systems import (
    NAMES,
    System,
    _copy_system,
    _jax_put,
    _sj,
    _sj_neuron,
    jax_if,
    jax_lif,
    torch_if,
    torch_lif,
)

FORWARD_SIZES = [(256, 64, 1024), (1024, 16, 1024)]
TRAIN_SIZES = [(64, 32, 512), (16, 256, 4096)]
GENERIC_SIZE = (256, 64, 1024)
CHUNK = 32  # steps per compiled chunk for the step that cannot be fused
SMOKE = {"forward": [(6, 2, 40)], "train": [(5, 2, 40)], "generic": (6, 2, 8)}
ALPHA = 4.0  # SpikingJelly's Sigmoid surrogate


def _if_with(spike: Callable) -> Callable:
    def step(x, v):
        h = v + x
        s = spike(h - 1.0)
        return s, h * (1.0 - s)

    return step


def _spikes(out: Any) -> np.ndarray:
    a = out[0] if isinstance(out, tuple) else out
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _data(size: tuple, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(size) + 0.5).astype(np.float32)


def forward_systems(kind: str, size: tuple, device: str) -> list[System]:
    import jax
    import torch
    from jax import lax

    _, b, n = size
    x_np = _data(size, 0)
    dev = torch.device(device)
    x, v0 = torch.from_numpy(x_np).to(dev), torch.zeros(b, n, device=dev)
    t_step, j_step = (torch_if, jax_if) if kind == "if" else (torch_lif, jax_lif)
    out = [_copy_system(x_np, device)]
    sj = _sj()
    if sj is not None:
        node = _sj_neuron(sj[1], kind, "m").to(dev)

        def sj_fused():
            node.reset()
            return node(x)

        out.append(System("SpikingJelly multi-step neuron", sj_fused, "torch"))
    out.append(
        System(
            "dualstep torch fused",
            lambda: ds.multi_step_forward(x, t_step, state=v0, fused=True),
            "torch",
        )
    )
    out.append(
        System("dualstep torch loop", lambda: ds.multi_step_forward(x, t_step, state=v0), "torch")
    )
    xj, vj = _jax_put(x_np, device), _jax_put(np.zeros((b, n), np.float32), device)
    fused = jax.jit(lambda x, v: ds.multi_step_forward(x, j_step, state=v, fused=True))
    default = jax.jit(lambda x, v: ds.multi_step_forward(x, j_step, state=v))

    @jax.jit
    def hand_scan(x, v):
        v, ys = lax.scan(lambda v, xt: j_step(xt, v)[::-1], v, x)
        return ys, v

    out += [
        System("dualstep JAX fused", lambda: fused(xj, vj), "jax"),
        System("dualstep JAX, no option", lambda: default(xj, vj), "jax"),
        System("hand-written jit(lax.scan)", lambda: hand_scan(xj, vj), "jax"),
    ]
    return out


def train_systems(size: tuple, device: str) -> list[System]:
    """Forward and backward of an IF neuron with a sigmoid surrogate; the gradient of
    ``sum(spikes * w)`` with respect to the input is each system's result."""
    import jax
    import torch

    _, b, n = size
    x_np, w_np = _data(size, 1), _data(size, 2)
    dev = torch.device(device)
    x, w = torch.from_numpy(x_np).to(dev), torch.from_numpy(w_np).to(dev)
    v0 = torch.zeros(b, n, device=dev)
    t_step = _if_with(surrogate_spike("torch", ALPHA))

    full = torch.full((b,), size[0], dtype=torch.int32, device=dev)  # lengths= all T

    def torch_grad(fused: bool, lengths: Any = None) -> Callable:
        def run():
            xr = x.detach().requires_grad_()
            y, _ = ds.multi_step_forward(xr, t_step, state=v0, fused=fused, lengths=lengths)
            return torch.autograd.grad((y * w).sum(), xr)[0]

        return run

    out = []
    sj = _sj()
    if sj is not None:
        node = _sj_neuron(sj[1], "if", "m").to(dev)

        def sj_train():
            node.reset()
            xr = x.detach().requires_grad_()
            return torch.autograd.grad((node(xr) * w).sum(), xr)[0]

        out.append(System("SpikingJelly multi-step neuron", sj_train, "torch"))
    out += [
        System("dualstep torch fused", torch_grad(True), "torch"),
        System("dualstep torch fused, lengths= (all T)", torch_grad(True, full), "torch"),
        System("dualstep torch loop", torch_grad(False), "torch"),
    ]
    j_step = _if_with(surrogate_spike("jax", ALPHA))
    xj, wj = _jax_put(x_np, device), _jax_put(w_np, device)
    vj = _jax_put(np.zeros((b, n), np.float32), device)

    full_j = _jax_put(np.full((b,), size[0], np.int32), device)

    def jax_grad(fused: bool, lengths: Any = None) -> Callable:
        def loss(x, lengths):
            y, _ = ds.multi_step_forward(x, j_step, state=vj, fused=fused, lengths=lengths)
            return (y * wj).sum()

        return functools.partial(jax.jit(jax.grad(loss)), lengths=lengths)

    fused, default, fused_lengths = jax_grad(True), jax_grad(False), jax_grad(True, full_j)
    out += [
        System("dualstep JAX fused", lambda: fused(xj), "jax"),
        System("dualstep JAX fused, lengths= (all T)", lambda: fused_lengths(xj), "jax"),
        System("dualstep JAX, no option", lambda: default(xj), "jax"),
    ]
    return out


def generic_systems(size: tuple, device: str) -> list[System]:
    """A step with a Linear inside: no fused kernel; the loop against compiled chunks."""
    import torch

    _, b, n = size
    dev = torch.device(device)
    torch.manual_seed(0)
    linear = torch.nn.Linear(n, n).to(dev).requires_grad_(False)
    x = torch.from_numpy(_data(size, 3)).to(dev)
    v0 = torch.zeros(b, n, device=dev)

    def step(xt, v):
        return torch_lif(linear(xt), v)

    def chunk(xc, v):
        return ds.multi_step_forward(xc, step, state=v)

    def compiled(mode: bool | str) -> Callable:
        return lambda: ds.chunk_multi_step_forward(CHUNK, x, chunk, state=v0, compile=mode)

    return [
        System("dualstep torch loop", lambda: ds.multi_step_forward(x, step, state=v0), "torch"),
        System("compile='reduce-overhead' chunks", compiled("reduce-overhead"), "torch"),
        System("compile=True chunks", compiled(True), "torch"),
    ]


def check(systems: list[System], grads: bool) -> dict[str, str]:
    """Each system against the torch loop: 'ok', or what differs."""
    ref = next(s for s in systems if s.name == "dualstep torch loop").fn()
    found = {}
    for system in systems:
        if system.framework == "copy":
            continue
        got = system.fn()
        if grads:
            a = got.detach().cpu().numpy() if hasattr(got, "detach") else np.asarray(got)
            want = ref.detach().cpu().numpy()
            err = float(np.abs(a - want).max() / max(np.abs(want).max(), 1e-30))
            found[system.name] = "ok" if err <= 1e-4 else f"gradient differs by {err:.2g}"
        else:
            bad = int((_spikes(got) != _spikes(ref)).sum())
            found[system.name] = "ok" if bad == 0 else f"{bad} spikes differ"
    return found


def run(device: str, smoke: bool, out: Path, progress: Callable[[str], None]) -> dict:
    import torch

    with_grad = torch.enable_grad
    forward = SMOKE["forward"] if smoke else FORWARD_SIZES
    train = SMOKE["train"] if smoke else TRAIN_SIZES
    generic = SMOKE["generic"] if smoke else GENERIC_SIZE
    workloads: list[tuple[str, tuple, Callable[[], list], bool]] = []
    for size in forward:
        for kind in ("if", "lif"):
            workloads.append(
                (
                    f"{kind.upper()} forward",
                    size,
                    lambda k=kind, s=size: forward_systems(k, s, device),
                    False,
                )
            )
    for size in train:
        workloads.append(("IF training", size, lambda s=size: train_systems(s, device), True))
    workloads.append(
        ("Linear then LIF, forward", generic, lambda: generic_systems(generic, device), False)
    )
    result: dict[str, Any] = {
        "device": _device_name(device),
        "smoke": smoke,
        "rows": [],
        "checks": {},
    }
    budget = 0.02 if smoke else 0.3
    for i, (workload, size, build, grads) in enumerate(workloads, start=1):
        label = f"{workload} {'x'.join(map(str, size))}"
        progress(f"[{i}/{len(workloads)}] {label}")
        try:
            with torch.no_grad() if not grads else with_grad():
                systems = build()
                result["checks"][label] = check(systems, grads)
                seconds = time_side_by_side(
                    [s.fn for s in systems],
                    budget * len(systems),
                    rounds=3 if smoke else 7,
                    summary=statistics.median,
                    block_each=False,
                )
        except Exception as error:  # a failed workload is a result too
            result["checks"][label] = {"error": f"{type(error).__name__}: {error}"[:500]}
            progress(f"    failed: {type(error).__name__}: {error}"[:300])
            continue
        for system, s in zip(systems, seconds, strict=True):
            result["rows"].append(
                {"workload": workload, "size": list(size), "system": system.name, "seconds": s}
            )
        write(result, out)
    result["targets"] = targets(result, smoke)
    write(result, out)
    return result


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}), kernels interpreted"


def _time(result: dict, workload: str, size: tuple, system: str) -> float | None:
    for r in result["rows"]:
        if r["workload"] == workload and tuple(r["size"]) == size and r["system"] == system:
            return r["seconds"]
    return None


# The figures asked for: (name, workload, numerator system, denominator system, bound, sizes).
# A ratio is numerator time / denominator time; a missing system fails loudly as "missing".
TARGETS = [
    (
        "fused forward, fraction of copy bandwidth",
        "{kind} forward",
        "memory copy",
        "dualstep {fw} fused",
        ">= 0.5",
        "forward",
    ),
    (
        "fused forward / SpikingJelly fused",
        "{kind} forward",
        "dualstep {fw} fused",
        "SpikingJelly multi-step neuron",
        "<= 0.5",
        "forward",
    ),
    (
        "fused training / SpikingJelly fused",
        "IF training",
        "dualstep {fw} fused",
        "SpikingJelly multi-step neuron",
        "<= 0.7",
        "train",
    ),
    (
        "fused training, lengths= (all T) / without",
        "IF training",
        "dualstep {fw} fused, lengths= (all T)",
        "dualstep {fw} fused",
        "<= 1.1",
        "train",
    ),
    (
        "JAX, no option / SpikingJelly fused",
        "{kind} forward",
        "dualstep JAX, no option",
        "SpikingJelly multi-step neuron",
        "<= 1.2",
        "default",
    ),
    (
        "torch loop / compiled chunks (reduce-overhead)",
        "Linear then LIF, forward",
        "dualstep torch loop",
        "compile='reduce-overhead' chunks",
        ">= 5",
        "generic",
    ),
]


def _check_targets() -> None:
    """Every system a target names exists (a rename fails here, not as a silent "missing")."""
    for name, _, num, den, *_ in TARGETS:
        for system in (num, den):
            for fw in ("torch", "JAX"):
                if system.format(fw=fw) not in NAMES:
                    raise KeyError(f"target {name!r} names {system.format(fw=fw)!r}, unknown")


def targets(result: dict, smoke: bool) -> list[dict]:
    sizes = {
        "forward": SMOKE["forward"] if smoke else FORWARD_SIZES,
        "train": SMOKE["train"] if smoke else TRAIN_SIZES,
        "default": SMOKE["forward"][:1] if smoke else FORWARD_SIZES[:1],
        "generic": [SMOKE["generic"] if smoke else GENERIC_SIZE],
    }
    _check_targets()
    rows = []
    for name, workload, num, den, bound, which in TARGETS:
        kinds = ("IF", "LIF") if "{kind}" in workload else ("",)
        fws = ("torch", "JAX") if "{fw}" in num + den else ("",)
        for size in map(tuple, sizes[which]):
            for kind in kinds:
                for fw in fws:
                    w = workload.format(kind=kind)
                    a = _time(result, w, size, num.format(fw=fw))
                    b = _time(result, w, size, den.format(fw=fw))
                    value = None if a is None or b is None else a / b
                    parts = [p for p in (fw, kind) if p] + ["x".join(map(str, size))]
                    label = f"{name} ({', '.join(parts)})"
                    rows.append(
                        {"target": label, "value": value, "bound": bound, "met": met(value, bound)}
                    )
    return rows


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=1))
    (out / "gpu.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"# Fused kernels on {result['device']}", ""]
    if result.get("targets"):
        lines += ["| target | figure | bound | met |", "|---|---|---|---|"]
        for t in result["targets"]:
            value = "missing" if t["value"] is None else f"{t['value']:.3g}"
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['target']} | {value} | {t['bound']} | {met} |")
        lines.append("")
    lines += ["| workload | system | ms | check |", "|---|---|---|---|"]
    for r in result["rows"]:
        label = f"{r['workload']} {'x'.join(map(str, r['size']))}"
        status = result["checks"].get(label, {}).get(r["system"], "-")
        lines.append(f"| {label} | {r['system']} | {r['seconds'] * 1e3:.4g} | {status} |")
    errors = [(k, v["error"]) for k, v in result["checks"].items() if "error" in v]
    lines += [""] + [f"- {k}: {e}" for k, e in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, short timings")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu")
    args = parser.parse_args(argv)
    started = time.time()

    def progress(message: str) -> None:
        print(f"{time.time() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    result = run(args.device, args.smoke, args.out, progress)
    print(markdown(result))
    return 0 if all("error" not in v for v in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

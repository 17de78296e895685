"""The workloads and the systems that run them, each built as a zero-argument callable.

Every system of a workload computes the same thing from the same input; `run.py` times them
side by side. Step functions are written in each framework's own ops, as a user would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import dualstep as ds

SIZES = [(16, 8, 64), (64, 32, 512), (256, 64, 1024)]
QUICK_SIZES = [(16, 8, 64), (64, 32, 512)]
CHUNK_SIZES = [(1024, 8, 64), (1024, 32, 512), (1024, 64, 1024)]
QUICK_CHUNK_SIZES = [(1024, 8, 64), (1024, 32, 512)]
SPLIT = 16
TAU, V_TH = 2.0, 1.0


# Every system name a workload can hold. Targets name systems from this set and a System must
# be one of them, so a renamed system fails loudly instead of turning a target into "n/a".
NAMES = frozenset(
    {
        "memory copy",
        "SpikingJelly multi_step_forward",
        "SpikingJelly multi-step neuron",
        "SpikingJelly seq_to_ann_forward",
        "SpikingJelly chunk_multi_step_forward",
        "torch Python loop",
        "torch flatten-call-unflatten",
        "dualstep torch",
        "dualstep torch, state=",
        "dualstep torch, module (SJ neuron)",
        "dualstep torch.compile",
        "dualstep torch.compile, module (SJ neuron)",
        "dualstep torch (preallocated)",
        "dualstep torch fused",
        "dualstep torch fused, lengths= (all T)",
        "dualstep torch loop",
        "compile='reduce-overhead' chunks",
        "compile=True chunks",
        "dualstep JAX eager",
        "dualstep JAX in jit",
        "dualstep JAX fused",
        "dualstep JAX fused, lengths= (all T)",
        "dualstep JAX, no option",
        "hand-written jit(lax.scan)",
        "JAX Python loop",
    }
)


@dataclass
class System:
    name: str
    fn: Callable[[], Any]
    framework: str  # "torch" | "jax" | "copy"

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise ValueError(f"system {self.name!r} is not in systems.NAMES; add it there")


# --- step functions in each framework's ops ---------------------------------------------------


def torch_if(x, v):
    h = v + x
    s = (h >= V_TH).to(x.dtype)
    return s, h * (1.0 - s)


def torch_lif(x, v):
    h = v + (x - v) / TAU
    s = (h >= V_TH).to(x.dtype)
    return s, h * (1.0 - s)


def jax_if(x, v):
    h = v + x
    s = (h >= V_TH).astype(x.dtype)
    return s, h * (1.0 - s)


def jax_lif(x, v):
    h = v + (x - v) / TAU
    s = (h >= V_TH).astype(x.dtype)
    return s, h * (1.0 - s)


# --- helpers ------------------------------------------------------------------------------------


def _torch_device(device: str):
    import torch

    return torch.device("cuda" if device == "cuda" else "cpu")


def _jax_put(a: np.ndarray, device: str):
    import jax

    platform = "gpu" if device == "cuda" else "cpu"
    try:
        dev = jax.devices(platform)[0]
    except RuntimeError:
        return None
    return jax.device_put(a, dev)


def _copy_system(x_np: np.ndarray, device: str) -> System:
    """The machine's limit: copy the input's bytes into a preallocated buffer."""
    import torch

    x = torch.from_numpy(x_np).to(_torch_device(device))
    out = torch.empty_like(x)
    return System("memory copy", lambda: out.copy_(x), "copy")


def _sj():
    try:
        from spikingjelly.activation_based import functional, neuron
    except ImportError:
        return None
    return functional, neuron


def _sj_neuron(neuron, kind: str, step_mode: str):
    if kind == "if":
        return neuron.IFNode(v_threshold=V_TH, v_reset=0.0, step_mode=step_mode)
    return neuron.LIFNode(tau=TAU, v_threshold=V_TH, v_reset=0.0, step_mode=step_mode)


def _reset_then(module, call):
    """Reset `module`'s memory, then `call()`: every timed call does the same work."""

    def run():
        module.reset()
        return call()

    return run


def _torch_state_systems(x, v0, t_step, compile_torch: bool) -> list[System]:
    """A torch loop, dualstep's `state=` path and its torch.compile, for one step function."""
    import torch

    def torch_loop():
        v, ys = v0, []
        for xt in x:
            y, v = t_step(xt, v)
            ys.append(y)
        return torch.stack(ys), v

    systems = [
        System("torch Python loop", torch_loop, "torch"),
        System(
            "dualstep torch, state=", lambda: ds.multi_step_forward(x, t_step, state=v0), "torch"
        ),
    ]
    if compile_torch:
        compiled = torch.compile(
            lambda x, v: ds.multi_step_forward(x, t_step, state=v), fullgraph=True
        )
        systems.append(System("dualstep torch.compile", lambda: compiled(x, v0), "torch"))
    return systems


def _jax_state_systems(xj, vj, j_step) -> list[System]:
    """dualstep JAX eager and inside jit, and a hand-written jitted lax.scan, for one step."""
    import jax
    from jax import lax

    jitted = jax.jit(lambda x, v: ds.multi_step_forward(x, j_step, state=v))

    @jax.jit
    def hand_scan(x, v):
        def body(v, xt):
            y, v = j_step(xt, v)
            return v, y

        v, ys = lax.scan(body, v, x)
        return ys, v

    return [
        System("dualstep JAX eager", lambda: ds.multi_step_forward(xj, j_step, state=vj), "jax"),
        System("dualstep JAX in jit", lambda: jitted(xj, vj), "jax"),
        System("hand-written jit(lax.scan)", lambda: hand_scan(xj, vj), "jax"),
    ]


# Inductor's compile time of SpikingJelly's LIFNode unrolled over T grows faster than T: 6 s at
# T=64 (64x32x512), over 15 min at T=256 (64x1024) on the 2-core CPU. Longer sequences skip the
# "torch.compile, module (SJ neuron)" system; the `state=` path under torch.compile runs at all T.
SJ_COMPILE_MAX_T = 64


# --- workloads ----------------------------------------------------------------------------------


def neuron_systems(kind: str, size: tuple, device: str, compile_torch: bool) -> list[System]:
    """An IF or LIF neuron step over [T, B, N]; kind in {"if", "lif"}."""
    import jax
    import torch

    t, b, n = size
    rng = np.random.default_rng(0)
    x_np = (rng.standard_normal((t, b, n)) + 0.5).astype(np.float32)
    dev = _torch_device(device)
    x, v0 = torch.from_numpy(x_np).to(dev), torch.zeros(b, n, device=dev)
    t_step, j_step = (torch_if, jax_if) if kind == "if" else (torch_lif, jax_lif)
    systems = [_copy_system(x_np, device)]

    sj = _sj()
    if sj is not None:
        functional, neuron = sj
        single = _sj_neuron(neuron, kind, "s").to(dev)
        multi = _sj_neuron(neuron, kind, "m").to(dev)
        systems.append(
            System(
                "SpikingJelly multi_step_forward",
                _reset_then(single, lambda: functional.multi_step_forward(x, single)),
                "torch",
            )
        )
        systems.append(
            System("SpikingJelly multi-step neuron", _reset_then(multi, lambda: multi(x)), "torch")
        )
        ours = _sj_neuron(neuron, kind, "s").to(dev)
        systems.append(
            System(
                "dualstep torch, module (SJ neuron)",
                _reset_then(ours, lambda: ds.multi_step_forward(x, ours)),
                "torch",
            )
        )
        if compile_torch and t <= SJ_COMPILE_MAX_T:
            node = _sj_neuron(neuron, kind, "s").to(dev)
            # The reset stays outside: SpikingJelly's reset reads whether `v` is a tensor, so
            # inside the compiled function it would recompile after the first call.
            compiled_module = torch.compile(
                lambda x: ds.multi_step_forward(x, node), fullgraph=True
            )
            systems.append(
                System(
                    "dualstep torch.compile, module (SJ neuron)",
                    _reset_then(node, lambda: compiled_module(x)),
                    "torch",
                )
            )

    systems += _torch_state_systems(x, v0, t_step, compile_torch)

    xj, vj = _jax_put(x_np, device), _jax_put(np.zeros((b, n), np.float32), device)
    if xj is not None:

        def jax_loop():
            v, ys = vj, []
            for i in range(t):
                y, v = j_step(xj[i], v)
                ys.append(y)
            return jax.numpy.stack(ys), v

        systems += _jax_state_systems(xj, vj, j_step)
        systems.append(System("JAX Python loop", jax_loop, "jax"))
    return systems


def linear_lif_systems(size: tuple, device: str, compile_torch: bool) -> list[System]:
    """Linear(N, N) then a LIF neuron, per step."""
    import torch

    t, b, n = size
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((t, b, n)).astype(np.float32)
    dev = _torch_device(device)
    torch.manual_seed(0)
    linear = torch.nn.Linear(n, n).to(dev).requires_grad_(False)
    x, v0 = torch.from_numpy(x_np).to(dev), torch.zeros(b, n, device=dev)

    def t_step(xt, v):
        return torch_lif(linear(xt), v)

    systems = [_copy_system(x_np, device)]
    sj = _sj()
    if sj is not None:
        functional, neuron = sj
        single = _sj_neuron(neuron, "lif", "s").to(dev)
        net = [linear, single]
        systems.append(
            System(
                "SpikingJelly multi_step_forward",
                _reset_then(single, lambda: functional.multi_step_forward(x, net)),
                "torch",
            )
        )
        ours = copy.deepcopy(single)
        systems.append(
            System(
                "dualstep torch, module (SJ neuron)",
                _reset_then(ours, lambda: ds.multi_step_forward(x, [linear, ours])),
                "torch",
            )
        )

    systems += _torch_state_systems(x, v0, t_step, compile_torch)

    xj = _jax_put(x_np, device)
    if xj is not None:
        w = _jax_put(linear.weight.detach().cpu().numpy().T.copy(), device)
        bias = _jax_put(linear.bias.detach().cpu().numpy(), device)
        vj = _jax_put(np.zeros((b, n), np.float32), device)

        def j_step(xt, v):
            return jax_lif(xt @ w + bias, v)

        systems += _jax_state_systems(xj, vj, j_step)
    return systems


def seq_to_ann_systems(layer: str, size: tuple, device: str) -> list[System]:
    """seq_to_ann_forward of a Linear(N, N) or a 3x3 Conv2d over [T, B, C, H, W]."""
    import jax
    import torch

    t, b, n = size
    rng = np.random.default_rng(2)
    dev = _torch_device(device)
    torch.manual_seed(0)
    if layer == "linear":
        shape = (t, b, n)
        module = torch.nn.Linear(n, n)
    else:
        c = 4 if n <= 64 else 8
        side = round((n / c) ** 0.5)
        shape = (t, b, c, side, side)
        module = torch.nn.Conv2d(c, c, 3, padding=1)
    module = module.to(dev).requires_grad_(False)
    x_np = rng.standard_normal(shape).astype(np.float32)
    x = torch.from_numpy(x_np).to(dev)
    systems = [_copy_system(x_np, device)]
    sj = _sj()
    if sj is not None:
        functional, _ = sj
        systems.append(
            System(
                "SpikingJelly seq_to_ann_forward",
                lambda: functional.seq_to_ann_forward(x, module),
                "torch",
            )
        )
    systems.append(
        System(
            "torch flatten-call-unflatten",
            lambda: module(x.flatten(0, 1)).unflatten(0, shape[:2]),
            "torch",
        )
    )
    systems.append(System("dualstep torch", lambda: ds.seq_to_ann_forward(x, module), "torch"))
    xj = _jax_put(x_np, device)
    if xj is not None:
        w = _jax_put(module.weight.detach().cpu().numpy(), device)
        bias = _jax_put(module.bias.detach().cpu().numpy(), device)
        if layer == "linear":

            def j_layer(a):
                return a @ w.T + bias

        else:

            def j_layer(a):
                y = jax.lax.conv_general_dilated(a, w, (1, 1), "SAME")
                return y + bias[:, None, None]

        jitted = jax.jit(lambda x: ds.seq_to_ann_forward(x, j_layer))
        systems += [
            System("dualstep JAX eager", lambda: ds.seq_to_ann_forward(xj, j_layer), "jax"),
            System("dualstep JAX in jit", lambda: jitted(xj), "jax"),
        ]
    return systems


def chunk_systems(size: tuple, device: str) -> list[System]:
    """chunk_multi_step_forward inference of a multi-step IF neuron, split 16."""
    import jax
    import torch

    t, b, n = size
    rng = np.random.default_rng(3)
    x_np = (rng.standard_normal((t, b, n)) + 0.5).astype(np.float32)
    dev = _torch_device(device)
    x = torch.from_numpy(x_np).to(dev)
    systems = [_copy_system(x_np, device)]
    sj = _sj()
    if sj is not None:
        functional, neuron = sj
        theirs = _sj_neuron(neuron, "if", "m").to(dev)
        ours = _sj_neuron(neuron, "if", "m").to(dev)

        def sj_chunk():
            theirs.reset()
            with torch.no_grad():
                return functional.chunk_multi_step_forward(SPLIT, x, theirs)

        def ds_chunk():
            ours.reset()
            with torch.no_grad():
                return ds.chunk_multi_step_forward(SPLIT, x, ours)

        systems += [
            System("SpikingJelly chunk_multi_step_forward", sj_chunk, "torch"),
            System("dualstep torch (preallocated)", ds_chunk, "torch"),
        ]
    v0 = torch.zeros(b, n, device=dev)

    def t_chunk(xc, v):
        return ds.multi_step_forward(xc, torch_if, state=v)

    def ds_state():
        with torch.no_grad():
            return ds.chunk_multi_step_forward(SPLIT, x, t_chunk, state=v0)

    systems.append(System("dualstep torch, state=", ds_state, "torch"))
    xj = _jax_put(x_np, device)
    if xj is not None:
        vj = _jax_put(np.zeros((b, n), np.float32), device)

        def j_chunk(xc, v):
            return ds.multi_step_forward(xc, jax_if, state=v)

        jitted = jax.jit(lambda x, v: ds.chunk_multi_step_forward(SPLIT, x, j_chunk, state=v))
        systems += [
            System(
                "dualstep JAX eager",
                lambda: ds.chunk_multi_step_forward(SPLIT, xj, j_chunk, state=vj),
                "jax",
            ),
            System("dualstep JAX in jit", lambda: jitted(xj, vj), "jax"),
        ]
    return systems

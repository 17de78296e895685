"""Memory measurements, each run in a fresh subprocess: `python -m benchmarks.memory CASE`.

Peak resident memory on the CPU is read from the kernel (VmHWM, reset through
/proc/self/clear_refs) with glibc's mmap threshold fixed, so large buffers go back to the
system when freed. JAX programs are measured by XLA's own memory analysis.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

CHUNK_SHAPE = (1024, 64, 1024)  # T, B, N for chunked inference
TRAIN_SHAPE = (1024, 32, 256)  # T, B, N for training: Linear(N, N) then LIF
TRAIN_SPLIT = 32
MLP_SHAPE = (1024, 32, 256)  # T, B, N for the JAX chunked Linear(N, 4N) -> ReLU -> Linear


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_extra_bytes(fn) -> int:
    """Peak resident memory while running `fn`, above what was resident before it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    before = _status_kb("VmRSS")
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    return (peak - before) * 1024


def chunk_inference(system: str) -> dict:
    import torch
    from spikingjelly.activation_based import functional, neuron

    import dualstep as ds

    t, b, n = CHUNK_SHAPE
    x = torch.randn(t, b, n) + 0.5
    node = neuron.IFNode(step_mode="m")
    chunk = functional.chunk_multi_step_forward if system == "sj" else ds.chunk_multi_step_forward
    with torch.no_grad():
        chunk(16, x[:32], node)  # warm-up: first-call allocations are not the method's
        node.reset()
        extra = _peak_extra_bytes(lambda: chunk(16, x, node))
    return {"extra_peak_bytes": extra, "output_bytes": x.numel() * 4}


def torch_train_model(steps: int | None = None) -> tuple:
    """The training workload on torch: ``(linear, x, chunk)``, Linear then a smooth LIF over
    ``x`` of `TRAIN_SHAPE` (`steps` steps if given), with `chunk(x_chunk, v)` a stateful chunk
    module."""
    import torch

    import dualstep as ds

    t, b, n = TRAIN_SHAPE
    t = t if steps is None else steps
    torch.manual_seed(0)
    linear = torch.nn.Linear(n, n)
    x = torch.randn(t, b, n)

    def lif(xt, v):
        h = v + (linear(xt) - v) / 2.0
        s = torch.sigmoid(4.0 * (h - 1.0))  # a smooth spike: differentiable
        return s, h * (1.0 - s)

    def chunk(xc, v):
        return ds.multi_step_forward(xc, lif, state=v)

    return linear, x, chunk


def _torch_train(checkpoint: bool, hold_output: bool) -> dict:
    """Peak of one forward+backward. A training loop (``loss(y).backward()``) lets the output
    go once the loss is computed; `hold_output` keeps it alive through the backward pass, so the
    peak then includes the output and its gradient (2x the output's bytes) on any path."""
    import torch

    import dualstep as ds

    _, b, n = TRAIN_SHAPE
    linear, x, chunk = torch_train_model()

    def forward():
        y, _ = ds.chunk_multi_step_forward(
            TRAIN_SPLIT, x, chunk, state=torch.zeros(b, n), checkpoint=checkpoint
        )
        return y

    def step():
        linear.zero_grad(set_to_none=True)
        if hold_output:
            y = forward()
            y.mean().backward()
            return linear.weight.grad, y
        forward().mean().backward()
        return linear.weight.grad

    step()  # warm-up
    return {"extra_peak_bytes": _peak_extra_bytes(step)}


def _jax_train(checkpoint: bool) -> dict:
    import jax
    import jax.numpy as jnp

    import dualstep as ds

    t, b, n = TRAIN_SHAPE
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), jnp.float32)
    x = jnp.asarray(rng.standard_normal((t, b, n)), jnp.float32)

    def loss(w, x):
        def lif(xt, v):
            h = v + (xt @ w - v) / 2.0
            s = jax.nn.sigmoid(4.0 * (h - 1.0))
            return s, h * (1.0 - s)

        def chunk(xc, v):
            return ds.multi_step_forward(xc, lif, state=v)

        y, _ = ds.chunk_multi_step_forward(
            TRAIN_SPLIT, x, chunk, state=jnp.zeros((b, n)), checkpoint=checkpoint
        )
        return y.mean()

    compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
    analysis = compiled.memory_analysis()
    return {"temp_bytes": int(analysis.temp_size_in_bytes)}


def train_at(kind: str, steps: str) -> dict:
    """Peak of one torch forward+backward of the training workload at `steps` steps, run as
    one loop (`plain`: ``multi_step_forward``), in chunks of `TRAIN_SPLIT` (`chunked`), or in
    checkpointed chunks (`checkpointed`); the output is let go once the loss is computed."""
    import torch

    import dualstep as ds

    _, b, n = TRAIN_SHAPE
    linear, x, chunk = torch_train_model(int(steps))

    def forward():
        if kind == "plain":
            return chunk(x, torch.zeros(b, n))[0]
        checkpoint = {"chunked": False, "checkpointed": True}[kind]
        y, _ = ds.chunk_multi_step_forward(
            TRAIN_SPLIT, x, chunk, state=torch.zeros(b, n), checkpoint=checkpoint
        )
        return y

    def step():
        linear.zero_grad(set_to_none=True)
        forward().mean().backward()
        return linear.weight.grad

    step()  # warm-up
    return {"extra_peak_bytes": _peak_extra_bytes(step)}


def train(backend: str, checkpoint: str, output: str = "released") -> dict:
    on = checkpoint == "on"
    return _torch_train(on, output == "held") if backend == "torch" else _jax_train(on)


def jax_chunk_temp(split: str) -> dict:
    """XLA temporary memory of a chunked Linear(N, 4N) -> ReLU -> Linear(4N, N)."""
    import jax
    import jax.numpy as jnp

    import dualstep as ds

    t, b, n = MLP_SHAPE
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.standard_normal((n, 4 * n)), jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((4 * n, n)), jnp.float32)
    x = jnp.zeros((t, b, n), jnp.float32)

    def mlp(xc):
        return jax.nn.relu(xc @ w1) @ w2

    size = t if split == "none" else int(split)
    fn = jax.jit(lambda x: ds.chunk_multi_step_forward(size, x, mlp))
    analysis = fn.lower(x).compile().memory_analysis()
    return {"temp_bytes": int(analysis.temp_size_in_bytes)}


CASES = {
    "chunk_inference": chunk_inference,
    "train": train,
    "train_at": train_at,
    "jax_chunk_temp": jax_chunk_temp,
}


def measure(case: str, *args: str) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its JSON result."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", MALLOC_TRIM_THRESHOLD_="16384")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", case, *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(CASES[sys.argv[1]](*sys.argv[2:])))

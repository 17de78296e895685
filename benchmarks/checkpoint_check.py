"""What the recomputation check of `checkpoint=True` costs on torch, side by side.

`python -m benchmarks.checkpoint_check` times one training step (forward and backward) of the
memory benchmark's model (Linear 256 then a smooth LIF, T=1024, B=32, chunks of 32) three ways,
in interleaved rounds (best round each), after checking that the three give equal gradients:

- plain: `chunk_multi_step_forward(..., checkpoint=False)`;
- checked: `checkpoint=True`, where every tensor autograd saves is fingerprinted in forward
  and compared with its recomputation in backward;
- unchecked: each chunk wrapped in `torch.utils.checkpoint` by hand (torch's own check:
  shapes, dtypes and devices only), what a user who must accept a nondeterministic chunk does.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

import dualstep as ds

from .memory import TRAIN_SHAPE, TRAIN_SPLIT, torch_train_model
from .run import time_side_by_side


def main() -> None:
    t, b, n = TRAIN_SHAPE
    linear, x, chunk = torch_train_model()

    def unchecked_chunk(xc, v):
        return checkpoint(chunk, xc, v, use_reentrant=False)

    def step(module, checked):
        linear.zero_grad(set_to_none=True)
        y, _ = ds.chunk_multi_step_forward(
            TRAIN_SPLIT, x, module, state=torch.zeros(b, n), checkpoint=checked
        )
        y.mean().backward()
        return linear.weight.grad.clone()

    systems = {
        "plain": lambda: step(chunk, False),
        "checkpoint=True (checked)": lambda: step(chunk, True),
        "torch.utils.checkpoint by hand (unchecked)": lambda: step(unchecked_chunk, False),
    }
    grads = [fn() for fn in systems.values()]
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-6, atol=1e-7)
    times = time_side_by_side(list(systems.values()), budget=20.0, rounds=5)
    print(f"training step, Linear {n} then LIF, T={t}, B={b}, split {TRAIN_SPLIT}, CPU")
    for name, seconds in zip(systems, times, strict=True):
        print(f"{name:45s} {seconds * 1e3:8.1f} ms  {seconds / times[0]:5.2f}x plain")
    print(f"checked / unchecked: {times[1] / times[2]:.2f}")


if __name__ == "__main__":
    main()

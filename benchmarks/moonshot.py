"""Where the time goes for an IF neuron at 256x64x1024 under torch.compile (the figure "best
dualstep path as a fraction of memory-copy bandwidth" of `python -m benchmarks`).

`python -m benchmarks.moonshot` prints each variant's time per step and its fraction of the
bandwidth of a memory copy of the same bytes, measured in the same run:

- one compiled call over all T steps: Inductor fuses every step into one kernel with time
  inside, so each vector of 8 elements walks T input rows and T output rows (2T strided
  streams);
- a compiled k-step function called T/k times, writing into slices of one preallocated
  result: 2k streams per kernel;
- the same k-step function as the module of `chunk_multi_step_forward`: each chunk returns a
  fresh output that is then copied into the result.
"""

from __future__ import annotations

import timeit

import torch

import dualstep as ds
from dualstep.testing import if_step

SIZE = (256, 64, 1024)
SPLITS = (8, 16, 32)


def _best(fn, number: int = 5, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main() -> None:
    t, b, n = SIZE
    step = if_step()
    x, v0 = torch.randn(t, b, n) + 0.5, torch.zeros(b, n)
    copy_out = torch.empty_like(x)
    copy = _best(lambda: copy_out.copy_(x))
    want, _ = ds.multi_step_forward(x, step, state=v0)
    print(f"IF neuron {t}x{b}x{n}, float32; memory copy {copy / t * 1e6:.1f} us per step")

    def report(label: str, seconds: float) -> None:
        print(f"{label:<58} {seconds / t * 1e6:7.1f} us/step  {copy / seconds:.3f} of copy")

    def multi(c, v):
        return ds.multi_step_forward(c, step, state=v)

    whole = torch.compile(multi, fullgraph=True)
    assert torch.equal(whole(x, v0)[0], want)
    report("torch.compile of multi_step_forward, all T steps", _best(lambda: whole(x, v0)))

    for k in SPLITS:
        torch._dynamo.reset()
        compiled = torch.compile(multi, fullgraph=True, dynamic=False)

        def into(c, v, out):
            ys, v = multi(c, v)
            out.copy_(ys)
            return v

        kernel = torch.compile(into, fullgraph=True, dynamic=False)
        result = torch.empty_like(x)

        def blocked(kernel=kernel, result=result, k=k):
            v = v0
            for i in range(0, t, k):
                v = kernel(x[i : i + k], v, result[i : i + k])
            return result

        def chunked(compiled=compiled, k=k):
            with torch.no_grad():
                return ds.chunk_multi_step_forward(k, x, compiled, state=v0)[0]

        assert torch.equal(blocked(), want) and torch.equal(chunked(), want)
        report(f"compiled {k}-step kernels into one preallocated result", _best(blocked))
        report(f"chunk_multi_step_forward({k}) of the compiled k-step module", _best(chunked))


if __name__ == "__main__":
    main()

"""The torch stateful loop against a hand-written loop, by state structure:
`python -m benchmarks.state_loop [--quick]`.

One LIF-like step (forward only, one thread) whose state is an array, a dict
``{"v", "i"}`` or the nested dict of a NIR recurrent model (``{"lif": {"v"}, "cuba": {"i",
"v"}, "recurrent": {"cuba"}}``). Each runs through ``dualstep.multi_step_forward(x, step,
state=s0)`` and through a hand loop over ``x.unbind(0)`` that stacks the outputs, timed side by
side in interleaved rounds; the figure is ``dualstep / hand loop`` (target: <= 1.05 for
nested dict states, array states unchanged). dualstep checks the kept-state rule at every
step; the hand loop checks nothing.
"""

from __future__ import annotations

import argparse
import sys

import torch

import dualstep as ds

from .run import time_side_by_side


def _array_step(x, v):
    v = 0.9 * v + x
    s = (v > 1.0).to(x.dtype)
    return s, v - s


def _dict_step(x, s):
    i = 0.8 * s["i"] + x
    v = 0.9 * s["v"] + i
    z = (v > 1.0).to(x.dtype)
    return z, {"v": v - z, "i": i}


def _nested_step(x, s):
    h = x + s["recurrent"]["cuba"]
    v1 = 0.9 * s["lif"]["v"] + h
    z1 = (v1 > 1.0).to(x.dtype)
    i = 0.8 * s["cuba"]["i"] + z1
    v2 = 0.9 * s["cuba"]["v"] + i
    z2 = (v2 > 1.0).to(x.dtype)
    state = {
        "lif": {"v": v1 - z1},
        "cuba": {"i": i, "v": v2 - z2},
        "recurrent": {"cuba": 0.5 * z2},
    }
    return z2, state


def _hand(step, x, s0):
    ys, s = [], s0
    for xt in x.unbind(0):
        y, s = step(xt, s)
        ys.append(y)
    return torch.stack(ys), s


def cases(steps: int, batch: int, n: int) -> dict:
    zeros = torch.zeros(batch, n)
    return {
        "array": (_array_step, zeros),
        "dict {v, i}": (_dict_step, {"v": zeros, "i": zeros}),
        "nested dict (NIR)": (
            _nested_step,
            {"lif": {"v": zeros}, "cuba": {"i": zeros, "v": zeros}, "recurrent": {"cuba": zeros}},
        ),
    }


def measure(steps: int, batch: int, n: int, budget: float) -> dict[tuple, tuple[float, float]]:
    """``{(state structure, mode): (dualstep seconds, hand loop seconds)}``, outputs checked
    equal; mode ``"no_grad"`` (inference) or ``"grad"`` (autograd records the forward)."""
    torch.manual_seed(0)
    x = torch.rand(steps, batch, n) * 0.6
    found = {}
    for mode, context in (("no_grad", torch.no_grad), ("grad", torch.enable_grad)):
        for name, (step, s0) in cases(steps, batch, n).items():
            with context():
                ours = ds.multi_step_forward(x, step, state=s0)
                theirs = _hand(step, x, s0)
            assert torch.equal(ours[0], theirs[0])

            def dualstep_call(step=step, s0=s0, context=context):
                with context():
                    return ds.multi_step_forward(x, step, state=s0)

            def hand_call(step=step, s0=s0, context=context):
                with context():
                    return _hand(step, x, s0)

            fns = [dualstep_call, hand_call]
            found[name, mode] = tuple(time_side_by_side(fns, budget, rounds=15))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.state_loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--T", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--features", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget = 0.2 if args.quick else 3.0
    found = measure(args.T, args.batch, args.features, budget)
    print(
        f"torch {torch.__version__}, one thread, forward, [T, B, N] = "
        f"[{args.T}, {args.batch}, {args.features}], best of 15 interleaved rounds"
    )
    print(f"{'state':<20} {'mode':<8} {'dualstep':>10} {'hand loop':>10} {'ratio':>6}")
    for (name, mode), (ours, hand) in found.items():
        print(
            f"{name:<20} {mode:<8} {ours * 1e3:>7.2f} ms {hand * 1e3:>7.2f} ms {ours / hand:>6.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

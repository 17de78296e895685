"""`python -m dualstep`: run the five functions on every installed backend against the oracle.

An embedded example (LIF neurons on random input, an affine+tanh layer for the stateless
functions) runs through all five functions on NumPy, torch and JAX, whichever are installed,
and prints, per backend and function, the max abs difference from the NumPy float64 oracle, the
median time per call and a verdict. Exits 1 if any backend disagrees with the oracle.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import dualstep as ds
from dualstep.testing import affine_tanh, lif_step

SPLIT = 16
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def _converters(name: str) -> tuple[Callable, Callable, Callable] | None:
    """(to_backend, to_numpy, block) for an installed backend, or None."""
    if name == "numpy":
        return np.asarray, np.asarray, lambda y: y
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    if name == "torch":
        return module.from_numpy, lambda t: t.detach().cpu().numpy(), lambda y: y
    import jax

    return module.numpy.asarray, np.asarray, jax.block_until_ready


def _calls() -> dict[str, Callable[[Any, Any, Any], Any]]:
    """Each function on the example; inputs are ``(x [T, B, N], x_t_last [B, N, T], v0)``."""
    lif, dense = lif_step(), affine_tanh()

    def chunk_module(xc: Any, s: Any) -> Any:
        return ds.multi_step_forward(xc, lif, state=s)

    return {
        "multi_step_forward": lambda x, xt, v: ds.multi_step_forward(x, lif, state=v)[0],
        "t_last_multi_step_forward": lambda x, xt, v: ds.t_last_multi_step_forward(
            xt, lif, state=v
        )[0],
        "chunk_multi_step_forward": lambda x, xt, v: ds.chunk_multi_step_forward(
            SPLIT, x, chunk_module, state=v
        )[0],
        "seq_to_ann_forward": lambda x, xt, v: ds.seq_to_ann_forward(x, dense),
        "t_last_seq_to_ann_forward": lambda x, xt, v: ds.t_last_seq_to_ann_forward(xt, dense),
    }


def _median_seconds(fn: Callable[[], Any], block: Callable, repeat: int) -> float:
    block(fn())  # warm-up: JAX compiles here
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(steps: int, batch: int, features: int, dtype: str, repeat: int) -> list[dict]:
    rng = np.random.default_rng(0)
    # Inputs on a dyadic grid keep LIF (tau=2) exact in float32, so spikes match the oracle.
    x = (rng.integers(-16, 17, size=(steps, batch, features)) / 8).astype(dtype)
    inputs = (x, np.moveaxis(x, 0, -1).copy(), np.zeros((batch, features), dtype))
    calls = _calls()
    oracle = {n: f(*(a.astype(np.float64) for a in inputs)) for n, f in calls.items()}
    rows = []
    for backend in ("numpy", "torch", "jax"):
        conv = _converters(backend)
        if conv is None:
            extra = "torch" if backend == "torch" else "jax"
            print(f"{backend} is not installed: pip install 'dualstep[{extra}]'", file=sys.stderr)
            continue
        to_backend, to_numpy, block = conv
        args = [to_backend(a) for a in inputs]
        for name, fn in calls.items():
            y = to_numpy(fn(*args))
            err = float(np.max(np.abs(y.astype(np.float64) - oracle[name]))) if y.size else 0.0
            ok = y.dtype == np.dtype(dtype) and y.shape == oracle[name].shape
            ok = ok and err <= TOLERANCE[dtype]
            seconds = _median_seconds(functools.partial(fn, *args), block, repeat)
            rows.append(
                {
                    "backend": backend,
                    "function": name,
                    "max_abs_error": err,
                    "seconds_per_call": seconds,
                    "ok": ok,
                }
            )
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        f"{'backend':<8} {'function':<27} {'max abs error':>14} {'time per call':>14}  verdict",
    ]
    for r in rows:
        lines.append(
            f"{r['backend']:<8} {r['function']:<27} {r['max_abs_error']:>14.3g} "
            f"{r['seconds_per_call'] * 1e3:>11.3f} ms  {'ok' if r['ok'] else 'FAIL'}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _jax_x64(enable: bool) -> Iterator[None]:
    """JAX float64 for the duration of the check, when JAX is installed; restored afterwards."""
    try:
        import jax
    except ImportError:
        enable = False
    if not enable:
        yield
        return
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dualstep", description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=64, help="time steps (default 64)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--features", type=int, default=256, help="neurons (default 256)")
    parser.add_argument("--dtype", choices=sorted(TOLERANCE), default="float32")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per cell")
    args = parser.parse_args(argv)
    for flag in ("T", "batch", "features", "repeat"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be a positive integer; got {getattr(args, flag)}")
    print(
        f"dualstep {ds.__version__}: LIF (tau=2) on random input, T={args.T}, "
        f"batch={args.batch}, features={args.features}, {args.dtype}; "
        "error against the NumPy float64 oracle"
    )
    with _jax_x64(args.dtype == "float64"):
        rows = check(args.T, args.batch, args.features, args.dtype, args.repeat)
    print(_table(rows))
    failed = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} agree, {len(failed)} disagree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

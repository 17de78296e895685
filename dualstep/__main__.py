"""`python -m dualstep` (or `dualstep`): check the five functions on every installed backend.

Subcommands:

- ``check`` (the default): an embedded example (LIF neurons on random input, an affine+tanh
  layer for the stateless functions) runs through all five functions, and the three multi-step
  ones with ``lengths=`` (``example_lengths``), on NumPy, torch and JAX,
  whichever are installed, and prints, per backend and function, the max abs difference from
  the NumPy float64 oracle, the median time per call and a verdict (``--json``: the same rows as
  JSON). Exits 1 if any backend disagrees with the oracle.
- ``info``: dualstep's version, the installed backends with their versions and devices.
- ``nir FILE``: a NIR graph (``dualstep.nir``) on random input through the three multi-step
  functions on every installed backend against the NumPy float64 oracle, as a table of
  ``assert_backends_close`` (``--json``: its rows). Exits 1 if any backend disagrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import dualstep as ds
from dualstep.testing import (
    BACKENDS,
    FUNCTIONS,
    STATEFUL_FUNCTIONS,
    TIME_LAST_FUNCTIONS,
    TOLERANCES,
    affine_tanh,
    assert_backends_close,
    call,
    check_tolerance,
    import_error,
    installed_backends,
    jax_x64,
    lif_step,
)
from dualstep.testing._validate import CONVERT, why_not_installed

SPLIT = 16


def _block(y: Any) -> Any:
    """Wait for JAX's asynchronous dispatch on every array of `y` (an output, or a
    ``(y_seq, final_state)`` pair), so a timing covers the work."""
    jax = sys.modules.get("jax")
    return y if jax is None else jax.block_until_ready(y)


def _timed(function: str, x: Any, x_t_last: Any, v0: Any, lengths: Any = None) -> Callable[[], Any]:
    """One call of `function` on the example, in its own layout (`x` is ``[T, B, N]``,
    `x_t_last` ``[B, N, T]``): LIF with state `v0` for the multi-step functions (with
    `lengths`, if given), the affine+tanh layer for the stateless ones."""
    stateful = function in STATEFUL_FUNCTIONS
    return functools.partial(
        call,
        function,
        lif_step() if stateful else affine_tanh(),
        x_t_last if function in TIME_LAST_FUNCTIONS else x,
        state=v0 if stateful else None,
        split_size=SPLIT,
        **({} if lengths is None else {"lengths": lengths}),
    )


def example_lengths(steps: int, batch: int) -> np.ndarray:
    """The lengths of the check's variable-length rows: from T down, spread over the batch."""
    return np.array([steps - (steps * b) // batch for b in range(batch)], np.int32)


def _median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    _block(fn())  # warm-up: JAX compiles here
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(
    steps: int,
    batch: int,
    features: int,
    dtype: str,
    repeat: int,
    rtol: float | None = None,
    atol: float | None = None,
    backends: tuple[str, ...] | None = None,
) -> list[dict]:
    """Every backend of `backends` (default: every installed one) and function against the
    oracle (`assert_backends_close`, its tolerance rule), each timed."""
    rng = np.random.default_rng(0)
    # Inputs on a dyadic grid keep LIF (tau=2) exact in float32, so spikes match the oracle.
    x = (rng.integers(-16, 17, size=(steps, batch, features)) / 8).astype(dtype)
    inputs = (x, np.moveaxis(x, 0, -1).copy(), np.zeros((batch, features), dtype))
    if backends is None:
        backends = installed_backends()
        for backend in BACKENDS:
            if backend not in backends:
                print(_missing(backend), file=sys.stderr)
    compare = functools.partial(
        assert_backends_close, backends=backends, rtol=rtol, atol=atol, check=False
    )
    lengths = example_lengths(steps, batch)
    reports = [
        (None, compare(lif_step(), x, state=inputs[2], split_size=SPLIT)),
        (
            None,
            compare(
                affine_tanh(), x, functions=[f for f in FUNCTIONS if f not in STATEFUL_FUNCTIONS]
            ),
        ),
        (lengths, compare(lif_step(), x, state=inputs[2], split_size=SPLIT, lengths=lengths)),
    ]
    rows = []
    results = [(given, r) for given, report in reports for r in report.rows]
    for given, row in sorted(
        results,
        key=lambda g_r: (
            BACKENDS.index(g_r[1].backend),
            g_r[0] is not None,
            FUNCTIONS.index(g_r[1].function),
        ),
    ):
        args = [CONVERT[row.backend](a) for a in inputs]
        on_backend = None if given is None else CONVERT[row.backend](given)
        timed = _timed(row.function, args[0], args[1], args[2], on_backend)
        rows.append(
            {
                "backend": row.backend,
                "function": row.function,
                "lengths": given is not None,
                "max_abs_error": row.max_abs_error,
                "seconds_per_call": _median_seconds(timed, repeat),
                "ok": row.ok,
            }
        )
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        f"{'backend':<8} {'function':<36} {'max abs error':>14} {'time per call':>14}  verdict",
    ]
    for r in rows:
        function = r["function"] + (", lengths=" if r["lengths"] else "")
        lines.append(
            f"{r['backend']:<8} {function:<36} {r['max_abs_error']:>14.3g} "
            f"{r['seconds_per_call'] * 1e3:>11.3f} ms  {'ok' if r['ok'] else 'FAIL'}"
        )
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> int:
    _check_memory(args)
    with jax_x64(args.dtype == "float64"):
        rows = check(
            args.T,
            args.batch,
            args.features,
            args.dtype,
            args.repeat,
            args.rtol,
            args.atol,
            args.backends,
        )
    failed = [r for r in rows if not r["ok"]]
    if args.json:
        settings = {k: getattr(args, k) for k in ("T", "batch", "features", "dtype")}
        settings["backends"] = sorted({r["backend"] for r in rows}, key=BACKENDS.index)
        print(json.dumps({"version": ds.__version__, **settings, "rows": rows}, indent=1))
        return 1 if failed else 0
    print(
        f"dualstep {ds.__version__}: LIF (tau=2) on random input, T={args.T}, "
        f"batch={args.batch}, features={args.features}, {args.dtype}; "
        "error against the NumPy float64 oracle"
    )
    print(_table(rows))
    print(f"{len(rows) - len(failed)} agree, {len(failed)} disagree")
    return 1 if failed else 0


# Arrays of the example's size that `check` holds at once, counted in float64 elements: the
# input in its dtype and time last, the float64 oracle's input, output and state, and each
# backend's copies of the input and its output. An estimate, counted from the code and rounded
# up, not a measured peak.
_COPIES = 12


class UsageError(Exception):
    """Bad input to a subcommand: printed as one line, exit status 2 (argparse's)."""


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform tells
        return None


def _check_memory(args: argparse.Namespace) -> None:
    """Refuse sizes that cannot fit before allocating anything (an allocation that fails
    late, or an out-of-memory kill, would be worse than a usage error)."""
    need = args.T * args.batch * args.features * 8 * _COPIES
    have = _memory_bytes()
    if have is not None and need > have:
        raise UsageError(
            f"--T {args.T} x --batch {args.batch} x --features {args.features} needs about "
            f"{need / 2**30:.3g} GiB; this machine has {have / 2**30:.3g} GiB"
        )


def info() -> dict[str, Any]:
    """dualstep's version, Python's, and each backend's version and devices (None if absent)."""
    out: dict[str, Any] = {
        "dualstep": ds.__version__,
        "python": platform.python_version(),
        "backends": {"numpy": {"version": np.__version__, "devices": ["cpu"]}},
    }
    installed = installed_backends()
    for name in BACKENDS[1:]:
        if name not in installed:
            broken = import_error(name)
            out["backends"][name] = None if broken is None else {"error": broken}
            continue
        module = importlib.import_module(name)
        if name == "torch":
            devices = ["cpu"] + [f"cuda:{i}" for i in range(module.cuda.device_count())]
        else:  # CPU first, as for torch; jax.devices() lists the default platform's only
            cpu = module.devices("cpu")
            devices = [str(d) for d in cpu + [d for d in module.devices() if d not in cpu]]
        out["backends"][name] = {"version": module.__version__, "devices": devices}
    spec = importlib.util.find_spec("spikingjelly")
    out["spikingjelly"] = importlib.metadata.version("spikingjelly") if spec else None
    return out


def _info(args: argparse.Namespace) -> int:
    found = info()
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    print(f"dualstep {found['dualstep']} on Python {found['python']}")
    for name, entry in found["backends"].items():
        if entry is None:
            print(f"  {name:<6} not installed: pip install 'dualstep[{name}]'")
        elif "error" in entry:
            print(f"  {name:<6} installed but fails to import: {entry['error']}")
        else:
            print(f"  {name:<6} {entry['version']:<12} devices: {', '.join(entry['devices'])}")
    sj = found["spikingjelly"]
    print(f"  spikingjelly {sj}" if sj else "  spikingjelly not installed (optional)")
    return 0


def run_nir(model: Any, steps: int, batch: int, seed: int) -> Any:
    """The report of a loaded NIR graph (`dualstep.nir.load`) on random input in [0, 2)
    against the float64 oracle."""
    rng = np.random.default_rng(seed)
    x = (rng.random((steps, batch, *model.input_shape)) * 2).astype(np.float32)
    return assert_backends_close(model.step, x, state=model.initial_state(x), check=False)


def _nir(args: argparse.Namespace) -> int:
    from dualstep.nir import UnsupportedNode, load

    try:
        model = load(
            args.file, dt=args.dt, convention=args.convention, type_check=not args.no_type_check
        )
    except (ImportError, ValueError, UnsupportedNode) as error:  # NIRFileError: a ValueError
        raise UsageError(str(error)) from error
    report = run_nir(model, args.T, args.batch, args.seed)
    if args.json:
        # A row's errors per step are for Report.plot; the JSON keeps the summary.
        rows = [
            {k: v for k, v in dataclasses.asdict(r).items() if k != "per_step"} for r in report.rows
        ]
        settings = {k: getattr(args, k) for k in ("file", "dt", "convention", "T", "batch", "seed")}
        print(json.dumps({"version": ds.__version__, **settings, "rows": rows}, indent=1))
    else:
        print(
            f"dualstep {ds.__version__}: {args.file} (dt={args.dt:g}, convention="
            f"{args.convention}) on random input, T={args.T}, batch={args.batch}; "
            "against the NumPy float64 oracle"
        )
        print(report)
        bad = sum(not r.ok for r in report.rows)
        print(f"{len(report.rows) - bad} agree, {bad} disagree")
    return 0 if report.ok else 1


def _missing(name: str) -> str:
    """Why backend `name` is not run (`check` goes on with the others)."""
    reason = why_not_installed(name)
    return f"{reason}; the others run" if import_error(name) is not None else reason


# Argument types raise ArgumentTypeError, so that argparse's message names the option
# ("argument --T: must be a positive integer; got 'abc'").
def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argument type: an int of at least `low` (`what` says so in the error)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a {what} integer; got {text!r}")
        return value

    return convert


_positive_int = _int_at_least(1, "positive")
_seed = _int_at_least(0, "non-negative")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite positive number; got {text!r}")
    return value


def _tolerance_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number; got {text!r}") from None
    try:
        return check_tolerance(value, "tolerance")  # type: ignore[return-value]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be finite and non-negative; got {text!r}") from None


def _backend_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in BACKENDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of {', '.join(BACKENDS)}; got {text!r}"
        )
    missing = [name for name in names if name not in installed_backends()]
    if missing:
        raise argparse.ArgumentTypeError("; ".join(why_not_installed(name) for name in missing))
    return tuple(dict.fromkeys(names))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualstep", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dualstep {ds.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{check,info,nir}")
    check_args = commands.add_parser("check", help="validate every backend (the default)")
    check_args.add_argument("--T", type=_positive_int, default=64, help="time steps (default 64)")
    check_args.add_argument("--batch", type=_positive_int, default=32, help="batch (default 32)")
    check_args.add_argument(
        "--features", type=_positive_int, default=256, help="neurons (default 256)"
    )
    check_args.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    check_args.add_argument(
        "--rtol",
        type=_tolerance_value,
        help=f"relative tolerance, finite and >= 0 (default by dtype: {TOLERANCES})",
    )
    check_args.add_argument(
        "--atol", type=_tolerance_value, help="absolute tolerance, finite and >= 0 (by dtype)"
    )
    check_args.add_argument(
        "--backends",
        type=_backend_list,
        metavar="LIST",
        help=f"comma-separated, among {','.join(BACKENDS)} (default: every installed one)",
    )
    check_args.add_argument("--repeat", type=_positive_int, default=10, help="timed calls per cell")
    check_args.add_argument("--json", action="store_true", help="print the rows as JSON")
    info_args = commands.add_parser("info", help="installed backends, versions and devices")
    info_args.add_argument("--json", action="store_true", help="print as JSON")
    nir_args = commands.add_parser("nir", help="a NIR file on every backend (dualstep[nir])")
    nir_args.add_argument("file", help="a graph written by nir.write")
    nir_args.add_argument(
        "--dt", type=_positive_float, default=1e-4, help="time step (default 1e-4)"
    )
    nir_args.add_argument(
        "--convention", choices=["nir", "snntorch", "spikingjelly"], default="nir"
    )
    nir_args.add_argument("--T", type=_positive_int, default=32, help="time steps (default 32)")
    nir_args.add_argument("--batch", type=_positive_int, default=4, help="batch (default 4)")
    nir_args.add_argument(
        "--no-type-check",
        action="store_true",
        help="read without nir's type check (graphs that fail it but run)",
    )
    nir_args.add_argument("--seed", type=_seed, default=0, help="input seed (default 0)")
    nir_args.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "check")  # `dualstep --T 8` means `dualstep check --T 8`
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {"check": _check, "info": _info, "nir": _nir}
    try:
        return commands[args.command](args)
    except UsageError as error:
        parser.exit(2, f"dualstep {args.command}: error: {error}\n")
    except MemoryError as error:  # the estimate in _check_memory was too low for this machine
        parser.exit(2, f"dualstep {args.command}: error: out of memory: {error}\n")


if __name__ == "__main__":
    sys.exit(main())

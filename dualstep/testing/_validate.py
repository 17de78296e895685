"""`assert_backends_close`: one step function, every forward function, every backend, one oracle."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace

import dualstep as ds

from .. import interop
from .._tree import leaves_with_path

FUNCTIONS = (
    "multi_step_forward",
    "t_last_multi_step_forward",
    "chunk_multi_step_forward",
    "seq_to_ann_forward",
    "t_last_seq_to_ann_forward",
)
_STATEFUL = FUNCTIONS[:3]
BACKENDS = ("numpy", "torch", "jax")
CONVERT = {"numpy": interop.to_numpy, "torch": interop.to_torch, "jax": interop.to_jax}

# (rtol, atol) by dtype name; integer and bool outputs must match exactly.
TOLERANCES = {
    "float16": (1e-3, 1e-3),
    "bfloat16": (1e-2, 1e-2),
    "float32": (2e-5, 2e-6),
    "float64": (1e-12, 1e-12),
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One backend and function against the oracle.

    `first_bad_step` is the first time step (index into ``T``) whose output is outside the
    tolerance, ``"final state"`` when only the final state is, ``"dtype"`` or ``"shape"`` when
    those differ, ``None`` when all agree. The errors are those at that step (over the whole
    output when all agree); the relative error of two values is
    ``|got - want| / max(|got|, |want|)``, between 0 and 2, so it stays meaningful near zero.
    """

    backend: str
    function: str
    max_abs_error: float
    max_rel_error: float
    first_bad_step: int | str | None
    dtype: str

    @property
    def ok(self) -> bool:
        return self.first_bad_step is None


@dataclasses.dataclass(frozen=True)
class Report:
    """The result of `assert_backends_close`; ``str(report)`` is a table."""

    rows: tuple[Row, ...]
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def __str__(self) -> str:
        lines = [
            f"{'backend':<8} {'function':<27} {'dtype':<9} {'max abs err':>11} "
            f"{'max rel err':>11}  first bad step  (rtol={self.rtol:g}, atol={self.atol:g})"
        ]
        for r in self.rows:
            bad = "-" if r.first_bad_step is None else str(r.first_bad_step)
            lines.append(
                f"{r.backend:<8} {r.function:<27} {r.dtype:<9} {r.max_abs_error:>11.3g} "
                f"{r.max_rel_error:>11.3g}  {bad:<14}  {'ok' if r.ok else 'FAIL'}"
            )
        return "\n".join(lines)


def installed_backends() -> tuple[str, ...]:
    """The backends whose framework can be imported here (NumPy always)."""
    return tuple(b for b in BACKENDS if b == "numpy" or importlib.util.find_spec(b) is not None)


def _check_backends(backends: Sequence[str] | None) -> tuple[str, ...]:
    if backends is None:
        return installed_backends()
    backends = tuple(backends)
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"`backends` entries must be among {BACKENDS}; got {b!r}")
        if b not in installed_backends():
            raise ValueError(f"{b} is not installed: pip install 'dualstep[{b}]'")
    return backends


def _check_functions(functions: Sequence[str] | None, stateful: bool) -> tuple[str, ...]:
    if functions is None:
        return _STATEFUL if stateful else FUNCTIONS
    functions = (functions,) if isinstance(functions, str) else tuple(functions)
    for f in functions:
        if f not in FUNCTIONS:
            raise ValueError(f"`functions` entries must be among {FUNCTIONS}; got {f!r}")
        if stateful and f not in _STATEFUL:
            raise ValueError(f"`{f}` takes no `state`; drop it from `functions` or pass no state")
    return functions


def _move_time(y: Any, src: int, dst: int) -> Any:
    if isinstance(y, tuple):
        return tuple(_move_time(a, src, dst) for a in y)
    return array_namespace(y).moveaxis(y, src, dst)


def _run(function: str, step: Any, x: Any, state: Any, split_size: int) -> tuple[Any, Any]:
    """Call `function` on time-first `x`: ``(y_seq time-first, final state or None)``."""
    kwargs = {} if state is None else {"state": state}
    if function == "seq_to_ann_forward":
        return ds.seq_to_ann_forward(x, step), None
    if function == "t_last_seq_to_ann_forward":
        return _move_time(ds.t_last_seq_to_ann_forward(_move_time(x, 0, -1), step), -1, 0), None
    if function == "multi_step_forward":
        out = ds.multi_step_forward(x, step, **kwargs)
    elif function == "t_last_multi_step_forward":
        out = ds.t_last_multi_step_forward(_move_time(x, 0, -1), step, **kwargs)
    else:

        def chunk(xc: Any, *s: Any) -> Any:
            return ds.multi_step_forward(xc, step, **({"state": s[0]} if s else {}))

        out = ds.chunk_multi_step_forward(split_size, x, chunk, **kwargs)
    y, final = out if state is not None else (out, None)
    if function == "t_last_multi_step_forward":
        y = _move_time(y, -1, 0)
    return y, final


def _leaves(tree: Any) -> list:
    """The arrays of `tree`, dicts by sorted key (JAX's order, so backends line up)."""
    return [leaf for _, leaf in leaves_with_path(tree, "", sort_keys=True) if leaf is not None]


def _errors(got: Any, want: np.ndarray, tolerance: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """Absolute and relative error per element in float64, and where the absolute error
    exceeds ``atol + rtol * |want|`` for ``tolerance = (rtol, atol)``.

    Both are 0 where the values are equal (both NaN included). The relative error is
    ``|got - want| / max(|got|, |want|)``: at most 2, and meaningful near zero, where dividing
    by ``|want|`` alone explodes (a planted divergence once read 4.49e+307). A NaN or infinity
    against anything else counts as 2.
    """
    g, w = interop.to_numpy(got).astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        equal = (g == w) | (np.isnan(g) & np.isnan(w))
        abs_err = np.nan_to_num(np.where(equal, 0.0, np.abs(g - w)), nan=np.inf)
        rel_err = abs_err / np.maximum(np.abs(g), np.abs(w))
    rel_err = np.where(equal, 0.0, np.nan_to_num(rel_err, nan=2.0, posinf=2.0))
    rtol, atol = tolerance
    return abs_err, rel_err, abs_err > atol + rtol * np.abs(w)


def _compare(
    backend: str,
    function: str,
    ys: list,
    finals: list,
    want_ys: list,
    want_finals: list,
    dtypes: list,
    tolerance: Callable[[str], tuple[float, float]],
) -> Row:
    """One row: the first time step of any output that is out of tolerance, else the state."""

    def row(abs_e: float, rel_e: float, bad: int | str | None, dtype: str) -> Row:
        return Row(backend, function, abs_e, rel_e, bad, dtype)

    dtype = dtypes[0] if dtypes else "-"
    if len(ys) != len(want_ys) or len(finals) != len(want_finals):
        return row(np.nan, np.nan, "structure", dtype)
    for got, want, expected_dtype in zip(ys + finals, want_ys + want_finals, dtypes, strict=True):
        if interop._dtype_name(got) != expected_dtype:
            return row(np.nan, np.nan, "dtype", f"{interop._dtype_name(got)}!={expected_dtype}")
        if tuple(got.shape) != tuple(want.shape):
            return row(np.nan, np.nan, "shape", expected_dtype)
    worst_abs = worst_rel = 0.0
    first: tuple[int, float, float] | None = None
    for got, want, expected_dtype in zip(ys, want_ys, dtypes, strict=False):
        abs_err, rel_err, bad = _errors(got, want, tolerance(expected_dtype))
        worst_abs = max(worst_abs, float(abs_err.max(initial=0.0)))
        worst_rel = max(worst_rel, float(rel_err.max(initial=0.0)))
        steps = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
        if len(steps) and (first is None or steps[0] < first[0]):
            t = int(steps[0])
            first = (t, float(abs_err[t].max()), float(rel_err[t].max()))
    if first is not None:
        return row(first[1], first[2], first[0], dtype)
    for got, want, expected_dtype in zip(finals, want_finals, dtypes[len(ys) :], strict=True):
        abs_err, rel_err, bad = _errors(got, want, tolerance(expected_dtype))
        if bad.any():
            return row(float(abs_err.max()), float(rel_err.max()), "final state", dtype)
    return row(worst_abs, worst_rel, None, dtype)


@contextlib.contextmanager
def jax_x64(enable: bool) -> Iterator[None]:
    """JAX float64 for the duration, when JAX is installed and `enable`; restored afterwards."""
    if not enable or importlib.util.find_spec("jax") is None:
        yield
        return
    import jax

    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def assert_backends_close(
    step: Any,
    x_seq: Any,
    *,
    state: Any = None,
    functions: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    split_size: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Report:
    """Check that a step function gives the same results on every backend and function.

    `step` (a step function written against the array API, or a list of them) runs through each
    of `functions` on each of `backends`, with `x_seq` and `state` converted to that backend in
    `x_seq`'s dtype. Every output is compared with the oracle: `multi_step_forward` on NumPy in
    float64. The output dtypes must equal those NumPy gives in `x_seq`'s dtype.

    Parameters
    ----------
    step : callable or list of callables
        ``step(x) -> y``, or ``step(x, s) -> (y, s)`` when `state` is given.
    x_seq : array, shape ``[T, batch_size, ...]``
        Time first, any backend (converted to NumPy first); the t_last functions get it with
        time moved last.
    state : array or nesting of arrays, optional
        The initial state; then only the three multi-step functions apply.
    functions : sequence of str, optional
        Names of dualstep functions; default all five without `state`, the three multi-step
        ones with it.
    backends : sequence of str, optional
        Among ``"numpy"``, ``"torch"``, ``"jax"``; default every installed one. A named
        backend that is not installed is an error. 64-bit inputs switch JAX to x64 for the
        duration of the call.
    split_size : int, optional
        For `chunk_multi_step_forward`; default ``max(1, T // 3)``, so chunks end unevenly.
    rtol, atol : float, optional
        Default by the output's dtype: float16 1e-3/1e-3, bfloat16 1e-2/1e-2, float32
        2e-5/2e-6, float64 1e-12/1e-12; integer and bool outputs must be equal.

    Returns
    -------
    Report
        Per backend and function: max abs and rel error, first bad time step. ``str(report)``
        is a table.

    Raises
    ------
    AssertionError
        Any backend or function disagrees; the message is the report, naming the backend, the
        function, the first time step that diverges and the errors there.
    ValueError
        An unknown or uninstalled backend, an unknown function, or `state` with a function
        that takes none.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import assert_backends_close, lif_step
    >>> x = np.linspace(-1, 2, 24).reshape(6, 2, 2)
    >>> report = assert_backends_close(lif_step(), x, state=np.zeros((2, 2)), backends=["numpy"])
    >>> [(r.function, r.ok) for r in report.rows]  # doctest: +NORMALIZE_WHITESPACE
    [('multi_step_forward', True), ('t_last_multi_step_forward', True),
     ('chunk_multi_step_forward', True)]
    """
    x = interop.to_numpy(x_seq)
    state = interop.to_numpy(state)
    functions = _check_functions(functions, state is not None)
    backends = _check_backends(backends)
    t = x.shape[0] if x.ndim else 0
    split = split_size if split_size is not None else max(1, t // 3)

    def f64(tree: Any) -> Any:
        return interop._map(tree, lambda a, kind, path: a.astype(np.float64), "state")

    oracle_y, oracle_s = _run("multi_step_forward", step, f64(x), f64(state), split)
    native_y, native_s = _run("multi_step_forward", step, x, state, split)
    want_ys, want_finals = _leaves(oracle_y), _leaves(oracle_s)
    dtypes = [interop._dtype_name(a) for a in _leaves(native_y) + _leaves(native_s)]

    def tolerance(dtype: str) -> tuple[float, float]:
        r, a = TOLERANCES.get(dtype, (0.0, 0.0))
        return (r if rtol is None else rtol), (a if atol is None else atol)

    rows = []
    wide = any(interop.needs_x64(a) for a in [x, *_leaves(state)])
    with jax_x64(wide and "jax" in backends):
        for backend in backends:
            convert = CONVERT[backend]
            for function in functions:
                y, final = _run(function, step, convert(x), convert(state), split)
                rows.append(
                    _compare(
                        backend,
                        function,
                        _leaves(y),
                        _leaves(final),
                        want_ys,
                        want_finals,
                        dtypes,
                        tolerance,
                    )
                )
    first_dtype = dtypes[0] if dtypes else "float64"
    report = Report(tuple(rows), *tolerance(first_dtype))
    if not report.ok:
        raise AssertionError("backends disagree with the NumPy float64 oracle:\n" + str(report))
    return report

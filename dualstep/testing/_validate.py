"""`assert_backends_close`: one step function, every forward function, every backend, one oracle."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import interop
from .._api import _step_mode_of, _stepping_modules
from .._dispatch import dtype_name, kind_of
from .._modules import memory_modules
from .._tree import leaves_with_path, map_with_path
from ._functions import FUNCTIONS, STATEFUL_FUNCTIONS, call, call_time_first

BACKENDS = ("numpy", "torch", "jax")
"""The backend names, the float64 oracle's first."""
CONVERT = {"numpy": interop.to_numpy, "torch": interop.to_torch, "jax": interop.to_jax}

TOLERANCES = {
    "float16": (1e-3, 1e-3),
    "bfloat16": (1e-2, 1e-2),
    "float32": (2e-5, 2e-6),
    "float64": (1e-12, 1e-12),
}
"""`(rtol, atol)` by dtype name: a value passes when `|got - want| <= atol + rtol * |want|`;
integer and bool outputs must match exactly."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One backend and function against the oracle.

    `first_bad_step` is the first time step (index into ``T``) whose output is outside the
    tolerance, ``"final state"`` when only the final state is, ``"dtype"``, ``"shape"`` or
    ``"structure"`` when those differ, ``None`` when all agree. `leaf` names the output or
    state array concerned (``y``, ``y[1]``, ``state['v']``): the one that diverged first, or
    every leaf its own row in :func:`assert_implementations_close`. The errors are those at
    that step (over the whole output when all agree); the relative error of two values is
    ``|got - want| / max(|got|, |want|)``, between 0 and 2, so it stays meaningful near zero.
    `per_step` is the error of each time step over the tolerance (of an output compared over
    time; empty otherwise): the largest ``|got - want| / (atol + rtol * |want|)`` of the step's
    elements, so a step is out of tolerance where it exceeds 1 (:meth:`Report.plot`).

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import assert_backends_close, lif_step
    >>> x, v0 = np.ones((4, 2)), np.zeros(2)
    >>> row = assert_backends_close(lif_step(), x, state=v0, backends=["numpy"]).rows[0]
    >>> row.backend, row.function, row.ok, row.first_bad_step
    ('numpy', 'multi_step_forward', True, None)
    """

    backend: str
    function: str
    max_abs_error: float
    max_rel_error: float
    first_bad_step: int | str | None
    dtype: str
    leaf: str = ""
    # Why nothing was compared on this row (the final states of two structures), else "".
    not_compared: str = ""
    per_step: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return self.first_bad_step is None


@dataclasses.dataclass(frozen=True)
class Report:
    """The result of `assert_backends_close`; ``str(report)`` is a table.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import assert_backends_close, lif_step
    >>> x, v0 = np.ones((4, 2)), np.zeros(2)
    >>> report = assert_backends_close(lif_step(), x, state=v0, backends=["numpy"])
    >>> report.ok, len(report.rows)  # one row per function (and compared array)
    (True, 3)
    """

    rows: tuple[Row, ...]
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def __str__(self) -> str:
        wide = max([8, *(len(r.backend) for r in self.rows)])
        leaf = max([4, *(len(r.leaf) for r in self.rows)])
        lines = [
            f"{'backend':<{wide}} {'function':<27} {'dtype':<9} {'max abs err':>11} "
            f"{'max rel err':>11}  first bad step  {'leaf':<{leaf}}  "
            f"(rtol={self.rtol:g}, atol={self.atol:g})"
        ]
        for r in self.rows:
            bad = "-" if r.first_bad_step is None else str(r.first_bad_step)
            verdict = f"not compared: {r.not_compared}" if r.not_compared else "ok"
            lines.append(
                f"{r.backend:<{wide}} {r.function:<27} {r.dtype:<9} {r.max_abs_error:>11.3g} "
                f"{r.max_rel_error:>11.3g}  {bad:<14}  {r.leaf or '-':<{leaf}}  "
                f"{verdict if r.ok else 'FAIL'}"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """The rows' errors per time step over the tolerance, as a matplotlib figure.

        One line per row compared over time (each output leaf of a port, each backend of
        :func:`assert_backends_close`), on a log scale; the tolerance is the dashed line at
        1, and each row's first bad step is circled and named in the legend. matplotlib is
        imported here only.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure by default.

        Returns
        -------
        matplotlib.figure.Figure
            The figure drawn on (``fig.savefig(path)`` writes it).

        Raises
        ------
        ImportError
            matplotlib is not installed (``pip install 'dualstep[bench]'``).
        ValueError
            No row was compared over time (a report of final states or structures only).
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "`Report.plot` needs matplotlib: pip install 'dualstep[bench]'"
            ) from error
        rows = [r for r in self.rows if r.per_step]
        if not rows:
            raise ValueError("`Report.plot` needs a row compared over time; this report has none")
        if ax is None:
            ax = Figure(figsize=(7.0, 3.6), layout="constrained").add_subplot()
        positive = [v for r in rows for v in r.per_step if 0 < v < np.inf]
        floor = min([1e-3, *positive]) / 2  # steps without error, drawn at the bottom
        for r in rows:
            values = np.clip(np.asarray(r.per_step), floor, 1e12)
            label = f"{r.leaf or r.function} ({r.backend})"
            if isinstance(r.first_bad_step, int):
                label += f", first bad step {r.first_bad_step}"
            (line,) = ax.plot(np.arange(len(values)), values, marker=".", label=label)
            if isinstance(r.first_bad_step, int):
                t = r.first_bad_step
                ax.plot([t], [values[t]], "o", ms=11, mfc="none", color=line.get_color())
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="tolerance")
        ax.set_yscale("log")
        ax.set_xlabel("time step")
        ax.set_ylabel("error / tolerance")
        ax.set_title(f"rtol={self.rtol:g}, atol={self.atol:g}", fontsize="small")
        ax.legend(fontsize="small")
        return ax.figure


_import_errors: dict[str, str | None] = {}


def import_error(name: str) -> str | None:
    """Why framework `name` fails to import although it is installed (a broken install), as
    ``"ImportError: ..."``; None when it imports or is not installed. Tried once.

    Examples
    --------
    >>> from dualstep.testing import import_error
    >>> import_error("numpy") is None  # installed and importable
    True
    """
    if name not in _import_errors:
        _import_errors[name] = None
        if importlib.util.find_spec(name) is not None:
            try:
                importlib.import_module(name)
            except Exception as error:  # any failure at import is a broken install
                _import_errors[name] = f"{type(error).__name__}: {error}"
    return _import_errors[name]


def installed_backends() -> tuple[str, ...]:
    """The backends whose framework is installed and imports here (NumPy always); see
    :func:`import_error` for one that is installed but broken.

    Examples
    --------
    >>> from dualstep.testing import installed_backends
    >>> "numpy" in installed_backends()
    True
    """
    return tuple(
        b
        for b in BACKENDS
        if b == "numpy" or (importlib.util.find_spec(b) is not None and import_error(b) is None)
    )


def _check_backends(backends: Sequence[str] | None) -> tuple[str, ...]:
    if backends is None:
        return installed_backends()
    backends = tuple(backends)
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"`backends` entries must be among {BACKENDS}; got {b!r}")
        if b not in installed_backends():
            raise ValueError(why_not_installed(b))
    return backends


def why_not_installed(name: str) -> str:
    """Why backend `name` cannot run here: not installed (with its install command), or
    installed but failing to import (with the error)."""
    broken = import_error(name)
    if broken is not None:
        return f"{name} is installed but fails to import ({broken})"
    return f"{name} is not installed: pip install 'dualstep[{name}]'"


def _check_functions(functions: Sequence[str] | None, stateful: bool) -> tuple[str, ...]:
    if functions is None:
        return STATEFUL_FUNCTIONS if stateful else FUNCTIONS
    functions = (functions,) if isinstance(functions, str) else tuple(functions)
    for f in functions:
        if f not in FUNCTIONS:
            raise ValueError(f"`functions` entries must be among {FUNCTIONS}; got {f!r}")
        if stateful and f not in STATEFUL_FUNCTIONS:
            raise ValueError(f"`{f}` takes no `state`; drop it from `functions` or pass no state")
    return functions


def _leaves(tree: Any) -> list:
    """The arrays of `tree`, dicts by sorted key (JAX's order, so backends line up)."""
    return [leaf for _, leaf in _named_leaves(tree, "")]


def _named_leaves(tree: Any, path: str) -> list[tuple[str, Any]]:
    return [(p, a) for p, a in leaves_with_path(tree, path, sort_keys=True) if a is not None]


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


def check_tolerance(value: Any, argument: str) -> float | None:
    """`value` as a float tolerance, or None; `argument` names it in the error.

    A tolerance must be a finite, non-negative real number: NaN would pass every comparison
    (``x > nan`` is False) and a negative one would fail identical values.

    Examples
    --------
    >>> from dualstep.testing import check_tolerance
    >>> check_tolerance(1e-5, "rtol"), check_tolerance(None, "atol")
    (1e-05, None)
    >>> check_tolerance(float("nan"), "rtol")
    Traceback (most recent call last):
        ...
    ValueError: `rtol` must be finite and non-negative; got nan
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"`{argument}` must be a real number or None; got {type(value).__qualname__}"
        )
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"`{argument}` must be finite and non-negative; got {float(value)!r}")
    return float(value)


def _tolerance(rtol: float | None, atol: float | None) -> Callable[[str], tuple[float, float]]:
    """``dtype name -> (rtol, atol)``: TOLERANCES by dtype (0 for integers and bool), with the
    caller's values where given (checked by :func:`check_tolerance`)."""
    rtol, atol = check_tolerance(rtol, "rtol"), check_tolerance(atol, "atol")

    def tolerance(dtype: str) -> tuple[float, float]:
        r, a = TOLERANCES.get(dtype, (0.0, 0.0))
        return (r if rtol is None else rtol), (a if atol is None else atol)

    return tolerance


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One array compared with its expected value."""

    path: str
    max_abs: float
    max_rel: float
    first_bad: int | str | None  # a time step, "final state", "dtype" or "shape"
    dtype: str
    per_step: tuple[float, ...] = ()  # each step's error over the tolerance (outputs)


def _compare_leaf(
    path: str,
    got: Any,
    want: np.ndarray,
    expected_dtype: str,
    tolerance: Callable[[str], tuple[float, float]],
    over_time: bool,
) -> _Leaf:
    """`got` against `want`: dtype, shape, then values, the first step out of tolerance (for
    an output, time first) or the whole array (a final state)."""
    dtype = dtype_name(got)
    if dtype != expected_dtype:
        return _Leaf(path, np.nan, np.nan, "dtype", f"{dtype}!={expected_dtype}")
    if tuple(got.shape) != tuple(want.shape):
        return _Leaf(path, np.nan, np.nan, "shape", dtype)
    rtol, atol = tolerance(expected_dtype)
    abs_err, rel_err, bad = _errors(got, want, (rtol, atol))
    worst = (float(abs_err.max(initial=0.0)), float(rel_err.max(initial=0.0)))
    if over_time and bad.ndim:
        with np.errstate(divide="ignore", invalid="ignore"):
            over = abs_err / (atol + rtol * np.abs(want.astype(np.float64)))
        over = np.where(abs_err == 0, 0.0, np.nan_to_num(over, nan=np.inf))
        per_step = tuple(float(v) for v in over.reshape(over.shape[0], -1).max(axis=1, initial=0))
        steps = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
        if len(steps):
            t = int(steps[0])
            errors = (float(abs_err[t].max()), float(rel_err[t].max()))
            return _Leaf(path, *errors, t, dtype, per_step)
        return _Leaf(path, *worst, None, dtype, per_step)
    if bad.any():
        return _Leaf(path, *worst, "final state", dtype)
    return _Leaf(path, *worst, None, dtype)


def _compare_all(
    got_ys: list,
    got_finals: list,
    want_ys: list,
    want_finals: list,
    dtypes: list,
    tolerance: Callable[[str], tuple[float, float]],
) -> list[_Leaf] | None:
    """Every leaf compared (outputs over time, then final states), or None when the two
    have another number of leaves. `got_*` hold ``(path, array)`` pairs."""
    if len(got_ys) != len(want_ys) or len(got_finals) != len(want_finals):
        return None
    pairs = [(p, g, w, True) for (p, g), w in zip(got_ys, want_ys, strict=True)]
    pairs += [(p, g, w, False) for (p, g), w in zip(got_finals, want_finals, strict=True)]
    return [
        _compare_leaf(path, got, want, dtype, tolerance, over_time)
        for (path, got, want, over_time), dtype in zip(pairs, dtypes, strict=True)
    ]


def _first_bad(leaves: list[_Leaf]) -> _Leaf | None:
    """The leaf that diverges first: a dtype or shape mismatch, else the earliest time step of
    an output, else a final state."""
    for leaf in leaves:
        if leaf.first_bad in ("dtype", "shape"):
            return leaf
    steps = [leaf for leaf in leaves if isinstance(leaf.first_bad, int)]
    if steps:
        return min(steps, key=lambda leaf: leaf.first_bad)  # type: ignore[arg-type, return-value]
    return next((leaf for leaf in leaves if leaf.first_bad is not None), None)


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
    dtype = dtypes[0] if dtypes else "-"
    leaves = _compare_all(ys, finals, want_ys, want_finals, dtypes, tolerance)
    if leaves is None:
        return Row(backend, function, np.nan, np.nan, "structure", dtype)
    bad = _first_bad(leaves)
    if bad is not None:
        row = _row(backend, function, bad)
        return row if bad.per_step else dataclasses.replace(row, per_step=_per_step(leaves))
    worst_abs = max((leaf.max_abs for leaf in leaves), default=0.0)
    worst_rel = max((leaf.max_rel for leaf in leaves), default=0.0)
    return Row(backend, function, worst_abs, worst_rel, None, dtype, per_step=_per_step(leaves))


def _row(backend: str, function: str, leaf: _Leaf) -> Row:
    """The row of one compared array."""
    errors = (leaf.max_abs, leaf.max_rel, leaf.first_bad, leaf.dtype, leaf.path)
    return Row(backend, function, *errors, per_step=leaf.per_step)


def _per_step(leaves: list[_Leaf]) -> tuple[float, ...]:
    """The largest error over the tolerance of each step among the outputs of one length."""
    curves = [leaf.per_step for leaf in leaves if leaf.per_step]
    if not curves or any(len(c) != len(curves[0]) for c in curves):
        return curves[0] if curves else ()
    return tuple(float(v) for v in np.max(np.asarray(curves), axis=0))


@contextlib.contextmanager
def jax_x64(enable: bool) -> Iterator[None]:
    """JAX float64 for the duration, when JAX is installed and `enable`; restored afterwards.

    Examples
    --------
    >>> import importlib.util
    >>> from dualstep.testing import jax_x64
    >>> with jax_x64(True):
    ...     if importlib.util.find_spec("jax"):
    ...         import jax.numpy as jnp
    ...         print(jnp.zeros(1).dtype)
    ...     else:  # without JAX there is nothing to switch
    ...         print("float64")
    float64
    """
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
    check: bool = True,
    lengths: Any = None,
    fill: float = 0.0,
) -> Report:
    """Check that a step function gives the same results on every backend and function.

    `step` (a step function written against the array API, or a list of them) runs through each
    of `functions` on each of `backends`, with `x_seq` and `state` converted to that backend in
    `x_seq`'s dtype. Every output is compared with the oracle: `multi_step_forward` on NumPy in
    float64 (on the first of `backends` when NumPy is not among them: a step written for one
    framework only). The output dtypes must equal those the oracle's backend gives in
    `x_seq`'s dtype.

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
    check : bool, default True
        Raise when anything disagrees; ``False`` returns the report either way.
    lengths : integer array or list of ints, shape ``[batch_size]``, optional
    fill : float, default 0.0
        Variable-length sequences (docs, "Variable-length sequences"): passed, converted,
        to every call, the oracle's included; needs `state`.

    Returns
    -------
    Report
        Per backend and function: max abs and rel error, first bad time step and the leaf
        that diverged. ``str(report)`` is a table.

    Raises
    ------
    AssertionError
        With `check`, any backend or function disagrees; the message is the report, naming the
        backend, the function, the first time step that diverges, the leaf and the errors.
    TypeError
        `rtol` or `atol` is not a real number.
    ValueError
        An unknown or uninstalled backend, an unknown function, `state` with a function
        that takes none, or `rtol` or `atol` is NaN, infinite or negative.

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
    tolerance = _tolerance(rtol, atol)
    t = x.shape[0] if x.ndim else 0
    split = split_size if split_size is not None else max(1, t // 3)
    given = _lengths_options(lengths, fill)

    def options(convert: Callable[[Any], Any]) -> dict:
        return {k: convert(v) if k == "lengths" else v for k, v in given.items()}

    def f64(tree: Any) -> Any:
        return map_with_path(lambda a, _: None if a is None else a.astype(np.float64), tree, "")

    # The oracle runs on NumPy; a step written for one framework only is checked against
    # that framework in float64 when NumPy is not among `backends`.
    oracle = "numpy" if "numpy" in backends else backends[0]
    to_oracle = CONVERT[oracle]
    with jax_x64(oracle == "jax"):
        oracle_y, oracle_s = call_time_first(
            "multi_step_forward",
            step,
            to_oracle(f64(x)),
            state=to_oracle(f64(state)),
            **options(to_oracle),
        )
        want_ys = [interop.to_numpy(a) for a in _leaves(oracle_y)]
        want_finals = [interop.to_numpy(a) for a in _leaves(oracle_s)]
        native_y, native_s = call_time_first(
            "multi_step_forward", step, to_oracle(x), state=to_oracle(state), **options(to_oracle)
        )
        dtypes = [dtype_name(a) for a in _leaves(native_y) + _leaves(native_s)]

    rows = []
    wide = any(interop.needs_x64(a) for a in [x, *_leaves(state)])
    with jax_x64(wide and "jax" in backends):
        for backend in backends:
            convert = CONVERT[backend]
            for function in functions:
                y, final = call_time_first(
                    function,
                    step,
                    convert(x),
                    state=convert(state),
                    split_size=split,
                    **options(convert),
                )
                rows.append(
                    _compare(
                        backend,
                        function,
                        _named_leaves(y, "y"),
                        _named_leaves(final, "state"),
                        want_ys,
                        want_finals,
                        dtypes,
                        tolerance,
                    )
                )
    first_dtype = dtypes[0] if dtypes else "float64"
    report = Report(tuple(rows), *tolerance(first_dtype))
    if check and not report.ok:
        raise AssertionError(f"backends disagree with the {oracle} float64 oracle:\n{report}")
    return report


def _side_backend(modules: Any, state: Any, x_seq: Any, given: str | None, side: str) -> str:
    """The backend one side runs on: `given`, else its state's kind, else torch for torch
    modules, else `x_seq`'s kind."""
    if given is not None:
        return _check_backends([given])[0]
    for leaf in _leaves(state):
        return "numpy" if isinstance(leaf, np.generic) else (kind_of(leaf) or "numpy")
    torch = sys.modules.get("torch")
    items = modules if isinstance(modules, (list, tuple)) else [modules]
    if torch is not None and any(isinstance(m, torch.nn.Module) for m in items):
        return "torch"
    kind = kind_of(x_seq)
    if kind is None:
        raise TypeError(f"`{side}_backend` is needed: nothing tells where `{side}` runs")
    return kind


def _lengths_options(lengths: Any, fill: float) -> dict:
    """The ``lengths=``/``fill=`` options of the calls a helper makes: the lengths as NumPy
    int32 (JAX takes them without x64), converted to each backend at its call."""
    if lengths is None:
        return {}
    return {"lengths": np.asarray(interop.to_numpy(lengths), np.int32), "fill": fill}


def _multi_step(modules: Any) -> bool:
    """Whether `modules` take the whole sequence: an outermost SpikingJelly step module in
    step mode 'm' (``step_mode="m"``, a ``MultiStepContainer``...)."""
    return any(_step_mode_of(m) == "m" for m in _stepping_modules(modules, with_memory=False))


def _run_side(
    modules: Any, backend: str, x: np.ndarray, state: Any, options: dict
) -> tuple[Any, Any]:
    """One side over the whole sequence on its backend, from fresh hidden memory, which is
    reset again afterwards (the caller's next call starts fresh, as before the comparison).

    Single-step modules run through `multi_step_forward`; multi-step ones (SpikingJelly's
    ``step_mode="m"``) are called once on the whole sequence, as
    ``chunk_multi_step_forward`` with one chunk.
    """
    memory = memory_modules(modules)
    for module in memory:
        module.reset()
    convert = CONVERT[backend]
    state = None if state is None else convert(state)
    with _buffers_restored(modules):
        options = {k: convert(v) if k == "lengths" else v for k, v in options.items()}
        try:
            if not _multi_step(modules):
                return call_time_first(
                    "multi_step_forward", modules, convert(x), state=state, **options
                )
            out = call(
                "chunk_multi_step_forward",
                modules,
                convert(x),
                state=state,
                split_size=max(1, x.shape[0]),
                as_given=True,
                **options,
            )
            return (out, None) if state is None else out
        finally:
            for module in memory:
                module.reset()


@contextlib.contextmanager
def _buffers_restored(modules: Any) -> Iterator[None]:
    """The torch modules' buffers as they were before (a run in training mode updates batch
    norm's running statistics): the comparison leaves the model as it found it."""
    items = modules if isinstance(modules, (list, tuple)) else [modules]
    buffers = [b for m in items if hasattr(m, "named_buffers") for _, b in m.named_buffers()]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        if buffers:
            import torch

            with torch.no_grad():
                for b, value in zip(buffers, saved, strict=True):
                    b.copy_(value)


def _paths(leaves: list[tuple[str, Any]]) -> list[str]:
    return [path for path, _ in leaves]


def assert_implementations_close(
    reference: Any,
    candidate: Any,
    x_seq: Any,
    *,
    reference_state: Any = None,
    candidate_state: Any = None,
    reference_backend: str | None = None,
    candidate_backend: str | None = None,
    compare_state: bool | Callable[[Any], Any] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    check: bool = True,
    compare_grads: bool = False,
    lengths: Any = None,
    fill: float = 0.0,
) -> Report:
    """Check, step by step, that two implementations of one model agree: a port.

    Each side is a step function, a module or a list of modules, on any backend: a torch
    model (SpikingJelly neurons keep their memory; pass no state), a JAX or NumPy port (pure
    steps; pass their initial state). Both run through :func:`dualstep.multi_step_forward`
    over the same input, converted with :mod:`dualstep.interop`; a side whose SpikingJelly
    modules are multi-step (``step_mode="m"``, a ``MultiStepContainer``) is called once on the
    whole sequence instead. SpikingJelly memory modules are reset before and after. Every
    output array is compared over time, and the final states when both sides have the same
    state structure (the same nesting and keys), with the engine of
    :func:`assert_backends_close`; states are never compared leaf by leaf across two
    structures.

    A torch network as `reference` and what :func:`dualstep.port.to_jax` made of it, the
    tuple ``(step, params, state)``, as `candidate`, are compared module by module: the
    network's output, every ported module's output (``layer 2 (LIFNode)``, the first one
    out of tolerance names where a port diverges), each neuron's final state variables
    (``state['2']['v']``) and batch norm's running statistics in training mode against the
    network's memories and buffers, and with `compare_grads` the parameters' gradients
    (``grad['0.weight']``; each a sum over time, batch and space, so its atol is at least
    rtol times its largest element). A network in SpikingJelly's multi-step mode gets the whole
    sequence, a single-step one each step in turn; the other arguments of the sides are not
    used then.

    Parameters
    ----------
    reference, candidate : callable or list of callables
        The model both sides implement; `candidate` is checked against `reference`.
    x_seq : array, shape ``[T, batch_size, ...]``
        Time first, any backend; each side gets it converted, in its dtype.
    reference_state, candidate_state : array or nesting of arrays, optional
        Each side's initial state (arrays of the backend it runs on), or None for a side
        called without state.
    reference_backend, candidate_backend : {"numpy", "torch", "jax"}, optional
        Where each side runs; by default the kind of its state, torch for torch modules,
        else `x_seq`'s kind.
    compare_state : bool or callable, optional
        Compare the final states. By default (None) they are compared when both sides have
        one of the same structure; two structures give a row marked "not compared" that does
        not fail. ``True`` makes another structure a failing ``"structure"`` row; a callable
        maps the candidate's final state onto the reference's structure
        (``lambda s: (s["v"], s["a"])`` for a tuple reference and a dict port) before the
        comparison.
    rtol, atol : float, optional
        Default by the reference's dtype, as in :func:`assert_backends_close`; integer and
        bool outputs must be equal.
    check : bool, default True
        Raise when the sides disagree; ``False`` returns the report either way.
    compare_grads : bool, default False
        With a torch network and its port (above): compare the gradients of a loss of the
        outputs (their sum weighted by fixed random numbers) with respect to every parameter.
    lengths : integer array or list of ints, shape ``[batch_size]``, optional
    fill : float, default 0.0
        Variable-length sequences, passed (converted) to both sides' calls; both need a
        state (docs, "Variable-length sequences").


    Returns
    -------
    Report
        One row per output array (``y``, ``y[0]``...) and compared state array: max abs and
        rel error, the first time step out of tolerance, dtype, shape or structure
        mismatches. The backend column reads ``candidate vs reference``.

    Raises
    ------
    AssertionError
        With `check`, when any row fails; the message is the report.
    TypeError
        A side's backend cannot be told; pass it.
    ValueError
        An unknown or uninstalled backend; `compare_state` true or a callable with a side
        without state;
        `rtol` or `atol` is NaN, infinite or negative (a `TypeError` if not a real number).

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import assert_implementations_close
    >>> def reference(x, v):
    ...     v = 0.5 * v + x
    ...     return v, v
    >>> def port(x, v):
    ...     v = v / 2 + x
    ...     return v, v
    >>> x = np.linspace(0, 1, 12).reshape(6, 2)
    >>> report = assert_implementations_close(
    ...     reference, port, x, reference_state=np.zeros(2), candidate_state=np.zeros(2))
    >>> [(r.leaf, r.ok) for r in report.rows]
    [('y', True), ('state', True)]
    """
    tolerance = _tolerance(rtol, atol)
    x = interop.to_numpy(x_seq)
    if _is_port(candidate):
        return _check_port(reference, candidate, x, tolerance, compare_grads, check)
    if compare_grads:
        raise ValueError(
            "`compare_grads=True` needs a torch network as `reference` and its port "
            "(dualstep.port.to_jax) as `candidate`"
        )
    ref_on = _side_backend(reference, reference_state, x_seq, reference_backend, "reference")
    cand_on = _side_backend(candidate, candidate_state, x_seq, candidate_backend, "candidate")
    both = reference_state is not None and candidate_state is not None
    if not (compare_state is None or isinstance(compare_state, bool) or callable(compare_state)):
        raise TypeError(
            "`compare_state` must be a bool, a callable or None; "
            f"got {type(compare_state).__qualname__}"
        )
    if compare_state and not both:
        raise ValueError(
            "`compare_state=True` needs `reference_state` and `candidate_state` "
            "(so does a callable)"
        )
    wide = interop.needs_x64(x)
    with jax_x64(wide and "jax" in (ref_on, cand_on)):
        options = _lengths_options(lengths, fill)
        ref_y, ref_s = _run_side(reference, ref_on, x, reference_state, options)
        cand_y, cand_s = _run_side(candidate, cand_on, x, candidate_state, options)
        if callable(compare_state):
            cand_s = compare_state(cand_s)
        want_ys = [(p, interop.to_numpy(a)) for p, a in _named_leaves(ref_y, "y")]
        want_s = [(p, interop.to_numpy(a)) for p, a in _named_leaves(ref_s, "state")]
        got_ys, got_s = _named_leaves(cand_y, "y"), _named_leaves(cand_s, "state")
        same = _paths(want_s) == _paths(got_s)
        skipped = ""
        if both and not same and compare_state is None:
            skipped = (
                f"the states differ in structure (reference {_paths(want_s)}, candidate "
                f"{_paths(got_s)}); map one onto the other with compare_state="
            )
        if not both or skipped or compare_state is False:
            want_s, got_s = [], []
        dtypes = [dtype_name(a) for _, a in want_ys + want_s]
        first = dtypes[0] if dtypes else "float64"
        tol = tolerance(first)

        who = f"{cand_on} vs {ref_on}"
        leaves = None
        if _paths(want_ys) == _paths(got_ys) and _paths(want_s) == _paths(got_s):
            leaves = _compare_all(
                got_ys, got_s, [w for _, w in want_ys], [w for _, w in want_s], dtypes, tolerance
            )
    if leaves is None:
        counts = (
            f"candidate {_paths(got_ys) + _paths(got_s)}, "
            f"reference {_paths(want_ys) + _paths(want_s)}"
        )
        rows: tuple[Row, ...] = (
            Row(who, "multi_step_forward", np.nan, np.nan, "structure", first, counts),
        )
    else:
        rows = tuple(_row(who, "multi_step_forward", leaf) for leaf in leaves)
    if skipped:
        rows += (Row(who, "multi_step_forward", np.nan, np.nan, None, "-", "state", skipped),)
    report = Report(rows, *tol)
    if check and not report.ok:
        raise AssertionError(f"candidate ({cand_on}) differs from reference ({ref_on}):\n{report}")
    return report


def _is_port(candidate: Any) -> bool:
    """Whether `candidate` is ``(step, params, state)`` from :func:`dualstep.port.to_jax`."""
    port = sys.modules.get("dualstep.port")
    return (
        port is not None
        and isinstance(candidate, tuple)
        and len(candidate) == 3
        and isinstance(candidate[0], port.PortedStep)
    )


def _loss_weights(y: np.ndarray) -> np.ndarray:
    """The fixed weights of the gradients' loss ``sum(y * w)``, the same for both sides."""
    return np.random.default_rng(0).normal(size=y.shape).astype(y.dtype)


def _torch_network_run(net: Any, x: np.ndarray, multi: bool, step: Any, grads: bool) -> tuple:
    """The network over `x` from fresh memory: output, each module's outputs by path,
    neuron and batch-norm state by the port's entries, and the parameters' gradients."""
    import torch

    memory = memory_modules(net)
    for module in memory:
        module.reset()
    modules = dict(net.named_modules())
    taps: dict[str, list] = {path: [] for path, _ in step.layers if path in modules}
    hooks = [
        modules[path].register_forward_hook(lambda m, i, o, p=path: taps[p].append(o))
        for path in taps
    ]
    xt = interop.to_torch(x)
    try:
        with torch.set_grad_enabled(grads), _buffers_restored(net):
            y = net(xt) if multi else torch.stack([net(x_t) for x_t in xt])
            gradients = {}
            if grads:
                names, params = zip(*net.named_parameters(), strict=True)
                w = torch.from_numpy(_loss_weights(interop.to_numpy(y)))
                found = torch.autograd.grad((y * w).sum(), params, allow_unused=True)
                gradients = {
                    n: np.zeros(p.shape, interop.to_numpy(p).dtype) if g is None else g
                    for n, p, g in zip(names, params, found, strict=True)
                }
            states: dict[str, Any] = {}
            for path, (kind, variables) in step.entries.items():
                module = modules[path]
                if kind == "neuron":
                    values = {n: getattr(module, n) for n in variables}
                    states[path] = values["v"] if variables == ("v",) else values
                elif kind == "batch_norm":  # copied before the buffers are restored
                    states[path] = {
                        "mean": module.running_mean.clone(),
                        "var": module.running_var.clone(),
                        "count": module.num_batches_tracked.clone(),
                    }
        layers = {p: v[0] if len(v) == 1 else torch.stack(v) for p, v in taps.items() if v}
        return y, layers, states, gradients
    finally:
        for hook in hooks:
            hook.remove()
        for module in memory:
            module.reset()


def _port_run(candidate: tuple, x: np.ndarray, multi: bool, grads: bool) -> tuple:
    """The port over `x` (eagerly, recording each module's output): output, outputs by path,
    final state, and the parameters' gradients."""
    import functools

    import jax

    from .._api import multi_step_forward

    step, params, state = candidate
    xj = interop.to_jax(x)
    with step.tapping() as taps:
        if multi:
            y, final = step(params, xj, state)
        else:
            ys, final = [], state
            for x_t in xj:
                y_t, final = step(params, x_t, final)
                ys.append(y_t)
            y = jax.numpy.stack(ys)
    layers = {p: v[0] if len(v) == 1 else jax.numpy.stack(v) for p, v in taps.items()}
    gradients = {}
    if grads:
        w = _loss_weights(interop.to_numpy(y))

        def loss(p: dict) -> Any:
            if multi:
                out, _ = step(p, xj, state)
            else:
                out, _ = multi_step_forward(xj, functools.partial(step, p), state=state)
            return (out * w).sum()

        gradients = jax.grad(loss)(params)
    return y, layers, final, gradients


def _check_port(
    net: Any,
    candidate: tuple,
    x: np.ndarray,
    tolerance: Callable[[str], tuple[float, float]],
    grads: bool,
    check: bool,
) -> Report:
    """:func:`assert_implementations_close` of a torch network and its port."""
    step = candidate[0]
    multi = _multi_step(net)
    with jax_x64(interop.needs_x64(x)):
        want_y, want_layers, want_states, want_grads = _torch_network_run(
            net, x, multi, step, grads
        )
        got_y, got_layers, got_states, got_grads = _port_run(candidate, x, multi, grads)
        classes = dict(step.layers)
        pairs = [("y", got_y, want_y, True)]
        pairs += [
            (f"layer {p} ({classes[p]})", got_layers[p], want_layers[p], True)
            for p, _ in step.layers
            if p in got_layers and p in want_layers
        ]
        for path, want in want_states.items():
            for leaf, value in _named_leaves(want, f"state[{path!r}]"):
                pairs.append((leaf, _named_leaf(got_states[path], leaf, path), value, False))
        pairs += [(f"grad[{n!r}]", got_grads[n], g, False) for n, g in want_grads.items()]
        leaves = []
        for path, got, want, over_time in pairs:
            want = interop.to_numpy(want)
            if want.dtype == np.int64 and dtype_name(got) == "int32":  # narrowed buffer
                want = want.astype(np.int32)
            within = _scaled(tolerance, want) if path.startswith("grad[") else tolerance
            leaves.append(_compare_leaf(path, got, want, dtype_name(want), within, over_time))
    who = "jax vs torch"
    rows = tuple(_row(who, "port", leaf) for leaf in leaves)
    report = Report(rows, *tolerance(dtype_name(interop.to_numpy(want_y))))
    if check and not report.ok:
        bad = _first_bad(leaves)
        at = f" at step {bad.first_bad}" if bad and isinstance(bad.first_bad, int) else ""
        where = f"first divergence: {bad.path}{at}" if bad else ""
        raise AssertionError(f"the port differs from the torch network ({where}):\n{report}")
    return report


def _scaled(
    tolerance: Callable[[str], tuple[float, float]], want: np.ndarray
) -> Callable[[str], tuple[float, float]]:
    """`tolerance` with its atol raised to rtol times the largest ``|want|``: a parameter's
    gradient is a sum over time, batch and space, whose rounding grows with the largest
    terms, not with each element's own size."""
    scale = float(np.abs(want).max(initial=0.0))

    def within(dtype: str) -> tuple[float, float]:
        rtol, atol = tolerance(dtype)
        return rtol, max(atol, rtol * scale)

    return within


def _named_leaf(tree: Any, leaf: str, path: str) -> Any:
    """The leaf of `tree` that `_named_leaves(..., f"state[{path!r}]")` names `leaf`."""
    return dict(_named_leaves(tree, f"state[{path!r}]"))[leaf]

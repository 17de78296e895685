"""Whole-sequence kernels for elementwise steps: the time loop inside one kernel.

``pallas.py`` lowers a step for JAX, ``triton.py`` for torch; this file holds what both share:
which steps can be fused, how a call's arrays are laid out for a kernel, and the launch table.

A step can be fused when every output and every state leaf has the shape of one time step of
``x_seq`` and every operation it performs is elementwise (arithmetic, comparisons, casts,
``where``, exponentials, surrogate-gradient functions built from these), so that element ``i`` of
step ``t`` depends only on element ``i`` of ``x_seq[t]`` and of the state. Values the step
captures must be scalars. The kernel then views ``x_seq`` as ``[T, N]`` (N elements per step),
gives each program a block of N and loops over time inside the program.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .._modules import call_once
from .._tree import leaves_with_path, map_with_path

# Launch parameters: elements per program, time steps whose loads are issued together, warps.
# A data table so that a measured retune changes numbers, not code.
LAUNCH = {"block": 1024, "unroll": 8, "num_warps": 4}
# Interpreted (CPU) runs: small blocks keep the interpreter's per-program cost low.
INTERPRET_LAUNCH = {"block": 64, "unroll": 2, "num_warps": 1}


class NotFusable(ValueError):
    """``fused=True`` was asked for a step that cannot run as one elementwise kernel."""

    what = ""  # the reason alone, without the advice around it
    kernel_failed = False  # a kernel was built (or compiled) and failed: not the step's form


def check_fused(fused: Any) -> None:
    """`fused` is a bool or ``'auto'``."""
    if isinstance(fused, bool) or (isinstance(fused, str) and fused == "auto"):
        return
    error = ValueError if isinstance(fused, str) else TypeError
    raise error(f"`fused` must be True, False or 'auto'; got {fused!r}")


def state_leaves(state: Any) -> list:
    """The arrays of `state` (``None`` entries hold none), dict entries by sorted key: a step
    may return its dict state in another insertion order."""
    return [
        leaf for _, leaf in leaves_with_path(state, "state", sort_keys=True) if leaf is not None
    ]


def with_leaves(state: Any, leaves: Any) -> Any:
    """`state` with its arrays replaced by `leaves`, in :func:`state_leaves`' order."""
    paths = [p for p, leaf in leaves_with_path(state, "state", sort_keys=True) if leaf is not None]
    new = dict(zip(paths, leaves, strict=True))
    return map_with_path(lambda leaf, p: None if leaf is None else new[p], state, "state")


def output_leaves(y: Any) -> tuple[list, Callable[[list], Any]]:
    """A step's output as a list of arrays and the function that rebuilds its structure."""
    if isinstance(y, tuple):
        cls = type(y) if hasattr(y, "_fields") else None  # the type only: no array is kept
        return list(y), lambda items: tuple(items) if cls is None else cls(*items)
    return [y], lambda items: items[0]


def flat_step(modules: Any, state: Any, outputs: list) -> Callable[..., tuple]:
    """The step as ``(x, *state_arrays) -> (*y_arrays, *new_state_arrays)``.

    The first call records, in `outputs`, the function that rebuilds the output structure.
    """
    stateful = state is not None

    def step(x: Any, *leaves: Any) -> tuple:
        y, new = call_once(x, with_leaves(state, leaves) if stateful else None, modules, stateful)
        ys, rebuild = output_leaves(y)
        if any(a is None or isinstance(a, (tuple, list, dict)) for a in ys):
            raise not_fusable("an output is None or a nested structure; return arrays")
        if not outputs:
            outputs.append((len(ys), rebuild))
        return (*ys, *(state_leaves(new) if stateful else ()))

    return step


def check_layout(step_shape: tuple, leaves: list, kind: str) -> None:
    """Every array a kernel reads or writes per step has the step's shape."""
    for i, leaf in enumerate(leaves):
        if tuple(leaf.shape) != tuple(step_shape):
            raise not_fusable(
                f"{kind} {i} has shape {tuple(leaf.shape)}, not the shape of one time step of "
                f"`x_seq`, {tuple(step_shape)}"
            )


def not_fusable(what: str, kernel_failed: bool = False) -> NotFusable:
    """The error for a step that cannot be fused because of `what`; `kernel_failed`: its
    kernel was built and failed (to trace, lower or compile), which 'auto' says."""
    error = NotFusable(
        f'`fused=True` needs an elementwise step (README, "Fused kernels"); {what}. '
        "Use fused=False for the plain loop, or fused='auto' to fall back to it"
    )
    error.what, error.kernel_failed = what, kernel_failed
    return error


def warn_if_kernel_failed(error: NotFusable, instead: str) -> None:
    """fused='auto' falls back to `instead` (the loop, the scan) silently when the step is
    not elementwise, and with a warning naming the error when its kernel failed."""
    if error.kernel_failed:
        warnings.warn(f"fused='auto' runs the {instead}: {error.what}", RuntimeWarning, 3)

"""NumPy backend: plain Python loops; run in float64 it is the oracle the tests compare with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._modules import (
    apply_modules,
    loop_result,
    map_items,
    run_steps,
    seq_to_ann_by_reshape,
    stack_outputs,
)
from .._tree import map_with_path
from ..fused import NotFusable


def _stack_last(arrays: list) -> np.ndarray:
    return np.stack(arrays, axis=-1)


def _arrays(final: Any) -> Any:
    # NumPy operations on 0-d arrays give NumPy scalars; torch and JAX give 0-d arrays.
    return map_with_path(lambda a, _: np.asarray(a) if isinstance(a, np.generic) else a, final, "")


def _no_kernels(fused: bool | str) -> None:
    if fused is True:
        raise NotFusable(
            "`fused=True`: NumPy arrays have no fused kernel; use fused=False or 'auto'"
        )


def auto_fuses(x_seq: Any) -> bool:
    """``fused='auto'`` never fuses NumPy arrays: there is no kernel."""
    return False


def multi_step_forward(
    x_seq: np.ndarray, modules: Any, state: Any, fused: bool | str = False, unroll: Any = None
) -> Any:
    _no_kernels(fused)  # `unroll` is for lax.scan; this loop runs step by step
    # `x_seq[t, ...]` is a 0-d array for a [T] input (`x_seq[t]` would be a NumPy scalar).
    ys, final = run_steps((x_seq[t, ...] for t in range(x_seq.shape[0])), modules, state)
    return loop_result(ys, _arrays(final), state, np.stack)


def t_last_multi_step_forward(
    x_seq: np.ndarray, modules: Any, state: Any, fused: bool | str = False, unroll: Any = None
) -> Any:
    _no_kernels(fused)
    ys, final = run_steps((x_seq[..., t] for t in range(x_seq.shape[-1])), modules, state)
    return loop_result(ys, _arrays(final), state, _stack_last)


def chunk_multi_step_forward(
    split_size: int,
    x_seq: np.ndarray,
    modules: Any,
    state: Any,
    checkpoint: bool,
    compile: Any = False,
) -> Any:
    # `checkpoint` has nothing to save on NumPy (no backward pass), `compile` nothing to compile.
    chunks = (x_seq[i : i + split_size] for i in range(0, x_seq.shape[0], split_size))
    ys, final = run_steps(chunks, modules, state)
    return loop_result(ys, _arrays(final), state, np.concatenate)


def seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    return seq_to_ann_by_reshape(x_seq, modules)


def t_last_seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    steps = (x_seq[0] if isinstance(x_seq, tuple) else x_seq).shape[-1]
    ys = [apply_modules(map_items(x_seq, _select_last(t)), modules) for t in range(steps)]
    return stack_outputs(ys, _stack_last)


def _select_last(t: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: a[..., t]

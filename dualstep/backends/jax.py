"""JAX backend: one ``lax.scan`` per multi-step call, ``jax.vmap`` for the time-last map.

Inside the user's transformations (the input is a tracer) the functions emit the scan or map
directly. Eager calls go through ``jax.jit`` programs cached per function and module(s), so a
repeat call with the same step function and shapes neither retraces nor recompiles.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._modules import apply_modules, apply_stateful, map_outputs, stack_outputs

CACHE_SIZE = 128
_cache: OrderedDict[Any, Callable] = OrderedDict()
_lock = threading.Lock()


def _cached_jit(key: tuple, build: Callable[[], Callable]) -> Callable:
    """A jitted `build()` reused for equal `key`s (LRU, at most CACHE_SIZE entries)."""
    with _lock:
        try:
            fn = _cache.get(key)
        except TypeError:
            # Unhashable modules (e.g. pytrees holding arrays) cannot be keyed: run uncached.
            return build()
        if fn is not None:
            _cache.move_to_end(key)
            return fn
    fn = jax.jit(build())
    with _lock:
        fn = _cache.setdefault(key, fn)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return fn


def _run(name: Hashable, impl: Callable, x_seq: Any, modules: Any, *args: Any) -> Any:
    """Call ``impl(x_seq, *args)``: directly under a trace, else through the compile cache."""
    if isinstance(x_seq, jax.core.Tracer) or (
        isinstance(x_seq, tuple) and any(isinstance(a, jax.core.Tracer) for a in x_seq)
    ):
        return impl(x_seq, *args)
    key = (name, tuple(modules) if isinstance(modules, list) else modules)
    return _cached_jit(key, lambda: impl)(x_seq, *args)


def _step(modules: Any, stateful: bool, remat: bool) -> Callable:
    """One call of the module(s): ``x -> y`` or ``(x, s) -> (y, s)``, rematerialised if asked."""
    fn: Callable
    if stateful:
        fn = lambda x, s: apply_stateful(x, s, modules)  # noqa: E731
    else:
        fn = lambda x: apply_modules(x, modules)  # noqa: E731
    return jax.checkpoint(fn) if remat else fn


def _scan(x_seq: Any, modules: Any, state: Any, remat: bool = False) -> Any:
    """Scan the module(s) over axis 0; ``(y_seq, final_state)`` or ``y_seq``."""
    step = _step(modules, state is not None, remat)
    if state is None:
        _, ys = lax.scan(lambda c, x: (c, step(x)), None, x_seq)
        return ys

    def body(s: Any, x: Any) -> tuple[Any, Any]:
        y, s = step(x, s)
        return s, y

    final, ys = lax.scan(body, state, x_seq)
    return ys, final


def multi_step_forward(x_seq: Any, modules: Any, state: Any) -> Any:
    return _run("multi_step", lambda x, s: _scan(x, modules, s), x_seq, modules, state)


def _scan_time_last(x_seq: Any, modules: Any, state: Any) -> Any:
    out = _scan(jnp.moveaxis(x_seq, -1, 0), modules, state)
    ys, final = (out, None) if state is None else out
    ys = map_outputs(ys, lambda a: jnp.moveaxis(a, 0, -1))
    return ys if state is None else (ys, final)


def t_last_multi_step_forward(x_seq: Any, modules: Any, state: Any) -> Any:
    return _run(
        "t_last_multi_step", lambda x, s: _scan_time_last(x, modules, s), x_seq, modules, state
    )


def _chunks(split_size: int, x_seq: Any, modules: Any, state: Any, remat: bool) -> Any:
    """One scan over the full chunks, then one call for the shorter remainder."""
    steps = x_seq.shape[0]
    n_full, rest = divmod(steps, split_size)
    stateful = state is not None
    parts = []
    if n_full:
        body_x = x_seq[: n_full * split_size].reshape((n_full, split_size, *x_seq.shape[1:]))
        out = _scan(body_x, modules, state, remat)
        ys, state = out if stateful else (out, None)
        parts.append(map_outputs(ys, lambda a: a.reshape((n_full * split_size, *a.shape[2:]))))
    if rest:
        tail = x_seq[n_full * split_size :]
        step = _step(modules, stateful, remat)
        if stateful:
            y, state = step(tail, state)
        else:
            y = step(tail)
        parts.append(y)
    y_seq = parts[0] if len(parts) == 1 else stack_outputs(parts, jnp.concatenate)
    return (y_seq, state) if stateful else y_seq


def chunk_multi_step_forward(
    split_size: int, x_seq: Any, modules: Any, state: Any, checkpoint: bool
) -> Any:
    def impl(x: Any, s: Any) -> Any:
        return _chunks(split_size, x, modules, s, checkpoint)

    return _run(("chunk", split_size, checkpoint), impl, x_seq, modules, state)


def _merge_batch_major(x: Any) -> bool:
    """Whether to flatten ``[T, B]`` batch-major (``[B, T] -> B*T``) rather than T-major.

    A batch-sharded input stays sharded in contiguous blocks only when merged batch-major; a
    T-major merge makes XLA gather it and replicate the output. Under a trace the sharding is
    unknown, so batch-major; a concrete array on one device merges T-major (no transposes, about
    10% faster for a large Linear on CPU).
    """
    return isinstance(x, jax.core.Tracer) or len(x.sharding.device_set) > 1


def seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    # No jit here: one call of the module on a reshaped batch gains nothing from compiling.
    first = x_seq[0] if isinstance(x_seq, tuple) else x_seq
    t, b = first.shape[:2]
    if not _merge_batch_major(first):
        y = apply_modules(map_outputs(x_seq, lambda a: a.reshape((t * b, *a.shape[2:]))), modules)
        return map_outputs(y, lambda a: a.reshape((t, b, *a.shape[1:])))
    flat = map_outputs(x_seq, lambda a: jnp.swapaxes(a, 0, 1).reshape((b * t, *a.shape[2:])))
    y = apply_modules(flat, modules)
    return map_outputs(y, lambda a: jnp.swapaxes(a.reshape((b, t, *a.shape[1:])), 0, 1))


def t_last_seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    mapped = jax.vmap(lambda x: apply_modules(x, modules), in_axes=-1, out_axes=-1)
    return _run("t_last_seq_to_ann", mapped, x_seq, modules)

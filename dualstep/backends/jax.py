"""JAX backend: one ``lax.scan`` per multi-step call, ``jax.vmap`` for the time-last map.

Inside the user's transformations (the input is a tracer) the functions emit the scan or map
directly. Eager calls go through ``jax.jit`` programs cached per function and step structure:
the arrays a step reads through its structure are the program's arguments, everything else is
the cache key (:mod:`._jax_split`), so changed weights are seen without a recompile.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .. import _config
from .._modules import apply_modules, call_once, map_items, seq_to_ann_by_reshape, stack_outputs
from ._jax_split import Uncacheable, key_and_arrays, rebuild

CACHE_SIZE = 128
_cache: OrderedDict[Any, tuple[Callable, list]] = OrderedDict()
_lock = threading.Lock()
# The modules of the eager call being traced: read by the program while JAX traces it, so the
# cached program itself holds no reference to them.
_tracing = threading.local()


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _traced_program(impl: Callable) -> Callable:
    def program(arrays: list, x_seq: Any, *args: Any) -> Any:
        return impl(x_seq, rebuild(_tracing.modules, iter(arrays)), *args)

    return jax.jit(program)


def _program(key: tuple, impl: Callable, keep: list) -> Callable:
    """The jitted program for `key` (LRU, at most CACHE_SIZE entries); the entry keeps `keep`
    alive, the objects whose ids are in `key`."""
    entry = _cache.get(key)  # reads need no lock: each dict operation is atomic
    if entry is not None:
        try:  # noqa: SIM105 - contextlib.suppress costs a microsecond on every eager call
            _cache.move_to_end(key)
        except KeyError:  # evicted by another thread just now: still usable
            pass
        return entry[0]
    program = _traced_program(impl)
    with _lock:
        entry = _cache.setdefault(key, (program, keep))
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return entry[0]


_Tracer = jax.core.Tracer


def _jit_tracer_type() -> type:
    """The tracer of jax.jit (make_jaxpr, a scan body): the call is then part of a program."""
    try:
        from jax._src.interpreters.partial_eval import DynamicJaxprTracer
    except ImportError:  # pragma: no cover - a JAX that moved it: every tracer counts as one
        return jax.core.Tracer
    return DynamicJaxprTracer


_JitTracer = _jit_tracer_type()


def _jit_traced(x_seq: Any) -> bool:
    if isinstance(x_seq, tuple):
        return any(isinstance(a, _JitTracer) for a in x_seq)
    return isinstance(x_seq, _JitTracer)


_warned: set[tuple[str, str]] = set()


def _warn_uncached(reason: Exception, modules: Any) -> None:
    """Say once per step and reason that a step runs uncached (each eager call traces it)."""
    name = getattr(modules, "__qualname__", None) or type(modules).__qualname__
    why = str(reason) or type(reason).__name__
    if (name, why) in _warned:
        return
    _warned.add((name, why))
    warnings.warn(
        f"dualstep cannot cache the JAX step {name} ({why}), so every eager call traces and "
        "compiles it again; call it inside jax.jit, or keep the cycle out of what the step "
        'refers to (docs, "What the JAX compile cache sees")',
        stacklevel=4,
    )


def _cached_call(key: tuple, impl: Callable, x_seq: Any, modules: Any, *args: Any) -> Any:
    """``impl(x_seq, modules, *args)`` through the cache, eagerly and under ``jax.grad`` or
    ``jax.vmap`` without ``jit`` (a jitted program takes their tracers, and JAX keeps the
    transformed program); directly when ``jit`` traces it, which compiles it anyway.

    `key` names `impl` and its static parameters; the step structure is added to it.
    """
    if not _config.jax_cache or _jit_traced(x_seq):
        return impl(x_seq, modules, *args)
    try:
        structure, arrays, keep = key_and_arrays(modules)
        program = _program((key, structure), impl, keep)
    except (Uncacheable, TypeError) as e:
        # A cycle, or something that can be keyed neither by value nor weakly: run uncached.
        _warn_uncached(e, modules)
        return impl(x_seq, modules, *args)
    outer = getattr(_tracing, "modules", None)  # a step may make eager calls of its own
    _tracing.modules = modules
    try:
        return program(arrays, x_seq, *args)
    finally:
        _tracing.modules = outer


def _step(modules: Any, stateful: bool, remat: bool) -> Callable:
    """One call of the module(s) as ``(x, s) -> (y, s)`` (`s` None when stateless), the
    shared rule of :func:`call_once`, rematerialised if asked."""

    def fn(x: Any, s: Any) -> tuple[Any, Any]:
        return call_once(x, s, modules, stateful)

    return jax.checkpoint(fn) if remat else fn


def _scan(x_seq: Any, modules: Any, state: Any, remat: bool = False, unroll: int = 1) -> Any:
    """Scan the module(s) over axis 0; ``(y_seq, final_state)`` or ``y_seq``."""
    step = _step(modules, state is not None, remat)
    if state is None:
        _, ys = lax.scan(lambda c, x: (c, step(x, None)[0]), None, x_seq, unroll=unroll)
        return ys

    def body(s: Any, x: Any) -> tuple[Any, Any]:
        y, s = step(x, s)
        return s, y

    final, ys = lax.scan(body, state, x_seq, unroll=unroll)
    return ys, final


# Steps per scan iteration on a GPU when the step is elementwise: XLA fuses the unrolled body
# into one kernel per iteration, so launches drop by this factor (measured: 32 matches a fused
# multi-step kernel at T=256).
GPU_UNROLL = 32


_GPU = frozenset({"gpu", "cuda", "rocm"})


def _platform(x_seq: Any) -> str:
    """Where the call runs: the array's device, or under a trace (no device yet) the default
    device (``jax.default_device``) or backend."""
    if not isinstance(x_seq, _Tracer):
        return next(iter(x_seq.devices())).platform
    device = jax.config.jax_default_device  # type: ignore[attr-defined]
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def auto_fuses(x_seq: Any) -> bool:
    """Whether ``fused='auto'`` tries the kernel for `x_seq` (on a GPU)."""
    return _platform(x_seq) in _GPU


def _sequence(
    x_seq: Any, modules: Any, state: Any, *, fused: bool | str, unroll: int | None, platform: str
) -> Any:
    """One sequence, time first: the fused kernel when asked and possible, else the scan."""
    gpu = platform in _GPU
    if fused is True or (fused == "auto" and gpu) or (unroll is None and gpu):
        # imported by the calls that use them only
        from ..fused import NotFusable, pallas, warn_if_kernel_failed
    elementwise = None  # unknown until a check has run
    if (fused is True or (fused == "auto" and gpu)) and x_seq[0].size:  # no elements: scan
        try:
            return pallas.multi_step(x_seq, modules, state, interpret=platform == "cpu")
        except NotFusable as error:
            if fused is True:
                raise
            warn_if_kernel_failed(error, "scan")
            elementwise = False
    if unroll is None:
        unroll = 1
        if gpu and elementwise is None:  # an elementwise step: unrolling a matmul buys little
            try:
                pallas.fusable(x_seq, modules, state)
                unroll = min(GPU_UNROLL, x_seq.shape[0])
            except NotFusable:
                pass
    return _scan(x_seq, modules, state, unroll=unroll)


def _over_time(
    name: str, sequence: Callable, x_seq: Any, modules: Any, state: Any, fused: Any, unroll: Any
) -> Any:
    """`sequence` (time first or time last) through the cache, keyed by its options and the
    platform the call runs on."""
    platform = _platform(x_seq)
    impl = functools.partial(sequence, fused=fused, unroll=unroll, platform=platform)
    return _cached_call((name, fused, unroll, platform), impl, x_seq, modules, state)


def multi_step_forward(
    x_seq: Any, modules: Any, state: Any, fused: bool | str = False, unroll: int | None = None
) -> Any:
    return _over_time("multi_step", _sequence, x_seq, modules, state, fused, unroll)


def _sequence_time_last(x_seq: Any, modules: Any, state: Any, **options: Any) -> Any:
    out = _sequence(jnp.moveaxis(x_seq, -1, 0), modules, state, **options)
    ys, final = (out, None) if state is None else out
    ys = map_items(ys, lambda a: jnp.moveaxis(a, 0, -1))
    return ys if state is None else (ys, final)


def t_last_multi_step_forward(
    x_seq: Any, modules: Any, state: Any, fused: bool | str = False, unroll: int | None = None
) -> Any:
    return _over_time(
        "t_last_multi_step", _sequence_time_last, x_seq, modules, state, fused, unroll
    )


def _chunks(x_seq: Any, modules: Any, state: Any, *, split_size: int, remat: bool) -> Any:
    """One scan over the full chunks (a plain call for a single one), then one call for the
    shorter remainder."""
    steps = x_seq.shape[0]
    n_full, rest = divmod(steps, split_size)
    symbolic = not isinstance(steps, int)  # jax.export's: one scan over the whole chunks
    if symbolic and not isinstance(rest, int):
        raise ValueError(
            "`chunk_multi_step_forward` exported with a symbolic T needs T to be a multiple of "
            f"`split_size` ({split_size}): declare it as {split_size}*k "
            f"(jax.export.symbolic_shape); got T = {steps}"
        )
    stateful = state is not None
    step = _step(modules, stateful, remat)
    parts = []

    def call(xc: Any) -> None:
        nonlocal state
        y, new = step(xc, state)
        state = new if stateful else state
        parts.append(y)

    if symbolic or n_full > 1:
        body_x = x_seq[: n_full * split_size].reshape((n_full, split_size, *x_seq.shape[1:]))
        out = _scan(body_x, modules, state, remat)
        ys, state = out if stateful else (out, None)
        parts.append(map_items(ys, _join_chunks))
    elif n_full == 1:
        call(x_seq[:split_size])
    if rest:
        call(x_seq[n_full * split_size :])
    y_seq = parts[0] if len(parts) == 1 else stack_outputs(parts, jnp.concatenate)
    return (y_seq, state) if stateful else y_seq


def _join_chunks(a: Any) -> Any:
    """Scanned chunk outputs ``[n, t, ...]`` as one ``[n * t, ...]`` sequence.

    A module may return another number of steps than its chunk had (``t``); outputs are
    concatenated, as on the other backends, which cannot concatenate 0-d outputs either.
    """
    if a.ndim < 2:
        raise ValueError("zero-dimensional arrays cannot be concatenated")
    return a.reshape((a.shape[0] * a.shape[1], *a.shape[2:]))


def chunk_multi_step_forward(
    split_size: int, x_seq: Any, modules: Any, state: Any, checkpoint: bool, compile: Any = False
) -> Any:
    # `compile` is for torch: JAX calls are compiled already.
    impl = functools.partial(_chunks, split_size=split_size, remat=checkpoint)
    return _cached_call(("chunk", split_size, checkpoint), impl, x_seq, modules, state)


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
        return seq_to_ann_by_reshape(x_seq, modules)
    flat = map_items(x_seq, lambda a: jnp.swapaxes(a, 0, 1).reshape((b * t, *a.shape[2:])))
    y = apply_modules(flat, modules)
    return map_items(y, lambda a: jnp.swapaxes(a.reshape((b, t, *a.shape[1:])), 0, 1))


def _map_time_last(x_seq: Any, modules: Any) -> Any:
    return jax.vmap(lambda x: apply_modules(x, modules), in_axes=-1, out_axes=-1)(x_seq)


def t_last_seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    return _cached_call(("t_last_seq_to_ann",), _map_time_last, x_seq, modules)

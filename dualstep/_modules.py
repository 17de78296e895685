"""Semantics shared by every backend: module lists, ``None`` state entries, tuple outputs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def apply_modules(x: Any, modules: Any) -> Any:
    """Call `modules` on `x` the SpikingJelly way.

    A tuple `x` is fed positionally to the first module; every later module gets the previous
    output as a single argument. A list or tuple of modules is applied in order (an empty one is
    the identity); anything else is called as one module (``nn.Sequential`` included).
    """
    args = x if isinstance(x, tuple) else (x,)
    if isinstance(modules, (list, tuple)):
        for module in modules:
            x = module(*args)
            args = (x,)
        return x
    return modules(*args)


def _call_stateful(module: Callable, x: Any, state: Any, path: str) -> tuple[Any, Any]:
    out = module(x, state)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "a module called with a state must return a `(y, state)` pair; "
            f"got {type(out).__qualname__}"
            + (f" of length {len(out)}" if isinstance(out, tuple) else "")
        )
    _check_state_kept(state, out[1], path)
    return out


def _describe(a: Any) -> str:
    if a is None or not hasattr(a, "shape"):
        return "None" if a is None else type(a).__qualname__
    return f"{str(a.dtype).removeprefix('torch.')} of shape {tuple(a.shape)}"


def _structure(a: Any) -> str:
    if isinstance(a, dict):
        return f"a {type(a).__qualname__} with keys {list(a)}"
    return f"a {type(a).__qualname__} of length {len(a)}"


def _autocast(a: Any) -> bool:
    """Whether `a` is a floating torch tensor made under ``torch.autocast`` for its device."""
    torch = sys.modules.get("torch")
    return (
        torch is not None
        and isinstance(a, torch.Tensor)
        and a.is_floating_point()
        and torch.is_autocast_enabled(a.device.type)
    )


def _check_state_kept(before: Any, after: Any, path: str) -> None:
    """A step returns its state with the structure, shapes and dtypes it was given.

    One rule on every backend (``lax.scan`` could not carry anything else); the exception is
    a floating state under ``torch.autocast``, which may come back in another precision.
    """
    containers = (tuple, list, dict)
    if isinstance(before, containers) or isinstance(after, containers):
        same = type(before) is type(after) and len(before) == len(after)
        if same and isinstance(before, dict):
            same = before.keys() == after.keys()  # order aside: JAX sorts dict keys
        if not same:
            raise _state_changed(
                path,
                _structure(before) if isinstance(before, containers) else _describe(before),
                _structure(after) if isinstance(after, containers) else _describe(after),
            )
        items = before.items() if isinstance(before, dict) else enumerate(before)
        for key, item in items:
            _check_state_kept(item, after[key], f"{path}[{key!r}]")
        return
    if before is None or after is None or not hasattr(after, "shape"):
        if before is not after:
            raise _state_changed(path, _describe(before), _describe(after))
        return
    if tuple(before.shape) != tuple(after.shape) or (
        before.dtype != after.dtype and not _autocast(after)
    ):
        raise _state_changed(path, _describe(before), _describe(after))


def _state_changed(path: str, before: str, after: str) -> TypeError:
    return TypeError(
        "a module called with a state must return it with the structure, shapes and dtypes "
        f"it was given; `{path}` was {before}, the module returned {after}"
    )


def apply_stateful(x: Any, state: Any, modules: Any) -> tuple[Any, Any]:
    """One step with explicit state: ``(y, new_state)``.

    With a module list, `state` is a tuple with one entry per module; a ``None`` entry marks a
    stateless module, called as ``m(x)``, and stays ``None`` in the new state.
    """
    if not isinstance(modules, (list, tuple)):
        return _call_stateful(modules, x, state, "state")
    new_state = []
    for i, (module, s) in enumerate(zip(modules, state, strict=True)):
        if s is None:
            x = module(x)
        else:
            x, s = _call_stateful(module, x, s, f"state[{i}]")
        new_state.append(s)
    return x, tuple(new_state)


def run_steps(steps: Iterable[Any], modules: Any, state: Any) -> tuple[list, Any]:
    """The plain loop: call the module(s) on each item of `steps` in order, threading `state`.

    Returns the list of outputs and the final state (None when `state` is None).
    """
    if state is None:
        return [apply_modules(x, modules) for x in steps], None
    ys = []
    for x in steps:
        y, state = apply_stateful(x, state, modules)
        ys.append(y)
    return ys, state


def call_once(x: Any, state: Any, modules: Any, stateful: bool) -> tuple[Any, Any]:
    """One call: ``(y, new_state)``, or ``(y, None)`` for a stateless call.

    Whether a call is stateful is fixed by the caller's `state` argument, not by the state
    the previous call returned: a step may return ``None`` as its state and still be called
    with it.
    """
    if not stateful:
        return apply_modules(x, modules), None
    return apply_stateful(x, state, modules)


def loop_result(ys: Sequence[Any], final: Any, state: Any, stack: Callable[[list], Any]) -> Any:
    """A loop's return value: the per-step (or per-chunk) outputs joined by `stack` (which may
    stack or concatenate), with the final state when a state was given (`state` is the
    caller's initial state)."""
    y_seq = stack_outputs(ys, stack)
    return y_seq if state is None else (y_seq, final)


def same_tuple(like: tuple, items: Iterable[Any]) -> tuple:
    """`items` as a tuple of `like`'s type: a named tuple stays that named tuple."""
    return type(like)(*items) if hasattr(like, "_fields") else tuple(items)


def stack_outputs(ys: Sequence[Any], stack: Callable[[list], Any]) -> Any:
    """Stack per-step outputs with `stack`; tuple outputs (named tuples kept) item by item."""
    first = ys[0]
    if isinstance(first, tuple):
        return same_tuple(first, (stack([y[i] for y in ys]) for i in range(len(first))))
    return stack(list(ys))


def map_items(y: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply `fn` to an array, or to each item of a tuple of arrays (named tuples kept): the
    inputs and outputs of the seq_to_ann functions, which may be either."""
    if isinstance(y, tuple):
        return same_tuple(y, (fn(item) for item in y))
    return fn(y)


def seq_to_ann_by_reshape(x_seq: Any, modules: Any) -> Any:
    """``[T, B, ...]`` (or a tuple of such) merged T-major into one batch by reshape, the
    module(s) applied once, every output reshaped back to ``[T, B, ...]``."""
    t, b = (x_seq[0] if isinstance(x_seq, tuple) else x_seq).shape[:2]
    y = apply_modules(map_items(x_seq, lambda a: a.reshape((t * b, *a.shape[2:]))), modules)
    return map_items(y, lambda a: a.reshape((t, b, *a.shape[1:])))

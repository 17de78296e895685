"""Semantics shared by every backend: module lists, ``None`` state entries, tuple outputs."""

from __future__ import annotations

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


def _call_stateful(module: Callable, x: Any, state: Any) -> tuple[Any, Any]:
    out = module(x, state)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "a module called with a state must return a `(y, state)` pair; "
            f"got {type(out).__qualname__}"
            + (f" of length {len(out)}" if isinstance(out, tuple) else "")
        )
    return out


def apply_stateful(x: Any, state: Any, modules: Any) -> tuple[Any, Any]:
    """One step with explicit state: ``(y, new_state)``.

    With a module list, `state` is a tuple with one entry per module; a ``None`` entry marks a
    stateless module, called as ``m(x)``, and stays ``None`` in the new state.
    """
    if not isinstance(modules, (list, tuple)):
        return _call_stateful(modules, x, state)
    new_state = []
    for module, s in zip(modules, state, strict=True):
        if s is None:
            x = module(x)
        else:
            x, s = _call_stateful(module, x, s)
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


def call_once(x: Any, state: Any, modules: Any) -> tuple[Any, Any]:
    """One call: ``(y, new_state)``, or ``(y, None)`` when `state` is None (stateless)."""
    if state is None:
        return apply_modules(x, modules), None
    return apply_stateful(x, state, modules)


def stacked_result(ys: Sequence[Any], final: Any, state: Any, stack: Callable[[list], Any]) -> Any:
    """The loop's return value: stacked outputs, with the final state when a state was given."""
    y_seq = stack_outputs(ys, stack)
    return y_seq if state is None else (y_seq, final)


def stack_outputs(ys: Sequence[Any], stack: Callable[[list], Any]) -> Any:
    """Stack per-step outputs with `stack`; tuple outputs are stacked item by item."""
    first = ys[0]
    if isinstance(first, tuple):
        return tuple(stack([y[i] for y in ys]) for i in range(len(first)))
    return stack(list(ys))


def map_outputs(y: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply `fn` to an output, or to each item of a tuple output."""
    if isinstance(y, tuple):
        return tuple(fn(item) for item in y)
    return fn(y)

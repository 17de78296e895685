"""Semantics shared by every backend: module lists, ``None`` state entries, tuple outputs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._dispatch import compiling
from ._tree import node


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


def _call_stateful(
    module: Callable, x: Any, state: Any, index: int | None, kept: Callable[[Any], bool] | None
) -> tuple[Any, Any]:
    """``module(x, state)``, checked by :func:`_checked_pair`."""
    return _checked_pair(module(x, state), state, index, kept)


def _checked_pair(
    out: Any, state: Any, index: int | None, kept: Callable[[Any], bool] | None
) -> tuple[Any, Any]:
    """`out`, a module's return value for `state`, if it is a ``(y, state)`` pair whose state
    keeps the layout of `state`; else the error. `kept` is one of `state`'s :func:`layout_tests`
    (None: the rule alone decides); `index` is the module's place in a module list, for the
    error's path."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "a module called with a state must return a `(y, state)` pair; "
            f"got {type(out).__qualname__}"
            + (f" of length {len(out)}" if isinstance(out, tuple) else "")
        )
    if kept is None or not kept(out[1]):
        _check_state_kept(state, out[1], "state" if index is None else f"state[{index}]")
    return out


# Layout tests by state structure: Python functions generated once per structure, as the loop
# runs one per step.
_layout_code: dict[Any, Callable] = {}


def layout_tests(state: Any) -> tuple[Callable[[Any], bool], Callable[[Any], bool]] | None:
    """Fast tests of the kept-state rule for states laid out as `state`: ``(full, shapes)``,
    where ``full(new)`` is True when `new` has `state`'s structure (container types, lengths,
    dict keys), shapes and dtypes, and ``shapes(new)`` the same without the dtypes. Sufficient
    tests: when one says no, :func:`_check_state_kept` (the rule itself) decides and names what
    changed. None for a state holding a dataclass or pytree node (the rule walks those).

    The tests are straight-line code generated once per structure (no recursion, no paths), so
    that checking a nested dict state costs about what reading its arrays' shapes does.
    """
    constants: list = []
    lines: list[tuple[str, str]] = []  # (the full test's line, the shapes test's line)
    structure: list = []

    def line(text: str) -> None:
        lines.append((text, text))

    def visit(tree: Any, name: str) -> bool:
        cls = type(tree)
        if cls is dict or cls is tuple or cls is list or isinstance(tree, tuple):
            keys = tuple(tree) if cls is dict else len(tree)
            structure.append((cls, keys))
            constants.append(cls)
            line(f"if type({name}) is not c[{len(constants) - 1}]: return False")
            if cls is dict:
                constants.append(tree.keys())
                line(f"if {name}.keys() != c[{len(constants) - 1}]: return False")
            else:
                line(f"if len({name}) != {len(tree)}: return False")
            items = tree.items() if cls is dict else enumerate(tree)
            for i, (key, item) in enumerate(items):
                child = f"{name}_{i}"
                constants.append(key)
                line(f"{child} = {name}[c[{len(constants) - 1}]]")
                if not visit(item, child):
                    return False
            return True
        if tree is None:
            structure.append(None)
            line(f"if {name} is not None: return False")
            return True
        if node(tree) is not None or not hasattr(tree, "shape"):
            return False
        structure.append("array")
        constants.append(tree.shape)
        constants.append(tree.dtype)
        n = len(constants)
        shape = f"if {name}.shape != c[{n - 2}]"
        lines.append(
            (f"{shape} or {name}.dtype != c[{n - 1}]: return False", f"{shape}: return False")
        )
        return True

    if not visit(state, "s"):
        return None
    key = tuple(structure)
    make = _layout_code.get(key)
    if make is None:
        # A state without even the structure fails an index or attribute: not kept either.
        def test(name: str, body: list[str]) -> str:
            indented = "\n".join(f"            {text}" for text in body)
            return (
                f"    def {name}(s):\n        try:\n{indented}\n"
                "        except (AttributeError, KeyError, IndexError, TypeError):\n"
                "            return False\n        return True\n"
            )

        source = (
            "def make(c):\n"
            + test("full", [full for full, _ in lines])
            + test("shapes", [shapes for _, shapes in lines])
            + "    return full, shapes\n"
        )
        namespace: dict[str, Any] = {}
        exec(compile(source, "<dualstep layout test>", "exec"), namespace)
        make = _layout_code[key] = namespace["make"]
        if len(_layout_code) > 256:  # a program making ever new structures: keep it bounded
            _layout_code.pop(next(iter(_layout_code)))
    return make(constants)


def _full_test(state: Any) -> Callable[[Any], bool] | None:
    layout = layout_tests(state)
    return None if layout is None else layout[0]


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
    Tuples, lists, dicts, dataclasses and registered JAX pytrees are walked (:mod:`._tree`).
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
    node_before, node_after = node(before), node(after)
    if node_before is not None or node_after is not None:
        if node_before is None or node_after is None or node_before.key != node_after.key:
            raise _state_changed(path, _describe_node(before), _describe_node(after))
        pairs = zip(node_before.children, node_after.children, strict=True)
        for suffix, (item, new) in zip(node_before.suffixes, pairs, strict=True):
            _check_state_kept(item, new, path + suffix)
        return
    if before is None or after is None or not hasattr(after, "shape"):
        if before is not after:
            raise _state_changed(path, _describe(before), _describe(after))
        return
    if tuple(before.shape) != tuple(after.shape) or (
        before.dtype != after.dtype and not _autocast(after)
    ):
        raise _state_changed(path, _describe(before), _describe(after))


def _describe_node(a: Any) -> str:
    found = node(a)
    if found is None:
        return _describe(a)
    fields = [suffix.lstrip(".") for suffix in found.suffixes]
    # A JAX treedef also shows static fields, which may be what changed.
    static = "" if isinstance(found.key, tuple) else f" ({found.key})"
    return f"a {type(a).__name__} with fields {fields}{static}"


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
    return _apply_checked(x, state, modules, None)


def _apply_checked(x: Any, state: Any, modules: Any, tests: Any) -> tuple[Any, Any]:
    """:func:`apply_stateful` with the layout tests of `state` (None: none)."""
    if not isinstance(modules, (list, tuple)):
        return _call_stateful(modules, x, state, None, tests)
    new_state = []
    for i, (module, s) in enumerate(zip(modules, state, strict=True)):
        if s is None:
            x = module(x)
        else:
            x, s = _call_stateful(module, x, s, i, tests and tests[i])
        new_state.append(s)
    return x, tuple(new_state)


def memory_modules(modules: Any) -> list:
    """The SpikingJelly memory modules (neurons) that `modules` is or holds.

    torch modules are searched through their submodules (a neuron in a ``Sequential``);
    functions are opaque. SpikingJelly cannot have made one if it was never imported.
    """
    sj_base = sys.modules.get("spikingjelly.activation_based.base")
    if sj_base is None:
        return []
    found = []
    for module in modules if isinstance(modules, (list, tuple)) else (modules,):
        for sub in module.modules() if hasattr(module, "named_modules") else (module,):
            if isinstance(sub, sj_base.MemoryModule):
                found.append(sub)
    return found


def run_steps(steps: Iterable[Any], modules: Any, state: Any) -> tuple[list, Any]:
    """The plain loop: call the module(s) on each item of `steps` in order, threading `state`.

    Returns the list of outputs and the final state (None when `state` is None).
    """
    if state is None:
        return [apply_modules(x, modules) for x in steps], None
    ys: list = []
    # Under torch.compile the rule itself runs, once at trace time: the compiled graph checks
    # nothing per step, and the generated layout tests cannot be traced.
    if not isinstance(modules, (list, tuple)) and not compiling():
        # The rule in full at the first step; after it structure and shapes at every step
        # (dtypes do not change with values), and the final state in full again.
        layout = layout_tests(state)
        full, shapes = (None, None) if layout is None else layout
        initial = state
        for x in steps:  # `_call_stateful` inlined: this runs once per step
            out = modules(x, state)
            if shapes is None or type(out) is not tuple or len(out) != 2 or not shapes(out[1]):
                _checked_pair(out, state, None, None)
            elif not ys:
                _checked_pair(out, state, None, full)
            y, state = out
            ys.append(y)
        if full is None or not full(state):
            _check_state_kept(initial, state, "state")
        return ys, state
    tests = None
    if isinstance(modules, (list, tuple)) and not compiling():
        tests = [None if s is None else _full_test(s) for s in state]
    for x in steps:
        y, state = _apply_checked(x, state, modules, tests)
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

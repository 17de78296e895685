"""Walking nestings of tuples (named tuples kept), lists, dicts, dataclasses and registered JAX
pytrees, with each leaf's path.

Tuples, lists and dicts are walked on every backend; so are dataclass instances (their fields,
paths ``state.v``). When JAX is imported, any registered pytree node (a
``jax.tree_util.register_dataclass`` class, a Flax ``struct.dataclass``, an Equinox module) is
walked as JAX flattens it, so static fields stay out of the leaves. Arrays, ``None`` and
anything else are leaves.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._dispatch import compiling

_CONTAINERS = (tuple, list, dict, type(None))
# Types seen to be leaves (arrays, scalars, plain objects): decided once, as the walk of a state
# runs on every call.
_leaf_types: set[type] = {int, float, complex, bool, str, bytes, np.ndarray}


class Node:
    """A dataclass or pytree node, one level: its children with their path suffixes, a key that
    is equal for two nodes of the same structure, and a way to rebuild it with new children."""

    __slots__ = ("children", "key", "rebuild", "suffixes")

    def __init__(
        self, key: Any, suffixes: list[str], children: list, rebuild: Callable[[list], Any]
    ):
        self.key, self.suffixes, self.children, self.rebuild = key, suffixes, children, rebuild


def node(tree: Any) -> Node | None:
    """`tree` as a :class:`Node` when it is a dataclass instance or a registered JAX pytree
    node (neither a tuple, list, dict nor None); else None, a leaf."""
    cls = type(tree)
    # While torch.compile traces, the type cache is neither read nor written: compiled code
    # guards on what it reads, and a cache that fills up later would force a recompile.
    cached = not compiling()
    if (cached and cls in _leaf_types) or isinstance(tree, _CONTAINERS):
        return None
    if isinstance(tree, (np.ndarray, np.generic)) or _is_tensor(tree):
        if cached:
            _leaf_types.add(cls)
        return None
    jax = sys.modules.get("jax")
    if jax is not None and not isinstance(tree, (jax.Array, jax.core.Tracer)):
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda n: n is not tree)
        if not (len(flat) == 1 and flat[0][1] is tree):
            return Node(
                treedef,
                [jax.tree_util.keystr(path) for path, _ in flat],
                [child for _, child in flat],
                treedef.unflatten,
            )
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        names = [f.name for f in dataclasses.fields(tree)]

        def rebuild(children: list) -> Any:
            new = copy.copy(tree)
            for name, child in zip(names, children, strict=True):
                object.__setattr__(new, name, child)  # frozen dataclasses too
            return new

        return Node(
            (type(tree), tuple(names)),
            [f".{name}" for name in names],
            [getattr(tree, name) for name in names],
            rebuild,
        )
    if cached and jax is not None and not isinstance(tree, jax.core.Tracer):
        _leaf_types.add(cls)  # neither a pytree node nor a dataclass (tracer types vary)
    return None


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def map_with_path(fn: Callable[[Any, str], Any], tree: Any, path: str) -> Any:
    """`tree` with every leaf replaced by ``fn(leaf, path)``; paths read ``state['v'][0]``."""
    if isinstance(tree, tuple):
        items = [map_with_path(fn, v, f"{path}[{i}]") for i, v in enumerate(tree)]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    if isinstance(tree, list):
        return [map_with_path(fn, v, f"{path}[{i}]") for i, v in enumerate(tree)]
    if isinstance(tree, dict):
        return {k: map_with_path(fn, v, f"{path}[{k!r}]") for k, v in tree.items()}
    found = node(tree)
    if found is not None:
        return found.rebuild(
            [
                map_with_path(fn, child, path + suffix)
                for suffix, child in zip(found.suffixes, found.children, strict=True)
            ]
        )
    return fn(tree, path)


def leaves_with_path(tree: Any, path: str, *, sort_keys: bool = False) -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` for every leaf of `tree`, in order: dicts in insertion order, or by
    sorted key with `sort_keys` (JAX's order, so trees from every backend line up)."""
    if isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            yield from leaves_with_path(v, f"{path}[{i}]", sort_keys=sort_keys)
    elif isinstance(tree, dict):
        for k in sorted(tree) if sort_keys else tree:
            yield from leaves_with_path(tree[k], f"{path}[{k!r}]", sort_keys=sort_keys)
    else:
        found = node(tree)
        if found is None:
            yield path, tree
            return
        for suffix, child in zip(found.suffixes, found.children, strict=True):
            yield from leaves_with_path(child, path + suffix, sort_keys=sort_keys)

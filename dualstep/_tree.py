"""Walking nestings of tuples (named tuples kept), lists and dicts, with each leaf's path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def map_with_path(fn: Callable[[Any, str], Any], tree: Any, path: str) -> Any:
    """`tree` with every leaf replaced by ``fn(leaf, path)``; paths read ``state['v'][0]``."""
    if isinstance(tree, tuple):
        items = [map_with_path(fn, v, f"{path}[{i}]") for i, v in enumerate(tree)]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    if isinstance(tree, list):
        return [map_with_path(fn, v, f"{path}[{i}]") for i, v in enumerate(tree)]
    if isinstance(tree, dict):
        return {k: map_with_path(fn, v, f"{path}[{k!r}]") for k, v in tree.items()}
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
        yield path, tree

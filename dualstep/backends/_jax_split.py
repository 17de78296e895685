"""Split a JAX step into the arrays it reads and a static key, as ``equinox.filter_jit`` does.

The eager compile cache (in :mod:`dualstep.backends.jax`) keys a compiled program by the key and
passes the arrays as arguments, so a step whose weights change is neither stale nor recompiled,
and a new closure or ``functools.partial`` of the same code with new arrays reuses the program.

What is walked, every call: tuples (named tuples included), lists and dicts; ``functools.partial``
(function, arguments, keywords); bound methods (function and ``self``); Python functions (closure
cells, defaults; the code and module namespace are keyed by identity); registered JAX pytrees
(Equinox modules, Flax NNX modules, ...) one level at a time; Flax NNX graph nodes that are not
pytrees through ``nnx.split``; plain Python objects (attributes in ``__dict__`` and slots).
JAX and NumPy arrays (numbers and bools) are the arrays passed in. Python scalars, NumPy scalars
(``np.int64(2)``, ``np.float32(0.5)``: immutable, like a Python number, and what ``nir.read``
gives for a node's integer fields), strings and other values hashable by value are part of the
key by value (a change recompiles, as a static
argument of ``jax.jit`` would); anything else is keyed by identity through a weak reference.
So are ``jax.custom_vjp`` and ``jax.custom_jvp`` functions (a surrogate spike) and jitted
functions (``jnp.tanh``), which are not walked: what they close over is baked into the program
at its first trace, as globals are (``jax.jit`` itself does the same).

The key holds no strong reference to the step or its arrays: code objects, module namespaces,
classes and values hashable by value only. Not seen: module-level globals (baked into the
program at its first trace), class attributes, arrays inside objects that are none of the above
(keyed by identity). A cycle in the structure, or an object that can be neither walked, hashed
nor weakly referenced, makes the step uncacheable (it then runs uncached, correct but slower).
"""

from __future__ import annotations

import copy
import functools
import sys
import types
import weakref
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class Uncacheable(Exception):
    """The step cannot be keyed without a strong reference or an endless walk."""


class _EmptyCell:
    """Stands for a closure cell with no value yet (a name assigned later in its scope)."""


_EMPTY_CELL = _EmptyCell()
_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python
_STATIC_BY_IDENTITY = (
    type,
    types.ModuleType,
    types.BuiltinFunctionType,
    types.CodeType,
    np.ufunc,
)


# Functions with custom derivatives and jitted functions (``jnp.tanh`` is one): their
# attributes (the function, its rules, functools' `__wrapped__`, jit's options) refer back to
# one another or cannot be keyed, and what they do is fixed once defined; jit bakes what a
# jitted function closes over into its program too.
_KEYED_BY_IDENTITY = (jax.custom_vjp, jax.custom_jvp, type(jax.jit(abs)))
_NOT_WALKED = (*_STATIC_BY_IDENTITY, *_KEYED_BY_IDENTITY)  # leaves of the walk, kept whole


_ARRAY, _NUMPY, _SCALAR, _NUMPY_SCALAR, _OTHER = range(5)
_type_kinds: dict[type, int] = {}


def _type_kind(cls: type) -> int:
    """What a type is to the walk, decided once per type (the walk runs on every call)."""
    kind = _type_kinds.get(cls)
    if kind is None:
        if issubclass(cls, (jax.Array, jax.core.Tracer)):
            kind = _ARRAY
        elif issubclass(cls, np.ndarray):
            kind = _NUMPY
        elif issubclass(cls, np.generic):
            kind = _NUMPY_SCALAR
        elif cls in _SCALARS:
            kind = _SCALAR
        else:
            kind = _OTHER
        _type_kinds[cls] = kind
    return kind


def _is_array(x: Any) -> bool:
    kind = _type_kind(type(x))
    if kind == _NUMPY:  # numbers and bools; object or string arrays are static values
        return x.dtype == np.bool_ or bool(jnp.issubdtype(x.dtype, jnp.number))
    return kind == _ARRAY


# A node is (key part, children); `_make(obj, key part, new children)` builds the new object.
_Node = tuple[Any, list]


def _function(fn: types.FunctionType) -> _Node:
    defaults, kwdefaults, closure = fn.__defaults__, fn.__kwdefaults__, fn.__closure__
    if defaults is None and kwdefaults is None and closure is None:
        return ("function", fn.__code__, fn.__globals__, 0, ()), []
    children = list(defaults or ())
    kw_names = tuple(kwdefaults or ())
    children += (kwdefaults or {}).values()
    for cell in closure or ():
        try:
            children.append(cell.cell_contents)
        except ValueError:  # an empty cell (a name assigned later in the enclosing scope)
            children.append(_EMPTY_CELL)
    return ("function", fn.__code__, fn.__globals__, len(defaults or ()), kw_names), children


def _make_function(fn: types.FunctionType, key: tuple, children: list) -> Any:
    n_def, kw_names = key[3], key[4]
    n_kw = n_def + len(kw_names)
    closure = tuple(
        types.CellType() if c is _EMPTY_CELL else types.CellType(c) for c in children[n_kw:]
    )
    new = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, tuple(children[:n_def]) or None, closure
    )
    new.__kwdefaults__ = dict(zip(kw_names, children[n_def:n_kw], strict=True)) or None
    new.__qualname__ = fn.__qualname__
    new.__dict__.update(fn.__dict__)
    return new


def _slots(cls: type) -> list[str]:
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names += [slots] if isinstance(slots, str) else list(slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]


# Per type, decided at first sight: "pytree" (a registered node: flattened every call),
# "nnx" (an NNX graph node that is not a pytree), "plain" (a class defined in Python, every
# base too: its attributes are walked), or "opaque" (a leaf).
_object_kinds: dict[type, str] = {}
_slot_names: dict[type, list[str]] = {}


def _object_kind(obj: Any) -> str:
    cls = type(obj)
    kind = _object_kinds.get(cls)
    if kind is not None:
        return kind
    children, _ = jax.tree_util.tree_flatten(obj, is_leaf=lambda n: n is not obj)
    nnx = sys.modules.get("flax.nnx")
    if not (len(children) == 1 and children[0] is obj):
        kind = "pytree"
    elif nnx is not None and isinstance(obj, nnx.Module):
        kind = "nnx"
    elif all(k is object or k.__flags__ & _HEAPTYPE for k in cls.__mro__):
        kind = "plain"
        _slot_names[cls] = _slots(cls)
    else:
        kind = "opaque"
    _object_kinds[cls] = kind
    return kind


def _plain_object(obj: Any) -> _Node | None:
    """An instance of a class defined in Python: its attributes (``__dict__`` and slots)."""
    cls = type(obj)
    slots = _slot_names[cls]
    names = [n for n in slots if hasattr(obj, n)] if slots else []
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        names += attrs
    elif not names:
        return None
    return ("object", cls, tuple(names)), [getattr(obj, n) for n in names]


def _node(obj: Any) -> _Node | None:
    """The key part and children of `obj`; None for a leaf."""
    cls = type(obj)
    if cls in _SCALARS:
        return None
    if cls is types.FunctionType:
        return _function(obj)
    if cls is tuple or (isinstance(obj, tuple) and hasattr(obj, "_fields")):
        return ("tuple", cls), list(obj)
    if cls is list:
        return "list", list(obj)
    if isinstance(obj, dict):
        return ("dict", cls, tuple(obj)), list(obj.values())
    if cls is functools.partial:
        return ("partial", len(obj.args), tuple(obj.keywords)), [
            obj.func,
            *obj.args,
            *obj.keywords.values(),
        ]
    if cls is types.MethodType:
        return "method", [obj.__func__, obj.__self__]
    if isinstance(obj, _NOT_WALKED):
        return None
    kind = _object_kind(obj)
    if kind == "pytree":
        children, treedef = jax.tree_util.tree_flatten(obj, is_leaf=lambda n: n is not obj)
        return ("pytree", treedef), children
    if kind == "nnx":  # an NNX graph node that is not a pytree (``pytree=False``)
        graphdef, state = sys.modules["flax.nnx"].split(obj)
        return ("nnx", graphdef), [state]
    return _plain_object(obj) if kind == "plain" else None


def _make(obj: Any, key: Any, children: list) -> Any:
    """`obj` rebuilt with new `children` (as `_node` listed them)."""
    kind = key if isinstance(key, str) else key[0]
    if kind == "function":
        return _make_function(obj, key, children)
    if kind == "tuple":
        return tuple(children) if key[1] is tuple else key[1](*children)
    if kind == "list":
        return children
    if kind == "dict":
        new = copy.copy(obj)
        new.update(zip(key[2], children, strict=True))
        return new
    if kind == "partial":
        n = key[1]
        return functools.partial(
            children[0], *children[1 : n + 1], **dict(zip(key[2], children[n + 1 :], strict=True))
        )
    if kind == "method":
        return types.MethodType(children[0], children[1])
    if kind == "pytree":
        return key[1].unflatten(children)
    if kind == "nnx":
        return sys.modules["flax.nnx"].merge(key[1], children[0])
    # A plain object: a bare instance of its class with the attributes set, bypassing
    # __init__, __copy__ and __setattr__ (frozen dataclasses, properties).
    new = object.__new__(key[1])
    for name in _slot_names[key[1]]:
        if hasattr(obj, name):
            object.__setattr__(new, name, getattr(obj, name))
    if isinstance(getattr(obj, "__dict__", None), dict):
        new.__dict__.update(obj.__dict__)
    for name, value in zip(key[2], children, strict=True):
        object.__setattr__(new, name, value)
    return new


def _static_key(obj: Any) -> Any:
    """The key of a leaf that is not an array: by value where hashable by value, else weakly."""
    cls = type(obj)
    if cls is float:
        return float, obj.hex()  # -0.0 == 0.0 and nan != nan: key floats by their bits
    if cls is complex:
        return complex, obj.real.hex(), obj.imag.hex()
    if isinstance(obj, _STATIC_BY_IDENTITY):
        return obj  # classes, modules, builtins: hashed by identity, long-lived
    if cls.__hash__ is not None and cls.__hash__ is not object.__hash__:
        try:
            hash(obj)
        except TypeError:
            pass
        else:
            return cls, obj
    try:
        return cls, weakref.ref(obj)
    except TypeError:
        raise Uncacheable(
            f"{cls.__qualname__} is neither hashable nor weakly referenceable"
        ) from None


_MAX_DEPTH = 100


def key_and_arrays(obj: Any) -> tuple[Any, list, list]:
    """The static key of `obj`, the arrays it holds in walking order, and the objects whose
    identity the key names (code objects and module namespaces, by ``id``: whoever keeps the
    key must keep these alive, so that no other object can take their ids)."""
    if (
        type(obj) is types.FunctionType
        and obj.__closure__ is None
        and obj.__defaults__ is None
        and obj.__kwdefaults__ is None
    ):  # the most common step: a plain function, keyed at once
        key = ("function", id(obj.__code__), id(obj.__globals__), 0, ())
        return (key, ()), [], [obj.__code__, obj.__globals__]
    arrays: list = []
    keep: list = []

    def walk(x: Any, depth: int) -> Any:
        cls = type(x)
        kind = _type_kinds.get(cls)
        if kind is None:
            kind = _type_kind(cls)
        if kind == _ARRAY:
            arrays.append(x)
            return None
        if kind == _SCALAR:
            return _static_key(x) if cls is float or cls is complex else (cls, x)
        if kind == _NUMPY_SCALAR:  # by its bits, as floats: nan and -0.0 keep their own key
            return (cls, x.tobytes()) if x.dtype.kind in "biufc" else _static_key(x)
        if kind == _NUMPY and _is_array(x):
            arrays.append(x)
            return None
        node = _node(x)
        if node is None:
            return _static_key(x)
        if depth > _MAX_DEPTH:
            raise Uncacheable("the step's structure is too deep or has a cycle")
        key, children = node
        if key[0] == "function":  # identity of code and namespace, not their values
            keep.append(key[1])
            keep.append(key[2])
            key = ("function", id(key[1]), id(key[2]), key[3], key[4])
        return key, tuple([walk(c, depth + 1) for c in children])

    return walk(obj, 0), arrays, keep


def rebuild(obj: Any, arrays: Iterator) -> Any:
    """`obj` with the arrays found by `key_and_arrays` replaced, in order, by `arrays`.

    Parts that hold no array are returned as they are, not copied.
    """

    def walk(x: Any) -> tuple[Any, bool]:
        if _is_array(x):
            return next(arrays), True
        node = _node(x)
        if node is None:
            return x, False
        key, children = node
        walked = [walk(c) for c in children]
        if not any(changed for _, changed in walked):
            return x, False
        return _make(x, key, [c for c, _ in walked]), True

    return walk(obj)[0]

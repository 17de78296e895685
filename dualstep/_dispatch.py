"""Pick the backend module for an input array, by type, without importing a framework."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

SUPPORTED = "torch.Tensor, jax.Array (or a JAX tracer) or numpy.ndarray"

_cache: dict[type, ModuleType] = {}


def kind_of(x: object) -> str | None:
    """``"torch"``, ``"jax"`` or ``"numpy"`` for an array of that kind, else None."""
    # A framework that is not in sys.modules cannot have made `x`, so it is never imported here.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None:
        core = sys.modules.get("jax.core")
        # Tracers are checked by class too: newer JAX may stop registering them as jax.Array.
        if isinstance(x, jax.Array) or (core is not None and isinstance(x, core.Tracer)):
            return "jax"
    if isinstance(x, np.ndarray):
        return "numpy"
    return None


def compiling() -> bool:
    """Whether torch.compile is tracing the current call (torch is never imported here)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def dtype_name(a: Any) -> str:
    """The dtype's name, the same on every backend (``"float32"``, ``"bfloat16"``, ``"bool"``)."""
    return str(a.dtype).removeprefix("torch.")


def _load(name: str) -> ModuleType:
    # Import statements, not importlib: torch.compile can trace these on a cold cache.
    if name == "torch":
        from .backends import torch as torch_backend

        return torch_backend
    if name == "jax":
        from .backends import jax as jax_backend

        return jax_backend
    from .backends import numpy as numpy_backend

    return numpy_backend


def backend_for(x: object, argument: str = "x_seq") -> ModuleType:
    """Return the backend module that handles `x`, or raise TypeError naming `argument`.

    The answer is cached per ``type(x)``; unsupported types are not cached. While torch.compile
    traces, the cache is neither read nor written: compiled code guards on what it reads, so a
    cache that fills up after a cold trace would force a recompile.
    """
    if compiling():
        return _resolve(x, argument)
    backend = _cache.get(type(x))
    if backend is None:
        backend = _cache[type(x)] = _resolve(x, argument)
    return backend


def _resolve(x: object, argument: str) -> ModuleType:
    name = kind_of(x)
    if name is None:
        raise TypeError(
            f"`{argument}` must be a {SUPPORTED}; got {type(x).__module__}.{type(x).__qualname__}"
        )
    return _load(name)

"""Settings that change how calls run, never what they compute."""

from __future__ import annotations

import sys

jax_cache = True


def set_jax_cache(enabled: bool) -> bool:
    """Turn the compile cache of eager JAX calls on or off; returns the previous setting.

    Eager JAX calls (``x_seq`` a concrete ``jax.Array``) reuse one compiled program per step
    structure, passing the arrays the step reads as arguments (docs, "What the JAX compile
    cache sees"). Turned off, every eager call traces the step afresh (slower, and it sees
    everything, module-level globals included); turning it off also empties it. Calls inside
    the user's own ``jax.jit`` never use it.

    Examples
    --------
    >>> import dualstep as ds
    >>> ds.set_jax_cache(False)
    True
    >>> ds.set_jax_cache(True)
    False
    """
    global jax_cache
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool; got {type(enabled).__qualname__}")
    previous, jax_cache = jax_cache, enabled
    if not enabled:
        clear_jax_cache()
    return previous


def clear_jax_cache() -> None:
    """Drop every compiled program of the eager JAX cache (say, after rebinding a global).

    Examples
    --------
    >>> import dualstep as ds
    >>> ds.clear_jax_cache()
    """
    backend = sys.modules.get("dualstep.backends.jax")
    if backend is not None:
        backend.clear_cache()

"""Public helpers for validating step functions across backends.

- `assert_backends_close`: run a step function through the forward functions on every
  installed backend against the NumPy float64 oracle; a `Report` of the errors.
- `assert_implementations_close`: two implementations of one model (a torch model and its
  JAX port, a model before and after NIR), on any two backends, compared step by step.
- `BACKENDS`, `installed_backends()` (`import_error(name)` says why an installed one does not
  import), `TOLERANCES` (by dtype name), `check_tolerance` (finite and non-negative, or
  ValueError) and `jax_x64(enable)`: the backends and the tolerance rule both helpers use, for
  tests and tools that compare too.
- `FUNCTIONS` (the five names), `STATEFUL_FUNCTIONS`, `TIME_LAST_FUNCTIONS`, `call(name, ...)`,
  `call_time_first(name, ...)` and `chunk_module(step)`: the one catalogue of how each function
  is called, in its own layout or time first, and how a step becomes a chunk module.
- Reference step functions written once against the array API (`affine_tanh`, `if_step`,
  `lif_step`); they run unchanged on torch, JAX and NumPy. `surrogate_spike(framework)`: a
  spike with a sigmoid surrogate gradient (:class:`dualstep.surrogate.Sigmoid`).
- :mod:`dualstep.testing.strategies`: hypothesis strategies for sequences and split sizes
  (imported separately, as it needs hypothesis).
"""

from ._functions import (
    FUNCTIONS,
    STATEFUL_FUNCTIONS,
    TIME_LAST_FUNCTIONS,
    call,
    call_time_first,
    chunk_module,
    move_time,
)
from ._steps import affine_tanh, if_step, lif_step
from ._surrogate import surrogate_spike
from ._validate import (
    BACKENDS,
    TOLERANCES,
    Report,
    Row,
    assert_backends_close,
    assert_implementations_close,
    check_tolerance,
    import_error,
    installed_backends,
    jax_x64,
)

__all__ = [
    "BACKENDS",
    "FUNCTIONS",
    "STATEFUL_FUNCTIONS",
    "TIME_LAST_FUNCTIONS",
    "TOLERANCES",
    "Report",
    "Row",
    "affine_tanh",
    "assert_backends_close",
    "assert_implementations_close",
    "call",
    "call_time_first",
    "check_tolerance",
    "chunk_module",
    "if_step",
    "import_error",
    "installed_backends",
    "jax_x64",
    "lif_step",
    "move_time",
    "surrogate_spike",
]

"""The five functions as one catalogue: how to call each by name, in its own layout or time first.

Every tool that runs "each of the five functions" (the validation helpers, the main job, the test
suite, the benchmarks) calls them through :func:`call` or :func:`call_time_first`, so the way a
single-step module becomes a chunk module, or a time-first input reaches a time-last function,
is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from array_api_compat import array_namespace

import dualstep as ds

from .._dispatch import kind_of
from .._modules import map_items

FUNCTIONS = (
    "multi_step_forward",
    "t_last_multi_step_forward",
    "chunk_multi_step_forward",
    "seq_to_ann_forward",
    "t_last_seq_to_ann_forward",
)
"""The five function names, as `call` takes them."""
STATEFUL_FUNCTIONS = FUNCTIONS[:3]
"""The three that run a step over time and take `state=`; the other two take stateless modules."""
TIME_LAST_FUNCTIONS = ("t_last_multi_step_forward", "t_last_seq_to_ann_forward")
"""The two whose sequences are `[batch_size, ..., T]`."""


def chunk_module(step: Any, **options: Any) -> Callable[..., Any]:
    """The multi-step module that runs single-step `step` over a chunk.

    Called as ``m(x_chunk)`` it returns ``multi_step_forward(x_chunk, step, **options)``; called
    as ``m(x_chunk, state)`` it passes ``state=state`` too and returns ``(y, state)``, so one
    module serves ``chunk_multi_step_forward`` with and without `state`; called as
    ``m(x_chunk, state, lengths=l)`` (by a call with ``lengths=``) it passes the lengths on.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import chunk_multi_step_forward
    >>> from dualstep.testing import chunk_module
    >>> def integrate(x, v):
    ...     return x + v, x + v
    >>> module = chunk_module(integrate)
    >>> y, v = chunk_multi_step_forward(2, np.ones((3, 1)), module, state=np.zeros(1))
    >>> y.ravel().tolist(), v.tolist()
    ([1.0, 2.0, 3.0], [3.0])
    """

    def module(x_chunk: Any, *state: Any, lengths: Any = None) -> Any:
        if lengths is not None:  # a chunk of a call with `lengths=`: the lengths left in it
            return ds.multi_step_forward(x_chunk, step, state=state[0], lengths=lengths, **options)
        if state:
            return ds.multi_step_forward(x_chunk, step, state=state[0], **options)
        return ds.multi_step_forward(x_chunk, step, **options)

    return module


def _check_function(function: str) -> None:
    if function not in FUNCTIONS:
        raise ValueError(f"`function` must be one of {FUNCTIONS}; got {function!r}")


def call(
    function: str,
    module: Any,
    x_seq: Any,
    *,
    state: Any = None,
    split_size: int = 2,
    as_given: bool = False,
    **options: Any,
) -> Any:
    """Call the function named `function` on `x_seq` in its own layout, as a user would.

    `module` is a single-step module (stateless for the seq_to_ann functions);
    ``chunk_multi_step_forward`` gets `split_size` and ``chunk_module(module)``, or `module`
    itself with ``as_given=True`` (a multi-step module). `state` is passed only when it is not
    None; `options` (``checkpoint=``, ``fused=``...) go to the function. Returns what the
    function returns: ``y_seq``, or ``(y_seq, final_state)`` with a state.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import call
    >>> call("t_last_seq_to_ann_forward", np.negative, np.ones((2, 3))).shape
    (2, 3)
    """
    _check_function(function)
    kwargs = options if state is None else {**options, "state": state}
    if function == "chunk_multi_step_forward":
        inner = module if as_given else chunk_module(module)
        return ds.chunk_multi_step_forward(split_size, x_seq, inner, **kwargs)
    return getattr(ds, function)(x_seq, module, **kwargs)


def move_time(y: Any, source: int, destination: int) -> Any:
    """An array, or each array of a tuple, with its axis `source` moved to `destination`
    (``movedim`` on torch, which ``torch.func.vmap`` can batch).

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import move_time
    >>> move_time(np.zeros((5, 2, 3)), 0, -1).shape  # [T, B, N] -> [B, N, T]
    (2, 3, 5)
    """

    def move(a: Any) -> Any:
        if kind_of(a) == "torch":
            return a.movedim(source, destination)
        return array_namespace(a).moveaxis(a, source, destination)

    return map_items(y, move)


def call_time_first(
    function: str,
    module: Any,
    x_seq: Any,
    *,
    state: Any = None,
    split_size: int = 2,
    **options: Any,
) -> tuple[Any, Any]:
    """:func:`call` with time first in and out: ``(y_seq, final_state)``.

    `x_seq` is ``[T, batch_size, ...]`` for every function: a time-last function gets it with
    time moved last and its outputs moved back. `final_state` is None without a state.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import call_time_first, lif_step
    >>> x = np.ones((4, 2, 3))
    >>> y, v = call_time_first("t_last_multi_step_forward", lif_step(), x, state=np.zeros((2, 3)))
    >>> y.shape, v.shape
    ((4, 2, 3), (2, 3))
    """
    _check_function(function)
    time_last = function in TIME_LAST_FUNCTIONS
    if time_last:
        x_seq = move_time(x_seq, 0, -1)
    out = call(function, module, x_seq, state=state, split_size=split_size, **options)
    y, final = (out, None) if state is None else out
    return (move_time(y, -1, 0) if time_last else y), final

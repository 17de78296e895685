"""Variable-length sequences: the rule of ``lengths=``, as one step wrapper every backend runs.

A batch of sequences padded to ``T`` steps comes with ``lengths``, the number of valid steps
of each batch element. At step ``t`` element ``b`` is stepped when ``t < lengths[b]``; after
that its state is frozen and its output is `fill`. So each element's final state is the state
after its own last step, and its outputs up to its length are those of running it alone: the
rule the tests check on every backend. The wrapped step carries the step count ``t`` in its
state beside the user's state, compares it with `lengths` (an array the step holds, so on JAX
new lengths are new arguments, never a new program) and selects with ``where`` leaf by leaf,
so gradients reach only the valid steps. Where the lengths can be read and the loop runs step
by step (eager torch and NumPy), the masks are made once before the loop instead, and the steps
up to the shortest length, which step every element, run without one (:func:`readable`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from ._dispatch import kind_of
from ._modules import apply_stateful
from ._tree import leaves_with_path, map_with_path
from .interop import to_numpy


def check_lengths(
    lengths: Any, x_seq: Any, batch_axis: int, time_axis: int
) -> tuple[Any, int | None]:
    """`lengths` as an integer array of `x_seq`'s kind, shape ``[B]`` (or ``[]``: one length
    for every element), its values within ``[0, T]`` where they can be read (not traced);
    and the shortest length (T for an empty batch), or None where they cannot."""
    xp = array_namespace(x_seq)
    if isinstance(lengths, (list, tuple)):
        for i, n in enumerate(lengths):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
                raise TypeError(
                    f"`lengths[{i}]` must be an int; got {type(n).__qualname__} ({n!r})"
                )
        lengths = xp.asarray([int(n) for n in lengths], dtype=xp.int32, device=device(x_seq))
    elif kind_of(lengths) != kind_of(x_seq):
        raise TypeError(
            "`lengths` must be an integer array of `x_seq`'s kind "
            f"({type(x_seq).__qualname__}) or a list/tuple of ints; got "
            f"{type(lengths).__module__}.{type(lengths).__qualname__}"
        )
    if not xp.isdtype(lengths.dtype, "integral"):
        raise TypeError(f"`lengths` must have an integer dtype; got {lengths.dtype}")
    if lengths.ndim == 1 and x_seq.ndim < 2:
        raise ValueError(
            f"`lengths` of shape {tuple(lengths.shape)} needs a batch axis in `x_seq`; got "
            f"shape {tuple(x_seq.shape)} (a 0-d `lengths` is one length for the whole call)"
        )
    batch = x_seq.shape[batch_axis] if x_seq.ndim > 1 else 0
    steps = x_seq.shape[time_axis]
    if lengths.ndim > 1 or (lengths.ndim == 1 and lengths.shape[0] != batch):
        raise ValueError(
            f"`lengths` must have shape [{batch}] (the batch axis {batch_axis} of `x_seq`) or "
            f"be 0-d; got shape {tuple(lengths.shape)}"
        )
    if not _concrete(lengths):
        return lengths, None
    values = np.asarray(to_numpy(lengths))  # on the host: one copy, not two device ops
    low, high = int(values.min(initial=steps)), int(values.max(initial=0))
    if low < 0 or high > steps:
        raise ValueError(
            f"`lengths` must lie within [0, T] (T = {steps}); got values from {low} to {high}"
        )
    return lengths, low


def pad_sequences(sequences: Any, *, time_axis: int = 0, fill: float = 0.0) -> tuple[Any, Any]:
    """Pad sequences of different lengths into one batch, for ``lengths=``.

    Parameters
    ----------
    sequences : list or tuple of arrays
        Arrays of one kind (torch, JAX or NumPy), dtype and shape but for their time axis:
        ``[T_i, ...]`` with ``time_axis=0``, ``[..., T_i]`` with ``time_axis=-1``.
    time_axis : {0, -1}
        Where time is in each sequence. ``0`` gives ``x_seq`` time first, ``[T, B, ...]``
        (for :func:`multi_step_forward`); ``-1`` gives it time last, ``[B, ..., T]`` (for
        :func:`t_last_multi_step_forward`).
    fill : float, default 0.0
        The value of the padding steps.

    Returns
    -------
    x_seq : array
        The sequences padded to the longest, ``T = max(T_i)``, stacked on the batch axis.
    lengths : array of int32, shape ``[B]``
        Each sequence's ``T_i``, of the same kind and device.

    Raises
    ------
    TypeError
        `sequences` is not a non-empty list/tuple of arrays of one kind and dtype.
    ValueError
        `time_axis` is neither 0 nor -1; the sequences' shapes differ off the time axis.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import pad_sequences
    >>> x_seq, lengths = pad_sequences([np.ones((3, 2)), np.ones((1, 2))])
    >>> x_seq.shape, lengths.tolist(), x_seq[:, 1, 0].tolist()
    ((3, 2, 2), [3, 1], [1.0, 0.0, 0.0])
    """
    if not isinstance(sequences, (list, tuple)) or not sequences:
        got = "an empty one" if isinstance(sequences, (list, tuple)) else type(sequences).__name__
        raise TypeError(f"`sequences` must be a non-empty list or tuple of arrays; got {got}")
    if time_axis not in (0, -1) or isinstance(time_axis, bool):
        raise ValueError(f"`time_axis` must be 0 or -1; got {time_axis!r}")
    first = sequences[0]
    kind = kind_of(first)
    for i, a in enumerate(sequences):
        if kind is None or kind_of(a) != kind or a.dtype != first.dtype or a.ndim < 1:
            raise TypeError(
                f"`sequences[{i}]` must be an array of the kind and dtype of `sequences[0]` "
                f"({type(first).__qualname__}, {getattr(first, 'dtype', None)}), with a time "
                f"axis; got {type(a).__qualname__} of dtype {getattr(a, 'dtype', None)}"
            )
        rest = a.shape[1:] if time_axis == 0 else a.shape[:-1]
        want = first.shape[1:] if time_axis == 0 else first.shape[:-1]
        if tuple(rest) != tuple(want):
            raise ValueError(
                f"`sequences[{i}]` must have the shape of `sequences[0]` off the time axis "
                f"({tuple(want)}); got shape {tuple(a.shape)}"
            )
    xp = array_namespace(first)
    steps = [a.shape[time_axis] for a in sequences]
    longest = max(steps)
    padded = []
    for a, n in zip(sequences, steps, strict=True):
        shape = (longest - n, *a.shape[1:]) if time_axis == 0 else (*a.shape[:-1], longest - n)
        pad = xp.full(shape, fill, dtype=a.dtype, device=device(a))
        padded.append(xp.concat([a, pad], axis=time_axis))
    x_seq = xp.stack(padded, axis=1 if time_axis == 0 else 0)
    return x_seq, xp.asarray(steps, dtype=xp.int32, device=device(first))


def _concrete(a: Any) -> bool:
    """Whether `a`'s values can be read now: not a JAX tracer, nor a torch tensor that
    torch.compile traces or torch.func transforms."""
    if kind_of(a) == "jax":
        import jax

        return not isinstance(a, jax.core.Tracer)
    if kind_of(a) == "torch":
        import torch

        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return False  # traced, or batched by torch.func: no values to read
        return a.device.type != "meta"
    return True


def initial(x_seq: Any, state: Any, steps: Any) -> tuple[Any, Any]:
    """The wrapped step's initial state: the step count 0 beside `state`. On torch the count
    is float32 (exact to `MAX_COUNTED_STEPS`): torch's `scan`, which a compiled or exported
    loop runs, differentiates floating carries only, and an integer one breaks its autograd."""
    if kind_of(x_seq) == "jax":  # a host zero: jit moves it with the call's arguments, while
        return np.zeros((), np.int32), state  # an eager jnp.zeros costs 0.2 ms per call
    xp = array_namespace(x_seq)
    counting = xp.int32
    if kind_of(x_seq) == "torch":
        _check_counted(steps, "a torch loop with `lengths=`", "run it eagerly")
        counting = xp.float32
    return xp.zeros((), dtype=counting, device=device(x_seq)), state


MAX_COUNTED_STEPS = 2**24  # float32 counts every step exactly up to here


def _check_counted(steps: Any, what: str, instead: str) -> None:
    if isinstance(steps, int) and steps > MAX_COUNTED_STEPS:  # a symbolic T: not compared
        raise ValueError(
            f"{what} counts steps in float32, exactly up to {MAX_COUNTED_STEPS}; got T = "
            f"{steps}: {instead}"
        )


def check_fill(fill: Any) -> float:
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise TypeError(f"`fill` must be a real number; got {type(fill).__qualname__}")
    return float(fill)


def check_state(state: Any) -> None:
    if state is None:
        raise ValueError(
            "`lengths=` freezes each batch element's state after its last step, so it needs "
            "the state passed with `state=`; a SpikingJelly memory module keeps its state "
            'hidden, where it cannot be frozen (docs, "Variable-length sequences"); got '
            "state=None"
        )


def _stepped(x: Any, state: Any, modules: Any, valid: Any, fill: float, batched: bool) -> tuple:
    """One step of `modules`, then each element's state kept and its outputs `fill` where
    `valid` is false: the rule, for the wrappers below. A padded step is given zeros, not
    its padding: the gradients through the discarded branch of a ``where`` are zero times
    the step's derivatives, which padding with NaN or inf would make NaN."""
    xp = array_namespace(x)
    x = _select(xp, valid, x, 0.0, "x", batched)
    y, new = apply_stateful(x, state, modules)
    if kind_of(state) is not None:  # one array: no tree to walk
        new = _select(xp, valid, new, state, "state", batched)
    else:
        old = dict(leaves_with_path(state, "state"))
        new = map_with_path(
            lambda a, path: _select(xp, valid, a, old[path], path, batched), new, "state"
        )
    y = map_with_path(lambda a, path: _select(xp, valid, a, fill, path, batched), y, "y")
    return y, new


def masked(modules: Any, lengths: Any, fill: float) -> Any:
    """`modules` as a step ``(x, (t, state)) -> (y, (t + 1, state))`` that steps each batch
    element while ``t < lengths`` and then keeps its state and outputs `fill`. (Filling the
    outputs here, not once after the loop, keeps it inside JAX's compiled scan.)"""
    batched = lengths.ndim == 1

    def step(x: Any, carry: tuple) -> tuple[Any, tuple]:
        t, state = carry
        y, new = _stepped(x, state, modules, t < lengths, fill, batched)
        return y, (t + 1, new)

    return step


def readable(modules: Any, lengths: Any, shortest: int, steps: int, fill: float) -> Any:
    """:func:`masked` where the lengths can be read and the loop runs step by step (eager
    torch and NumPy), as a step ``(x, state) -> (y, state)`` for one pass over `steps` steps:
    the first `shortest` steps step every element, so they run unmasked; the later ones take
    their masks from one comparison made before the loop, so no step count is carried. Bit
    for bit the results of :func:`masked` (a ``where`` with a mask all true returns its first
    operand), and checked alike: the state here, before the loop; each step's outputs."""
    batched = lengths.ndim == 1
    xp = array_namespace(lengths)
    t = xp.arange(shortest, steps, dtype=lengths.dtype, device=device(lengths))
    valid = t[:, None] < lengths[None, :] if batched else t < lengths
    rows = iter([None] * shortest + [valid[i, ...] for i in range(steps - shortest)])

    def step(x: Any, state: Any) -> tuple[Any, Any]:
        row = next(rows)
        if row is not None:
            return _stepped(x, state, modules, row, fill, batched)
        # The loop checks what a single module returns, as it would without lengths.
        listed = isinstance(modules, (list, tuple))
        out = apply_stateful(x, state, modules) if listed else modules(x, state)
        if batched and isinstance(out, tuple) and len(out) == 2:
            _check_batch_leaves(out[0], "y", lengths.shape[0])
        return out

    return step


def check_batched_state(state: Any, lengths: Any) -> None:
    """What :func:`_stepped` checks of the state at every step, once (:func:`readable`)."""
    if lengths.ndim == 1:
        _check_batch_leaves(state, "state", lengths.shape[0])


def _check_batch_leaves(tree: Any, path: str, batch: int) -> None:
    """:func:`_check_batch` on every array of `tree`."""
    if kind_of(tree) is not None:  # one array: no tree to walk
        _check_batch(tree, path, batch)
        return
    for leaf_path, a in leaves_with_path(tree, path):
        _check_batch(a, leaf_path, batch)


class Elementwise:
    """:func:`masked` for fused kernels: the step count and the lengths are state leaves of
    the step's shape (float32, exact to 2**24 steps) beside the state, so the step stays
    elementwise; each element compares its own count with its own length, in registers.

    ``lengths_leaf`` tells a kernel which state leaf holds the lengths: past the largest
    length of a block of elements the step keeps their state and outputs `fill`, so its
    backward kernel starts the block at that step (:mod:`dualstep.fused`)."""

    lengths_leaf = 1  # of the state's leaves (t, lengths, *state)

    def __init__(self, modules: Any, fill: float) -> None:
        self.modules, self.fill = modules, fill

    def __call__(self, x: Any, carry: tuple) -> tuple[Any, tuple]:
        t, n, state = carry
        y, new = _stepped(x, state, self.modules, t < n, self.fill, False)
        return y, (t + 1.0, n, new)


def elementwise_initial(x_seq: Any, lengths: Any, state: Any, time_axis: int) -> tuple:
    """The initial state of :func:`elementwise`: counts 0 and the lengths, each broadcast to
    one step's shape (the batch on axis 0 of a step in both layouts)."""
    xp = array_namespace(x_seq)
    shape = tuple(x_seq.shape[1:] if time_axis == 0 else x_seq.shape[:-1])
    _check_counted(x_seq.shape[time_axis], "`lengths=` in a fused kernel", "use fused=False")
    n = xp.astype(lengths, xp.float32)
    if lengths.ndim:
        n = xp.reshape(n, (lengths.shape[0],) + (1,) * (len(shape) - 1))
    n = xp.broadcast_to(n, shape)
    t = xp.zeros(shape, dtype=xp.float32, device=device(x_seq))
    return t, n, state


def fits_elementwise(x_seq: Any, state: Any, time_axis: int) -> bool:
    """Whether every state leaf has one step's shape (what a fused kernel needs)."""
    shape = tuple(x_seq.shape[1:] if time_axis == 0 else x_seq.shape[:-1])
    return all(a is None or tuple(a.shape) == shape for _, a in leaves_with_path(state, "state"))


def filled(y_seq: Any, lengths: Any, fill: float) -> Any:
    """`y_seq` (time first, ``[n, B, ...]``) with each element's outputs from its length on
    set to `fill` (a 0-d `lengths`: one length for all)."""

    def fill_leaf(a: Any, _: str) -> Any:
        if a is None:
            return None
        xp = array_namespace(a)
        t = xp.arange(a.shape[0], dtype=lengths.dtype, device=device(a))
        valid = t[:, None] < lengths[None, :] if lengths.ndim else t < lengths
        valid = xp.reshape(valid, tuple(valid.shape) + (1,) * (a.ndim - valid.ndim))
        return xp.where(valid, a, xp.full_like(a, fill))

    return map_with_path(fill_leaf, y_seq, "y")


def _check_batch(a: Any, path: str, batch: int) -> None:
    if a is not None and (a.ndim == 0 or a.shape[0] != batch):
        raise ValueError(
            f"`lengths=` steps each batch element on its own, so `{path}` must have the "
            f"batch ({batch}) as its first axis; got shape {tuple(a.shape)}"
        )


def _select(xp: Any, valid: Any, a: Any, other: Any, path: str, batched: bool) -> Any:
    """`a` where the element is still valid, else `other` (an array, or the fill value);
    per batch element along axis 0."""
    if a is None:
        return None
    if batched:
        _check_batch(a, path, valid.shape[0])
        valid = xp.reshape(valid, (valid.shape[0],) + (1,) * (a.ndim - 1))
    if isinstance(other, float) and not xp.isdtype(a.dtype, "real floating"):
        other = xp.full_like(a, other)  # a Python float would widen an integer or bool output
    return xp.where(valid, a, other)


def chunked(modules: Any, lengths: Any, fill: float) -> Any:
    """Multi-step `modules` as a chunk module ``(x_chunk, (t0, state)) -> (y, (t0 + n,
    state))``: each stateful module is called as ``m(x_chunk, s, lengths=l)`` with `l` the
    lengths left within the chunk (``clip(lengths - t0, 0, n)``), so it freezes its own
    elements; the chunk's outputs past each element's length are `fill`."""
    items = modules if isinstance(modules, (list, tuple)) else [modules]

    def chunk(x: Any, carry: tuple) -> tuple[Any, tuple]:
        t0, state = carry
        xp = array_namespace(t0)
        n = x.shape[0]
        left = xp.clip(lengths - xp.astype(t0, lengths.dtype), min=0, max=n)
        states = state if isinstance(modules, (list, tuple)) else (state,)
        new = []
        for module, s in zip(items, states, strict=True):
            if s is None:
                x = module(x)
            else:
                x, s = module(x, s, lengths=left)
            new.append(s)
        x = filled(x, left, fill)
        state = tuple(new) if isinstance(modules, (list, tuple)) else new[0]
        return x, (t0 + n, state)

    return chunk

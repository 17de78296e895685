"""Export a dualstep call with the sequence length left free: the shapes that vary.

``torch.export.export``, ``torch.onnx.export(..., dynamo=True)`` and ``jax.export.export``
take a model that calls dualstep as it is: its time loop exports as one loop (torch's ``scan``,
ONNX's ``Scan``, StableHLO's ``while``) whatever ``T``. What they need from the caller is which
axes of the arguments vary, one entry per array, state pytrees included. The two helpers here
build that from example arguments: ``T`` and the batch free, every other axis fixed; the batch
axis is the first axis of each array whose first axis has the example's batch size (docs,
"Deploying").
"""

from __future__ import annotations

from typing import Any

from ._dispatch import kind_of

__all__ = ["dynamic_shapes", "symbolic_args"]


def dynamic_shapes(
    x_seq: Any, *others: Any, t_last: bool = False, split_size: int | None = None
) -> tuple:
    """``torch.export``'s `dynamic_shapes` for the arguments ``(x_seq, *others)``.

    Parameters
    ----------
    x_seq : torch.Tensor
        The example sequence, ``[T, batch_size, ...]``, or ``[batch_size, ..., T]`` with
        `t_last`.
    *others : pytrees of tensors
        The other arguments in order: initial states (tuples, lists, dicts, ``None`` entries),
        `lengths`. Each tensor whose first axis has the batch size gets the same dynamic batch
        axis; every other axis is fixed.
    t_last : bool, default False
        Time on the last axis (for :func:`~dualstep.t_last_multi_step_forward`).
    split_size : int, optional
        For :func:`~dualstep.chunk_multi_step_forward`: ``T`` is declared a multiple of it,
        ``split_size * Dim("chunks", min=2)``, which the exported scan over whole chunks needs
        (torch's trace guards against a single chunk).

    Returns
    -------
    tuple
        One entry per argument: ``{axis: torch.export.Dim}`` for a tensor, ``None`` for a
        fixed one, the structure of each pytree kept.

    Raises
    ------
    TypeError
        `x_seq` is not a torch tensor with a batch axis.
    ValueError
        The example's batch size or ``T`` is below 2 (``torch.export`` fixes an axis whose
        example is 0 or 1, and the batch axes are told apart by their size), or ``T`` is not
        a multiple of `split_size`.

    Examples
    --------
    >>> import torch
    >>> from dualstep.export import dynamic_shapes
    >>> x, state = torch.zeros(5, 3, 8), {"v": torch.zeros(3, 8), "tau": torch.tensor(2.0)}
    >>> spec = dynamic_shapes(x, state)
    >>> sorted(spec[0]), sorted(spec[1]["v"]), spec[1]["tau"]
    ([0, 1], [0], None)
    """
    import torch

    time, batch = _axes(x_seq, "torch", t_last)
    steps, size = x_seq.shape[time], x_seq.shape[batch]
    _check_example(steps, size, split_size)
    if split_size is None:
        t_dim: Any = torch.export.Dim("T", min=1)
    else:
        t_dim = split_size * torch.export.Dim("chunks", min=2)
    b_dim = torch.export.Dim("batch", min=1)

    def spec(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == size:
            return {0: b_dim}
        return None

    first = {time % x_seq.ndim: t_dim, batch: b_dim}
    return (first, *(torch.utils._pytree.tree_map(spec, tree) for tree in others))


def symbolic_args(
    x_seq: Any, *others: Any, t_last: bool = False, split_size: int | None = None
) -> tuple:
    """``jax.export``'s arguments for ``(x_seq, *others)``: ``jax.ShapeDtypeStruct`` pytrees
    with ``T`` and the batch symbolic, for ``jax.export.export(jax.jit(f))(*args)``.

    The same rule as :func:`dynamic_shapes`: `x_seq` (a JAX or NumPy array) has its time and
    batch axes symbolic, each other array (states, `lengths`) its first axis where that has
    the batch size; dtypes and all other axes are the example's. With `split_size` ``T`` is
    ``split_size * chunks``. Raises as :func:`dynamic_shapes` does.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.export import symbolic_args
    >>> x_spec, v_spec = symbolic_args(np.zeros((5, 3, 8), np.float32), np.zeros((3, 8)))
    >>> str(x_spec.shape), str(v_spec.shape)
    ('(T, batch, 8)', '(batch, 8)')
    """
    import jax
    import numpy as np

    time, batch = _axes(x_seq, ("jax", "numpy"), t_last)
    steps, size = x_seq.shape[time], x_seq.shape[batch]
    _check_example(steps, size, split_size)
    if split_size is None:
        t_dim, b_dim = jax.export.symbolic_shape("T, batch")
    else:
        chunks, b_dim = jax.export.symbolic_shape("chunks, batch")
        t_dim = split_size * chunks

    def spec(a: Any) -> Any:
        shape = list(np.shape(a))
        if shape and shape[0] == size:
            shape[0] = b_dim
        dtype = a.dtype if hasattr(a, "dtype") else np.result_type(a)  # a Python number too
        return jax.ShapeDtypeStruct(tuple(shape), dtype)

    shape = list(x_seq.shape)
    shape[time], shape[batch] = t_dim, b_dim
    first = jax.ShapeDtypeStruct(tuple(shape), x_seq.dtype)
    return (first, *(jax.tree_util.tree_map(spec, tree) for tree in others))


def _axes(x_seq: Any, kinds: Any, t_last: bool) -> tuple[int, int]:
    """The time and batch axes of `x_seq`, checked to be an array of one of `kinds`."""
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    if kind_of(x_seq) not in kinds or x_seq.ndim < 2:
        raise TypeError(
            f"`x_seq` must be a {' or '.join(kinds)} array with a time and a batch axis; got "
            f"{type(x_seq).__qualname__}"
            + (f" of shape {tuple(x_seq.shape)}" if hasattr(x_seq, "shape") else "")
        )
    return (-1, 0) if t_last else (0, 1)


def _check_example(steps: int, size: int, split_size: int | None) -> None:
    if size < 2 or steps < 2:
        raise ValueError(
            "the example `x_seq` must have T >= 2 and a batch of 2 or more: torch.export fixes "
            "an axis whose example is 0 or 1, and the batch axes of the other arguments are "
            f"told apart by their size; got T = {steps}, batch size {size}"
        )
    if split_size is not None and (steps % split_size or steps < 2 * split_size):
        raise ValueError(
            f"the example's T must be a multiple of `split_size` ({split_size}), two chunks at "
            f"least; got T = {steps}"
        )

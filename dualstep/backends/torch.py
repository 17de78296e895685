"""PyTorch backend, the reference: Python loops over views, ``torch.vmap``; CUDA-safe.

With ``state=None`` every function computes exactly what SpikingJelly 2.0.0's function of the
same name computes (same ops in the same order), so results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from .._modules import (
    apply_modules,
    call_once,
    map_outputs,
    run_steps,
    stack_outputs,
    stacked_result,
)


def _stack_first(tensors: list) -> torch.Tensor:
    return torch.stack(tensors, dim=0)


def _stack_last(tensors: list) -> torch.Tensor:
    return torch.stack(tensors, dim=-1)


def _cat_first(tensors: list) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


def multi_step_forward(x_seq: torch.Tensor, modules: Any, state: Any) -> Any:
    ys, final = run_steps(x_seq.unbind(0), modules, state)
    return stacked_result(ys, final, state, _stack_first)


def t_last_multi_step_forward(x_seq: torch.Tensor, modules: Any, state: Any) -> Any:
    ys, final = run_steps(x_seq.unbind(-1), modules, state)
    return stacked_result(ys, final, state, _stack_last)


def chunk_multi_step_forward(
    split_size: int, x_seq: torch.Tensor, modules: Any, state: Any, checkpoint: bool
) -> Any:
    chunks = torch.split(x_seq, split_size)
    if not torch.is_grad_enabled():
        # Nothing to save for backward, so checkpointing is moot and outputs can be preallocated.
        return _chunks_preallocated(chunks, x_seq.shape[0], modules, state, call_once, _copy_into)
    if checkpoint:
        return _chunks_preallocated(
            chunks, x_seq.shape[0], modules, state, _call_checkpointed, _Into.apply
        )
    ys, final = run_steps(chunks, modules, state)
    return stacked_result(ys, final, state, _cat_first)


def _call_checkpointed(xc: Any, state: Any, modules: Any) -> tuple[Any, Any]:
    """One chunk whose activations are dropped and recomputed in the backward pass."""
    return checkpoint_fn(call_once, xc, state, modules, use_reentrant=False)


def _copy_into(out: torch.Tensor, y: torch.Tensor, offset: int) -> torch.Tensor:
    out[offset : offset + y.shape[0]].copy_(y)
    return out


class _Into(torch.autograd.Function):
    """`_copy_into` for autograd: the gradient of the chunk is a view of the result's gradient.

    ``torch.cat`` would need every chunk's output alive at once next to the result, and an
    autograd-recorded slice copy clones the whole gradient once per chunk in the backward pass;
    this writes each chunk as it comes, and its backward only slices.
    """

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, y: torch.Tensor, offset: int) -> torch.Tensor:
        ctx.span = (offset, offset + y.shape[0])
        ctx.mark_dirty(out)
        return _copy_into(out, y, offset)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        start, stop = ctx.span
        return grad, grad[start:stop], None


def _chunks_preallocated(
    chunks: Any, steps: int, modules: Any, state: Any, call: Callable, write: Callable
) -> Any:
    """Write each chunk's output into one result allocated from the first chunk's output.

    `call(xc, state, modules)` runs one chunk; `write(out, y, offset)` stores `y` at `offset`
    and returns the result. Falls back to concatenation (same values, same errors as
    ``torch.cat``) as soon as an output does not fit: not aligned with its chunk, another
    trailing shape, dtype or device, or a first output that is not contiguous (``cat`` might
    then pick another layout).
    """
    out: tuple | None = None
    offset = 0
    pending: list = []  # outputs to concatenate, once preallocation gave up
    for xc in chunks:
        y, state = call(xc, state, modules)
        items = y if isinstance(y, tuple) else (y,)
        if out is None and not pending:
            out = _allocate(items, xc.shape[0], steps)
        if out is not None and _fits(items, out, xc.shape[0]):
            out = tuple(write(dst, src, offset) for dst, src in zip(out, items, strict=True))
            offset += xc.shape[0]
            continue
        if out is not None:
            written = tuple(o[:offset] for o in out)
            pending.append(written if isinstance(y, tuple) else written[0])
            out = None
        pending.append(y)
    if out is not None:
        y_seq = out if isinstance(y, tuple) else out[0]
    else:
        y_seq = stack_outputs(pending, _cat_first)
    return y_seq if state is None else (y_seq, state)


def _allocate(items: tuple, length: int, steps: int) -> tuple | None:
    ok = all(
        isinstance(a, torch.Tensor) and a.ndim >= 1 and a.shape[0] == length and a.is_contiguous()
        for a in items
    )
    return tuple(a.new_empty((steps, *a.shape[1:])) for a in items) if ok else None


def _fits(items: tuple, out: tuple, length: int) -> bool:
    return len(items) == len(out) and all(
        isinstance(a, torch.Tensor)
        and a.shape[0] == length
        and a.shape[1:] == o.shape[1:]
        and a.dtype == o.dtype
        and a.device == o.device
        for a, o in zip(items, out, strict=True)
    )


def seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    t, b = (x_seq[0] if isinstance(x_seq, tuple) else x_seq).shape[:2]
    y = apply_modules(map_outputs(x_seq, lambda a: a.flatten(0, 1)), modules)
    return map_outputs(y, lambda a: a.unflatten(0, (t, b)))


def t_last_seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    return torch.vmap(lambda x: apply_modules(x, modules), in_dims=-1, out_dims=-1)(x_seq)

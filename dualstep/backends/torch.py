"""PyTorch backend, the reference: Python loops over views, ``torch.vmap``; CUDA-safe.

With ``state=None`` every function computes exactly what SpikingJelly 2.0.0's function of the
same name computes (same ops in the same order), so results are bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch

from .._modules import apply_modules, map_outputs, run_steps, stack_outputs


def _stack_first(tensors: list) -> torch.Tensor:
    return torch.stack(tensors, dim=0)


def _stack_last(tensors: list) -> torch.Tensor:
    return torch.stack(tensors, dim=-1)


def _cat_first(tensors: list) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


def _result(ys: list, final: Any, state: Any, stack: Any) -> Any:
    y_seq = stack_outputs(ys, stack)
    return y_seq if state is None else (y_seq, final)


def multi_step_forward(x_seq: torch.Tensor, modules: Any, state: Any) -> Any:
    ys, final = run_steps(x_seq.unbind(0), modules, state)
    return _result(ys, final, state, _stack_first)


def t_last_multi_step_forward(x_seq: torch.Tensor, modules: Any, state: Any) -> Any:
    ys, final = run_steps(x_seq.unbind(-1), modules, state)
    return _result(ys, final, state, _stack_last)


def chunk_multi_step_forward(split_size: int, x_seq: torch.Tensor, modules: Any, state: Any) -> Any:
    ys, final = run_steps(torch.split(x_seq, split_size), modules, state)
    return _result(ys, final, state, _cat_first)


def seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    t, b = (x_seq[0] if isinstance(x_seq, tuple) else x_seq).shape[:2]
    y = apply_modules(map_outputs(x_seq, lambda a: a.flatten(0, 1)), modules)
    return map_outputs(y, lambda a: a.unflatten(0, (t, b)))


def t_last_seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    return torch.vmap(lambda x: apply_modules(x, modules), in_dims=-1, out_dims=-1)(x_seq)

"""PyTorch backend, the reference: Python loops over views, ``torch.vmap``; CUDA-safe.

With ``state=None`` every function computes exactly what SpikingJelly 2.0.0's function of the
same name computes (same ops in the same order), so results are bit-identical.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import checkpoint as _ckpt

from .._dispatch import compiling
from .._modules import (
    apply_modules,
    apply_stateful,
    call_once,
    loop_result,
    map_items,
    memory_modules,
    run_steps,
    same_tuple,
    stack_outputs,
)
from .._tree import map_with_path
from ..fused import NotFusable, not_fusable, warn_if_kernel_failed


def _stack_first(tensors: list) -> torch.Tensor:
    return torch.stack(tensors, dim=0)


def _stack_last(tensors: list) -> torch.Tensor:
    return torch.stack(tensors, dim=-1)


def _cat_first(tensors: list) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


def _steps(x_seq: torch.Tensor, dim: int) -> Any:
    # Without autograd the views of one `unbind` are SpikingJelly's views, made in one call.
    if not torch.is_grad_enabled():
        return x_seq.unbind(dim)
    return _views(
        x_seq, x_seq.shape[dim], lambda t: x_seq.select(dim, t), lambda: x_seq.unbind(dim)
    )


def _views(x_seq: torch.Tensor, n: int, view: Callable, views: Callable) -> Any:
    """The inputs of `n` steps or chunks: `view(i)` for each, SpikingJelly's own views, unless
    their backward would be quadratic; then those of one `views()` call where that changes
    nothing (`_first_decides`)."""
    if n > 1 and x_seq.requires_grad and torch.is_grad_enabled() and not _transformed():
        return _first_decides(x_seq, n, view, views)
    return [view(i) for i in range(n)]


def _transformed() -> bool:
    # dynamo traces the loop (and sees the version counter as a graph break) and torch.func
    # runs its own autograd: both keep SpikingJelly's views.
    return compiling() or torch._C._are_functorch_transforms_active()


def _first_decides(x_seq: torch.Tensor, n: int, view: Callable, views: Callable) -> Any:
    # The backward of each select view (or slice) adds a zero tensor the size of the whole
    # sequence into its gradient: n of them, quadratic in T. One `unbind` (or `split`) stacks
    # the steps' gradients once, but its views may not be changed in place under autograd,
    # which SpikingJelly's allow. So the first step decides, given a copy of its part: if it
    # changed it in place, the change is written into the sequence as SpikingJelly's view
    # would have made it (autograd records the write), and every later step gets
    # SpikingJelly's view; if not, the later steps get the views of the one `views()` call.
    parts = views()
    first = parts[0].clone()
    version, sequence_version = first._version, x_seq._version
    yield first
    changed = first._version != version
    if changed:
        view(0).copy_(first)
    if changed or x_seq._version != sequence_version:
        yield from (view(i) for i in range(1, n))
    else:
        yield from parts[1:]


# Where fused='auto' fuses: on CPU the kernels run interpreted, slower than the loop.
AUTO_FUSES_ON = ("cuda",)


@functools.cache
def _triton() -> Any:
    """The Triton lowering, imported at the first fused call (it imports triton)."""
    from ..fused import triton

    return triton


def auto_fuses(x_seq: torch.Tensor) -> bool:
    """Whether ``fused='auto'`` tries the kernel for `x_seq` (on CUDA)."""
    return x_seq.device.type in AUTO_FUSES_ON


def _fused(x_seq: torch.Tensor, modules: Any, state: Any, fused: bool | str) -> Any:
    """For `fused` True or 'auto': the fused kernel's result, or None for the loop ('auto'
    off CUDA or with a step that cannot be fused)."""
    if fused == "auto" and not auto_fuses(x_seq):
        return None
    if torch.compiler.is_exporting():  # the program would hold a launch of a Triton kernel
        if fused is True:
            raise not_fusable("`torch.export` cannot export a Triton kernel; export the loop")
        return None
    if math.prod(x_seq.shape[1:]) == 0:  # nothing to compute per step: the loop's result
        return None
    try:
        return _triton().multi_step(x_seq, modules, state)
    except NotFusable as error:
        if fused is True:
            raise
        warn_if_kernel_failed(error, "loop")
        return None


def _scannable(x_seq: torch.Tensor, modules: Any, state: Any, dim: int, unroll: Any) -> bool:
    """Whether a loop lowers to torch's `scan` (one loop construct) instead of T unrolled steps.

    Under ``torch.compile`` (full graphs), for stateful calls only: `scan` needs a
    pure step, a state of tensors (tuples, lists, dicts) and a carry whose dtypes stay fixed.
    With ``state=None`` the step may keep hidden memory (SpikingJelly's neurons), and eager
    calls keep the plain loop, which runs faster than an eager `scan`. `unroll` >= T traces
    the T steps one by one (a step with side effects, which `scan` refuses).
    """
    if state is None or not compiling() or torch._C._are_functorch_transforms_active():
        return False
    if unroll is not None and unroll >= x_seq.shape[dim]:  # unrolled, as lax.scan would
        return False
    if torch.is_autocast_enabled(x_seq.device.type):  # the state may change precision
        return False
    leaves = torch.utils._pytree.tree_leaves(state)
    if not all(leaf is None or isinstance(leaf, torch.Tensor) for leaf in leaves):
        return False  # a dataclass or other node torch's pytree does not know
    return not memory_modules(modules) and _scan_lowers()


@torch._dynamo.assume_constant_result
def _scan_lowers() -> bool:
    """Whether Inductor can lower a `scan` in the graph being traced, run once per trace.

    torch 2.13 lowers `scan` to a loop whose index is a scalar read from a tensor, which its
    tracer allows only where scalar outputs are: with ``fullgraph=True``, or with
    ``torch._dynamo.config.capture_scalar_outputs``. Elsewhere the compile would fail, so the
    loop is unrolled as before. (``torch.export`` is the export issue's, untested here.)
    """
    context = torch._guards.TracingContext.try_get()
    shape_env = getattr(getattr(context, "fake_mode", None), "shape_env", None)
    return bool(getattr(shape_env, "allow_scalar_outputs", False))


def _scan(call: Callable, xs: torch.Tensor, state: Any) -> tuple[Any, Any]:
    """``(ys, final_state)`` of ``call(x, state) -> (y, state)`` over axis 0 of `xs`, as one
    `scan`: the outputs stacked along axis 0, the checks of `call` run while tracing."""
    from torch._higher_order_ops.scan import scan

    pytree = torch.utils._pytree
    leaves, spec = pytree.tree_flatten(state)
    # `scan` carries tensors only: the state's None entries (stateless modules) are put back
    # around them at each step, and a module keeps them None (the kept-state rule).
    filled = [i for i, leaf in enumerate(leaves) if leaf is not None]

    def rebuild(tensors: Any) -> Any:
        full = list(leaves)
        for i, tensor in zip(filled, tensors, strict=True):
            full[i] = tensor
        return pytree.tree_unflatten(full, spec)

    def body(carry: list, x: torch.Tensor) -> tuple[list, Any]:
        y, new = call(x, rebuild(carry))
        new_leaves = pytree.tree_leaves(new)
        # `scan` refuses outputs that alias its inputs or each other: fresh tensors (Inductor
        # writes them in the step's own kernel).
        return [new_leaves[i].clone() for i in filled], pytree.tree_map(torch.clone, y)

    # The first step traced once outside the scan, for its checks alone (the graph drops its
    # unused operations): a step that breaks the rules raises its own error, as the loop
    # does, not torch's error about a scan body, and what a step sets up at its first call
    # (a lazily made torch Function, behind a lock) is set up outside the scan. A program of
    # torch.export keeps these unused operations until a pass drops them (ONNX's does).
    call(xs[0], state)
    # A tensor given twice in the state would alias two carries: each starts as its own copy.
    final, ys = scan(body, [leaves[i].clone() for i in filled], xs)
    return ys, rebuild(final)


def _scanned(x_seq: torch.Tensor, modules: Any, state: Any, dim: int) -> tuple[Any, Any]:
    """The stateful loop over axis `dim` as one `scan`, outputs stacked along `dim`."""
    ys, final = _scan(lambda x, s: apply_stateful(x, s, modules), x_seq.movedim(dim, 0), state)
    if dim != 0:  # laid out as torch.stack(ys, dim=-1) lays them out
        ys = map_items(ys, lambda a: a.movedim(0, -1).contiguous())
    return ys, final


def _symbolic_steps(x_seq: Any, dim: int) -> bool:
    """Whether `torch.export` traces this call with a dynamic `T` (a symbolic length), which
    a Python loop would fix at the example's: the loop must be one `scan` then."""
    first = x_seq[0] if isinstance(x_seq, tuple) else x_seq
    return torch.compiler.is_exporting() and isinstance(first.shape[dim], torch.SymInt)


def _scanned_stateless(x_seq: Any, modules: Any, dim: int, call: Callable) -> Any:
    """``call(x, modules)`` on each step (or chunk) along axis `dim` as one `scan`, outputs
    stacked along `dim`: the stateless loop exported with a dynamic `T`. `scan` needs a
    carry: a 0-d zero, unchanged. A step that keeps hidden memory cannot be a scan's step."""
    found = memory_modules(modules)
    if found:
        raise ValueError(
            "`torch.export` with a dynamic T exports the time loop as one `scan`, whose step "
            f"must keep no hidden memory; {type(found[0]).__qualname__} keeps its state in "
            "itself. Pass the state with `state=` (`dualstep.neurons` has SpikingJelly's "
            'neurons as steps; docs, "Deploying"); got state=None'
        )
    xs = map_items(x_seq, lambda a: a.movedim(dim, 0))
    first = xs[0] if isinstance(xs, tuple) else xs
    ys, _ = _scan(lambda x, c: (call(x, modules), c), xs, first.new_zeros(()))
    return ys if dim == 0 else map_items(ys, lambda a: a.movedim(0, dim).contiguous())


def multi_step_forward(
    x_seq: torch.Tensor, modules: Any, state: Any, fused: bool | str = False, unroll: Any = None
) -> Any:
    # `unroll` >= T unrolls a compiled loop; `scan` has no other unroll factor.
    if fused is not False:
        out = _fused(x_seq, modules, state, fused)
        if out is not None:
            return out
    if _scannable(x_seq, modules, state, 0, unroll):
        return _scanned(x_seq, modules, state, 0)
    if state is None and _symbolic_steps(x_seq, 0):
        return _scanned_stateless(x_seq, modules, 0, apply_modules)
    ys, final = run_steps(_steps(x_seq, 0), modules, state)
    return loop_result(ys, final, state, _stack_first)


def t_last_multi_step_forward(
    x_seq: torch.Tensor, modules: Any, state: Any, fused: bool | str = False, unroll: Any = None
) -> Any:
    if fused is not False:
        out = _fused(x_seq.movedim(-1, 0), modules, state, fused)
        if out is not None:  # time back last, laid out as torch.stack(ys, dim=-1) would
            ys, final = (out, None) if state is None else out
            ys = map_items(ys, lambda a: a.movedim(0, -1).contiguous())
            return ys if state is None else (ys, final)
    if _scannable(x_seq, modules, state, -1, unroll):
        return _scanned(x_seq, modules, state, -1)
    if state is None and _symbolic_steps(x_seq, -1):
        return _scanned_stateless(x_seq, modules, -1, apply_modules)
    ys, final = run_steps(_steps(x_seq, -1), modules, state)
    return loop_result(ys, final, state, _stack_last)


def chunk_multi_step_forward(
    split_size: int,
    x_seq: torch.Tensor,
    modules: Any,
    state: Any,
    checkpoint: bool,
    compile: bool | str = False,
) -> Any:
    if _symbolic_steps(x_seq, 0):
        return _scanned_chunks(split_size, x_seq, modules, state)
    steps = x_seq.shape[0]
    starts = range(0, steps, split_size)
    grad = torch.is_grad_enabled()
    # SpikingJelly's slices, or the views of one `split` where no chunk changes its input in
    # place (`_views`): a split's views may not be changed in place under autograd.
    chunks = _views(
        x_seq,
        len(starts),
        lambda i: x_seq[starts[i] : starts[i] + split_size],
        lambda: x_seq.split(split_size),
    )
    call = _call_checkpointed if checkpoint and grad else call_once
    if compile is not False:
        call = _compiled_call(compile)
    if (grad and not checkpoint) or torch._C._are_functorch_transforms_active():
        # Plain training concatenates like SpikingJelly. Under torch.func transforms a chunk's
        # output may be batched where the first one was not: a preallocated result cannot
        # take it, concatenation can.
        ys, final = [], state
        for xc in chunks:
            y, final = call(xc, final, modules, state is not None)
            ys.append(y)
        return loop_result(ys, final, state, _cat_first)
    # No gradient: nothing to save, the outputs go straight into one preallocated result.
    # Checkpointing: each chunk's output is written into it through autograd (`_WriteInto`).
    return _chunks_preallocated(
        chunks, steps, modules, state, call, _WriteInto.apply if grad else _copy_into
    )


def _scanned_chunks(split_size: int, x_seq: torch.Tensor, modules: Any, state: Any) -> Any:
    """The chunks as one `scan` over ``[T / split_size, split_size, ...]``, for `torch.export`
    with a dynamic `T`, which must then be a multiple of `split_size` (declared as
    ``split_size * Dim(...)``; torch says so otherwise)."""
    steps = x_seq.shape[0]
    torch._check(steps % split_size == 0, lambda: f"T must be a multiple of {split_size}")
    chunks = x_seq.unflatten(0, (steps // split_size, split_size))
    if state is None:
        ys = _scanned_stateless(chunks, modules, 0, lambda xc, m: call_once(xc, None, m, False)[0])
        return map_items(ys, lambda a: a.flatten(0, 1))
    ys, final = _scan(lambda xc, s: call_once(xc, s, modules, True), chunks, state)
    return map_items(ys, lambda a: a.flatten(0, 1)), final


@functools.cache
def _compiled(mode: str | None) -> Callable:
    # One compiled `call_once` per mode: dynamo keys its code by the modules it was given
    # (guards), so a chunk module defined once compiles once (twice with a shorter last chunk).
    return torch.compile(call_once, mode=mode)


def _compiled_call(compile: bool | str) -> Callable:
    """A chunk call through ``torch.compile``; with CUDA graphs ("reduce-overhead"), each
    chunk's outputs and state are copied out of the graph's buffers, which the next chunk's
    replay overwrites."""
    mode = None if compile is True else compile
    compiled = _compiled(mode)
    if mode != "reduce-overhead":
        return compiled

    def own(tree: Any) -> Any:
        return map_with_path(lambda a, _: a if a is None else a.clone(), tree, "")

    def call(xc: Any, state: Any, modules: Any, stateful: bool) -> tuple[Any, Any]:
        y, new = compiled(xc, state, modules, stateful)
        return own(y), own(new)

    return call


_MISMATCH = (
    "`checkpoint=True`: recomputing a chunk in the backward pass gave other values than the "
    "forward pass for a tensor that autograd saved, so its gradients would be wrong. The likely "
    "cause is a module that keeps hidden memory (a SpikingJelly neuron or any stateful module, "
    "possibly inside a function or closure) and advanced it again; pass the state explicitly "
    "with `state=`, or use checkpoint=False. A nondeterministic operation (GPU atomics) "
    "does the same: wrap the module with torch.utils.checkpoint yourself to accept that"
)


class _SavedValues:
    """What the recomputation of a checkpointed chunk must reproduce for one saved tensor.

    torch's own determinism check compares shape, dtype and device; this adds a fingerprint
    of the values, so a recomputation that differs raises instead of giving the gradients of
    another computation. ``torch.utils.checkpoint`` takes it in forward (no host sync) and
    compares it with the recomputed tensor's in backward (one sync per saved tensor).
    """

    __slots__ = ("fingerprint", "meta", "tensor", "version")

    def __init__(self, x: torch.Tensor) -> None:
        self.meta = (x.shape, x.dtype, x.device)
        # In-place operations bump a tensor's version; torch's own saved-tensor check (which
        # the recomputation bypasses) compares it too.
        self.version = x._version
        if x.requires_grad and x.grad_fn is None:
            # A parameter or an input leaf: alive anyway, kept as is and fingerprinted only
            # if the recomputation saved another object in its place.
            self.tensor: Any = x
            self.fingerprint: torch.Tensor | None = None
        else:
            self.tensor = weakref.ref(x)
            self.fingerprint = _fingerprint(x)

    def _saved(self) -> torch.Tensor | None:
        return self.tensor if isinstance(self.tensor, torch.Tensor) else self.tensor()

    def _fingerprint_value(self) -> float:
        if self.fingerprint is None:  # a kept leaf, alive
            return _fingerprint(self.tensor).item()
        return self.fingerprint.item()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _SavedValues) or self.meta != other.meta:
            return False  # torch raises its own error, naming shape, dtype or device
        saved, recomputed = self._saved(), other._saved()
        if saved is not None and saved is recomputed:
            # The same tensor object (a parameter, a buffer, an input), not a recomputed one.
            # Changed in place since the forward pass saved it (memory kept in a buffer), it
            # would give the gradients of other values: without checkpointing torch raises its
            # in-place error. Batch norm's running statistics change without a new version,
            # and are not what its gradient reads.
            if self.version != other.version:
                raise RuntimeError(_MISMATCH)
            return True
        a_value, b_value = self._fingerprint_value(), other._fingerprint_value()
        if a_value != b_value and not (math.isnan(a_value) and math.isnan(b_value)):
            raise RuntimeError(_MISMATCH)
        return True

    def __repr__(self) -> str:
        shape, dtype, device = self.meta
        return f"{{'shape': {shape}, 'dtype': {dtype}, 'device': {device}}}"


def _fingerprint(x: torch.Tensor) -> torch.Tensor:
    """The float64 sum of `x`'s values weighted by position (1, 2, 3, ...): a count, a value
    or a place that changes changes it. Two small kernels; a chunk saves many tensors."""
    flat = x.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    return flat.to(torch.float64).dot(_positions(flat.numel(), flat.device))


def _positions(n: int, device: torch.device) -> torch.Tensor:
    """``1, 2, ..., n`` in float64; lengths a training loop repeats are kept when small."""
    if n <= 1 << 18:
        return _small_positions(n, device)
    return torch.arange(1, n + 1, dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=8)
def _small_positions(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(1, n + 1, dtype=torch.float64, device=device)


# torch.utils.checkpoint looks its determinism checks up by name in this table when called;
# registering one is the only way to compare values (its "default" compares metadata only).
_ckpt._allowed_determinism_checks_to_fns["dualstep-values"] = _SavedValues


def _call_checkpointed(xc: Any, state: Any, modules: Any, stateful: bool) -> tuple[Any, Any]:
    """One chunk whose activations are dropped and recomputed in the backward pass."""
    return _ckpt.checkpoint(
        call_once,
        xc,
        state,
        modules,
        stateful,
        use_reentrant=False,
        determinism_check="dualstep-values",
    )


def _copy_into(out: torch.Tensor, y: torch.Tensor, offset: int) -> torch.Tensor:
    out[offset : offset + y.shape[0]].copy_(y)
    return out


class _WriteInto(torch.autograd.Function):
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

    `call(xc, state, modules, stateful)` runs one chunk; `write(out, y, offset)` stores `y` at
    `offset` and returns the result. Falls back to concatenation (same values, same errors as
    ``torch.cat``) as soon as an output does not fit: not aligned with its chunk, another
    trailing shape, dtype or device, or a first output that is not contiguous (``cat`` might
    then pick another layout).
    """
    out: tuple | None = None
    offset = 0
    pending: list = []  # outputs to concatenate, once preallocation gave up
    stateful, final = state is not None, state
    for xc in chunks:
        y, final = call(xc, final, modules, stateful)
        items = y if isinstance(y, tuple) else (y,)
        if out is None and not pending:
            out = _allocate(items, xc.shape[0], steps)
        if out is not None and _fits(items, out, xc.shape[0]):
            out = tuple(write(dst, src, offset) for dst, src in zip(out, items, strict=True))
            offset += xc.shape[0]
            continue
        if out is not None:
            written = tuple(o[:offset] for o in out)
            pending.append(same_tuple(y, written) if isinstance(y, tuple) else written[0])
            out = None
        pending.append(y)
    if out is not None:
        y_seq = same_tuple(y, out) if isinstance(y, tuple) else out[0]
    else:
        y_seq = stack_outputs(pending, _cat_first)
    return (y_seq, final) if stateful else y_seq


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
    if callable(modules) and not isinstance(x_seq, tuple):
        # The common call, written out: this function's whole cost is per-call overhead.
        y = modules(x_seq.flatten(0, 1))
        if not isinstance(y, tuple):
            return y.unflatten(0, (x_seq.shape[0], x_seq.shape[1]))
        return map_items(y, lambda a: a.unflatten(0, x_seq.shape[:2]))
    t, b = (x_seq[0] if isinstance(x_seq, tuple) else x_seq).shape[:2]
    y = apply_modules(map_items(x_seq, lambda a: a.flatten(0, 1)), modules)
    return map_items(y, lambda a: a.unflatten(0, (t, b)))


def t_last_seq_to_ann_forward(x_seq: Any, modules: Any) -> Any:
    if torch.compiler.is_exporting():  # torch.export cannot trace torch.vmap over a module
        return _scanned_stateless(x_seq, modules, -1, apply_modules)
    return torch.vmap(lambda x: apply_modules(x, modules), in_dims=-1, out_dims=-1)(x_seq)

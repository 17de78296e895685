"""The five public functions: docstrings, argument checks, dispatch to a backend."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from . import _lengths
from ._dispatch import backend_for, kind_of
from ._modules import memory_modules
from ._tree import leaves_with_path
from .fused import NotFusable, check_fused


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__qualname__} of shape {tuple(shape)}"
    return (
        repr(value)
        if isinstance(value, (int, float, str, type(None)))
        else type(value).__qualname__
    )


def _check_modules(modules: Any, argument: str) -> None:
    if isinstance(modules, (list, tuple)):
        for i, module in enumerate(modules):
            if not callable(module):
                raise TypeError(
                    f"`{argument}[{i}]` must be callable; got {type(module).__qualname__}"
                )
    elif not callable(modules):
        raise TypeError(
            f"`{argument}` must be a callable or a list/tuple of callables; "
            f"got {type(modules).__qualname__}"
        )


def _check_state(state: Any, modules: Any, argument: str, x_seq: Any) -> Any:
    """Return `state` with a module list's per-module entries as a tuple.

    Every leaf must be an array of `x_seq`'s kind (one backend runs the call) or None; NumPy
    scalars are NumPy's 0-d arrays. Leaves are found through tuples, lists, dicts, dataclasses
    and, when JAX is imported, registered pytree nodes (:mod:`._tree`).
    """
    if state is None:
        return state
    same = type(x_seq)
    if type(state) is same and not isinstance(modules, (list, tuple)):
        return state  # one array of x_seq's kind, for one module: nothing to walk
    fields = False  # a leaf inside a dataclass or pytree node (paths `state.v`)
    for path, leaf in leaves_with_path(state, "state"):
        fields = fields or "." in path
        if type(leaf) is same or leaf is None:  # the common case, decided without a lookup
            continue
        leaf_kind = "numpy" if isinstance(leaf, np.generic) else kind_of(leaf)
        if leaf_kind != kind_of(x_seq):
            raise TypeError(
                f"`{path}` must be the same kind of array as `x_seq` "
                f"({type(x_seq).__qualname__}), or None; got "
                f"{type(leaf).__module__}.{type(leaf).__qualname__}"
            )
    if fields and kind_of(x_seq) == "jax":  # lax.scan carries pytrees: name a dataclass it can't
        for leaf in sys.modules["jax"].tree_util.tree_leaves(state):
            if dataclasses.is_dataclass(leaf):
                raise TypeError(
                    f"`state` must be a pytree of arrays on JAX; it holds a "
                    f"{type(leaf).__name__}, a dataclass JAX cannot walk: register it "
                    "(jax.tree_util.register_dataclass, flax.struct.dataclass) or use a dict"
                )
    if not isinstance(modules, (list, tuple)):
        return state
    if not isinstance(state, (list, tuple)):
        raise TypeError(
            f"`state` must be a tuple with one entry per module of `{argument}` (None for a "
            f"stateless module); got {type(state).__qualname__}"
        )
    if len(state) != len(modules):
        raise ValueError(
            f"`state` must have one entry per module of `{argument}` ({len(modules)}); "
            f"got {len(state)} entries"
        )
    return tuple(state)


def _check_sequence(x_seq: Any, min_ndim: int, layout: str, time_axis: int | None):
    """Dispatch on `x_seq`, check its rank and, when `time_axis` is given, that T > 0."""
    backend = backend_for(x_seq)
    if x_seq.ndim < min_ndim:
        raise ValueError(
            f"`x_seq` must have at least {min_ndim} dimension(s) ({layout}); "
            f"got shape {tuple(x_seq.shape)}"
        )
    if time_axis is not None and x_seq.shape[time_axis] == 0:
        raise ValueError(
            f"`x_seq` must have at least one time step (T >= 1 on axis {time_axis}); "
            f"got shape {tuple(x_seq.shape)}"
        )
    return backend


def _step_mode_of(module: Any) -> str | None:
    """A SpikingJelly step module's mode: its ``step_mode``, or the one mode its class
    supports (``MultiStepContainer`` and the other containers are multi-step only)."""
    mode = getattr(module, "_step_mode", None)
    if mode is None:
        supported = tuple(module.supported_step_mode())
        mode = supported[0] if len(supported) == 1 else None
    return mode


def _stepping_modules(modules: Any, with_memory: bool = True) -> list:
    """The outermost SpikingJelly step modules (with `with_memory`, those that are or hold
    memory modules: the ones whose step mode says how time is fed to that memory). A container
    (``MultiStepContainer``, ``StepModeContainer``...) decides for what it holds: a
    ``MultiStepContainer`` of single-step neurons is multi-step."""
    sj_base = sys.modules.get("spikingjelly.activation_based.base")
    if sj_base is None:
        return []
    found = []

    def visit(module: Any) -> None:
        if isinstance(module, sj_base.StepModule):
            inside = module.modules() if hasattr(module, "modules") else (module,)
            if not with_memory or any(isinstance(sub, sj_base.MemoryModule) for sub in inside):
                found.append(module)
            return
        for child in module.children() if hasattr(module, "children") else ():
            visit(child)

    for module in modules if isinstance(modules, (list, tuple)) else (modules,):
        visit(module)
    return found


def _check_step_mode(modules: Any, argument: str, mode: str) -> None:
    """A SpikingJelly neuron in the other step mode would treat time as batch, or batch as time."""
    for sub in _stepping_modules(modules):
        found = _step_mode_of(sub)
        if found is not None and found != mode:
            wanted = "single-step ('s')" if mode == "s" else "multi-step ('m')"
            raise ValueError(
                f"`{argument}` must hold SpikingJelly memory modules in {wanted} mode here; "
                f"got {type(sub).__qualname__} with step_mode={found!r}"
            )


def _check_checkpoint(checkpoint: Any, modules: Any) -> None:
    if not isinstance(checkpoint, bool):
        raise TypeError(f"`checkpoint` must be a bool; got {_describe(checkpoint)}")
    found = memory_modules(modules) if checkpoint else []
    if found:
        raise ValueError(
            "`checkpoint=True` recomputes each chunk in the backward pass, which would "
            "advance the hidden memory of a SpikingJelly memory module twice; pass the "
            "state explicitly with `state=` or use checkpoint=False; got "
            f"{type(found[0]).__qualname__} in `multi_step_module`"
        )


def _check_fused(fused: Any, unroll: Any, modules: Any) -> bool | str:
    """The `fused` to run with: a step with hidden memory is never fused ('auto' loops)."""
    if unroll is not None:
        if isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)):
            raise TypeError(f"`unroll` must be a positive int or None; got {_describe(unroll)}")
        if unroll <= 0:
            raise ValueError(f"`unroll` must be a positive int or None; got {unroll}")
    if fused is False:
        return fused
    check_fused(fused)
    found = memory_modules(modules)
    if found and fused is True:
        raise NotFusable(
            "`fused=True` needs the state passed with `state=`; a SpikingJelly memory module "
            f"keeps it hidden; got {type(found[0]).__qualname__} in `single_step_module`"
        )
    return False if found else fused


def _check_compile(compile: Any, checkpoint: bool) -> None:
    if not isinstance(compile, (bool, str)):
        raise TypeError(
            f"`compile` must be a bool or a torch.compile mode; got {_describe(compile)}"
        )
    if compile is not False and checkpoint:
        raise ValueError(
            "`compile` and `checkpoint=True` cannot be combined: a compiled chunk would be "
            f"recomputed outside its compiled program; got compile={compile!r}"
        )


def _check_split_size(split_size: Any) -> int:
    if isinstance(split_size, bool) or not isinstance(split_size, (int, np.integer)):
        raise TypeError(f"`split_size` must be a positive int; got {_describe(split_size)}")
    if split_size <= 0:
        raise ValueError(f"`split_size` must be a positive int; got {split_size}")
    return int(split_size)


_SEQ_TO_ANN_RANK = (2, "[T, batch_size, ...]", None)
_TIME_FIRST_RANK = (1, "[T, ...]", 0)
_T_LAST_RANK = (1, "[..., T]", -1)


def _check_stepping(x_seq: Any, modules: Any, state: Any, rank: tuple, mode: str) -> tuple:
    """The checks of the three multi-step functions: ``(backend, state)``. `mode` is the
    step mode SpikingJelly modules must be in: single-step ``"s"`` modules are called once per
    step, multi-step ``"m"`` ones once per chunk."""
    argument = "single_step_module" if mode == "s" else "multi_step_module"
    backend = _check_sequence(x_seq, *rank)
    _check_modules(modules, argument)
    _check_step_mode(modules, argument, mode)
    return backend, _check_state(state, modules, argument, x_seq)


def _check_seq_to_ann(x_seq: Any, time_axis: int):
    """Dispatch a stateless call; a tuple `x_seq`'s arrays share their time (and batch) axes."""
    # For seq_to_ann T == 0 is fine (the flat batch is empty); the time-last map needs T > 0.
    rank = _SEQ_TO_ANN_RANK if time_axis == 0 else _T_LAST_RANK
    if not isinstance(x_seq, tuple):
        return _check_sequence(x_seq, *rank)
    if len(x_seq) == 0:
        raise ValueError("`x_seq` must be an array or a non-empty tuple of arrays; got ()")
    backend = _check_sequence(x_seq[0], *rank)
    for i, item in enumerate(x_seq[1:], start=1):
        if backend_for(item, f"x_seq[{i}]") is not backend:
            raise TypeError(
                f"`x_seq[{i}]` must be the same kind of array as `x_seq[0]` "
                f"({type(x_seq[0]).__qualname__}); got {type(item).__qualname__}"
            )
        _check_sequence(item, *rank)
    shapes = [tuple(item.shape) for item in x_seq]
    key = slice(0, 2) if time_axis == 0 else slice(-1, None)
    if any(s[key] != shapes[0][key] for s in shapes[1:]):
        dims = "[T, batch_size] leading dimensions" if time_axis == 0 else "last (time) dimension"
        raise ValueError(f"all arrays in `x_seq` must share the same {dims}; got shapes {shapes}")
    return backend


def _over_lengths(
    run: Any,
    x_seq: Any,
    modules: Any,
    state: Any,
    lengths: Any,
    fill: Any,
    axes: tuple,
    fused: bool | str,
) -> Any:
    """``run(x_seq, step, state, fused)`` with `modules` wrapped to stop each batch element at
    its length (:mod:`._lengths`); returns ``(y_seq, final_state)``. A fused call carries the
    counts and lengths per element, so the wrapped step stays elementwise."""
    _lengths.check_state(state)
    fill = _lengths.check_fill(fill)
    lengths, shortest = _lengths.check_lengths(lengths, x_seq, *axes)
    # The per-element counts only where a kernel is tried ('auto': on a GPU, if it fits).
    auto = fused == "auto" and backend_for(x_seq).auto_fuses(x_seq)
    if fused is True or (auto and _lengths.fits_elementwise(x_seq, state, axes[1])):
        step = _lengths.Elementwise(modules, fill)
        start = _lengths.elementwise_initial(x_seq, lengths, state, axes[1])
        y, (_, _, final) = run(x_seq, step, start, fused)
        return y, final
    if shortest is not None and kind_of(x_seq) != "jax":
        # Lengths that can be read, on a step-by-step loop. (Not on JAX: a scan runs one
        # step function, traced once.)
        _lengths.check_batched_state(state, lengths)
        steps = x_seq.shape[axes[1]]
        step = _lengths.readable(modules, lengths, shortest, steps, fill)
        return run(x_seq, step, state, False)
    step = _lengths.masked(modules, lengths, fill)
    start = _lengths.initial(x_seq, state, x_seq.shape[axes[1]])
    y, (_, final) = run(x_seq, step, start, False)
    return y, final


def multi_step_forward(
    x_seq: Any,
    single_step_module: Any,
    *,
    state: Any = None,
    fused: bool | str = False,
    unroll: int | None = None,
    lengths: Any = None,
    fill: float = 0.0,
) -> Any:
    """Run single-step module(s) over the time axis of a ``[T, batch_size, ...]`` sequence.

    The module is called once per step on ``x_seq[t]`` for t = 0..T-1, in order; a list or
    tuple of modules is applied in order at every step. Outputs are stacked along axis 0. A step
    that returns a tuple of arrays gives the tuple of stacked arrays.

    With ``state=None`` (the default) every module is called as ``m(x)`` and the call returns
    the output sequence only. With ``state=s0`` (an array or any tuple/dict nesting of arrays) a
    module is called as ``m(x, state) -> (y, state)`` and the call returns
    ``(y_seq, final_state)``. With a list or tuple of modules, `state` is a tuple with one entry
    per module; a ``None`` entry marks a stateless module (called as ``m(x)``) and stays ``None``
    in the returned final state.

    Parameters
    ----------
    x_seq : array, shape ``[T, batch_size, ...]``
        A ``torch.Tensor``, ``jax.Array`` (or JAX tracer) or ``numpy.ndarray``; its type picks
        the backend.
    single_step_module : callable or list/tuple of callables
        Single-step module(s): ``nn.Module``, function, ``nn.Sequential``.
    state : array, pytree of arrays, or tuple with one entry per module, optional
        Initial state; see above.
    fused : bool or 'auto', default False
        Run the whole sequence as one kernel (Pallas on JAX, Triton on torch) that loops over
        time inside; the step must be elementwise (docs, "Fused kernels"). ``True`` raises
        ValueError naming what could not be fused; ``'auto'`` fuses on a GPU when it can and
        runs the loop otherwise. On CPU a fused kernel runs through its interpreter, which is
        slow and meant for tests. NumPy has no kernels: ``True`` raises there.
    unroll : int, optional
        JAX: time steps per ``lax.scan`` iteration (XLA fuses an unrolled elementwise body).
        By default 1 on CPU and, on a GPU, 32 for an elementwise step. torch: under
        ``torch.compile(fullgraph=True)`` a stateful call is one ``scan``, one step per
        iteration; ``unroll >= T`` traces the T steps one by one instead (a step with side
        effects, which ``scan`` refuses). Eager torch and NumPy loop step by step.
    lengths : integer array of shape ``[batch_size]``, or list/tuple of ints, optional
        Variable-length sequences padded to ``T``: element ``b`` has ``lengths[b]`` valid
        steps (0 to T). For ``t >= lengths[b]`` its state is frozen and its outputs are
        `fill`, so each element's outputs and final state are those of running it alone on
        its own steps; gradients reach only valid steps. Needs `state` (a frozen state must
        be passed to be kept); every state leaf and output must have the batch as its first
        axis. A 0-d `lengths` is one length for every element (under ``jax.vmap`` over the
        batch). On JAX the lengths are traced: new ones never compile again. Fused kernels
        take them too (each element compares its own count). docs, "Variable-length
        sequences".
    fill : float, default 0.0
        The output after an element's length.

    Returns
    -------
    y_seq : array (or tuple of arrays), shape ``[T, batch_size, ...]``
        Returned alone when `state` is None, else as ``(y_seq, final_state)``.

    Raises
    ------
    TypeError
        `x_seq` is not a supported array; a module is not callable; `state` is not a tuple for a
        module list; a leaf of `state` is not an array of `x_seq`'s kind (nor None); a stateful
        module does not return a ``(y, state)`` pair, or returns its state with another
        structure, shape or dtype (torch under autocast may change a floating dtype);
        `lengths` is not an integer array of `x_seq`'s kind nor a list/tuple of ints; `fill`
        is not a real number.
    ValueError
        `x_seq` has no dimensions or ``T == 0``; `state` has the wrong number of entries; a
        SpikingJelly memory module is in multi-step mode; ``fused=True`` with a step that cannot
        be fused (``dualstep.NotFusable``, a ValueError); `unroll` is not positive; `lengths`
        without `state`, of another shape than ``[batch_size]``, outside ``[0, T]``, or with a
        state leaf or output that lacks the batch axis.

    Exceptions raised by the modules propagate unchanged. On JAX the call lowers to one
    ``lax.scan``; eager calls reuse a compiled program per step structure and input shapes,
    with the arrays the step holds passed as arguments (docs, "What the JAX compile cache
    sees"), so steps must be pure functions of their arguments and arrays. Under
    ``torch.compile(fullgraph=True)`` a call with `state` lowers to one torch ``scan``, so its
    compile time does not grow with T (docs, "Long loops under torch.compile").

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward
    >>> def integrate(x, v):
    ...     v = v + x
    ...     return v, v
    >>> y, v = multi_step_forward(np.ones((3, 2)), integrate, state=np.zeros(2))
    >>> y.tolist(), v.tolist()
    ([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], [3.0, 3.0])
    """
    backend, state = _check_stepping(x_seq, single_step_module, state, _TIME_FIRST_RANK, "s")
    fused = _check_fused(fused, unroll, single_step_module)
    if lengths is not None:

        def run(x: Any, step: Any, s: Any, fused: bool | str) -> Any:
            return backend.multi_step_forward(x, step, s, fused, unroll)

        return _over_lengths(run, x_seq, single_step_module, state, lengths, fill, (1, 0), fused)
    return backend.multi_step_forward(x_seq, single_step_module, state, fused, unroll)


def t_last_multi_step_forward(
    x_seq: Any,
    single_step_module: Any,
    *,
    state: Any = None,
    fused: bool | str = False,
    unroll: int | None = None,
    lengths: Any = None,
    fill: float = 0.0,
) -> Any:
    """Run single-step module(s) over the last (time) axis of a ``[batch_size, ..., T]`` sequence.

    Identical to :func:`multi_step_forward` with the time axis last: the module is called on
    ``x_seq[..., t]`` for t = 0..T-1 and the outputs are stacked along the last axis. On torch
    the result has the shape and strides that ``torch.stack(ys, dim=-1)`` gives.

    `state` follows the state rule of :func:`multi_step_forward`.

    Parameters
    ----------
    x_seq : array, shape ``[batch_size, ..., T]``
    single_step_module : callable or list/tuple of callables
    state : array, pytree of arrays, or tuple with one entry per module, optional
    fused : bool or 'auto', default False
    unroll : int, optional
    lengths : integer array of shape ``[batch_size]``, or list/tuple of ints, optional
    fill : float, default 0.0
        As :func:`multi_step_forward`; the batch is axis 0 here.

    Returns
    -------
    y_seq : array (or tuple of arrays), shape ``[batch_size, ..., T]``
        Returned alone when `state` is None, else as ``(y_seq, final_state)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`multi_step_forward`; ``T`` is read from the last axis.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import t_last_multi_step_forward
    >>> x = np.arange(6.0).reshape(2, 3)
    >>> t_last_multi_step_forward(x, lambda x_t, s: (x_t + s, x_t + s), state=np.zeros(2))[0]
    array([[ 0.,  1.,  3.],
           [ 3.,  7., 12.]])
    """
    backend, state = _check_stepping(x_seq, single_step_module, state, _T_LAST_RANK, "s")
    fused = _check_fused(fused, unroll, single_step_module)
    if lengths is not None:

        def run(x: Any, step: Any, s: Any, fused: bool | str) -> Any:
            return backend.t_last_multi_step_forward(x, step, s, fused, unroll)

        return _over_lengths(run, x_seq, single_step_module, state, lengths, fill, (0, -1), fused)
    return backend.t_last_multi_step_forward(x_seq, single_step_module, state, fused, unroll)


def chunk_multi_step_forward(
    split_size: int,
    x_seq: Any,
    multi_step_module: Any,
    *,
    state: Any = None,
    checkpoint: bool = False,
    compile: bool | str = False,
    lengths: Any = None,
    fill: float = 0.0,
) -> Any:
    """Feed a ``[T, ...]`` sequence to multi-step module(s) in chunks of `split_size` steps.

    ``x_seq`` is split along axis 0 into chunks of `split_size` (the last may be shorter;
    ``split_size > T`` gives one chunk); the module is called once per chunk, in order, and the
    outputs are concatenated along axis 0. State kept inside a module (torch) or passed with
    `state` carries from chunk to chunk, so the result equals the unchunked call.

    `state` follows the state rule of :func:`multi_step_forward`; with `state`, a valid chunk
    module is ``lambda x_chunk, s: multi_step_forward(x_chunk, step, state=s)``.

    Without gradients (torch under ``torch.no_grad()``) the chunk outputs are written into one
    preallocated result once the first chunk tells its shape, instead of being concatenated at
    the end; values and layout are the same.

    With ``checkpoint=True`` each chunk keeps only its inputs for the backward pass and is
    recomputed there (``torch.utils.checkpoint`` with ``use_reentrant=False`` on torch,
    ``jax.checkpoint`` on JAX; no effect on NumPy), trading compute for the memory of long
    sequences. Recomputing a chunk must not change anything, so it suits explicit `state` and
    stateless modules; a module that keeps hidden memory would advance it twice. SpikingJelly
    memory modules (neurons) are detected and rejected; pass their state explicitly instead.
    On torch, a recomputation that gives other values than the forward pass for any tensor
    autograd saved (hidden memory inside a function, say) raises ``RuntimeError`` in backward.

    Parameters
    ----------
    split_size : int
        Steps per chunk; a positive ``int`` or NumPy integer.
    x_seq : array, shape ``[T, ...]``
    multi_step_module : callable or list/tuple of callables
        Multi-step module(s), each taking and returning a ``[t, ...]`` chunk.
    state : array, pytree of arrays, or tuple with one entry per module, optional
    checkpoint : bool, default False
        Recompute each chunk in the backward pass instead of storing its activations.
    compile : bool or str, default False
        torch only: run each chunk through ``torch.compile`` (``True``, or a mode such as
        ``"reduce-overhead"``, which replays a CUDA graph per chunk), for steps that cannot be
        fused. Chunk outputs are copied out of the CUDA graph's buffers before the next chunk
        runs, so pass this instead of compiling the chunk module yourself with that mode.
        Define the chunk module once: each new module object compiles again. JAX calls are
        compiled already and NumPy has nothing to compile; both ignore it.
    lengths : integer array of shape ``[batch_size]``, or list/tuple of ints, optional
    fill : float, default 0.0
        As :func:`multi_step_forward`, carried across chunks: the chunk module is called as
        ``m(x_chunk, state, lengths=l)`` with `l` each element's valid steps within the chunk
        (``clip(lengths - start, 0, len(chunk))``), so it must take them on
        (``lambda x, s, lengths: multi_step_forward(x, step, state=s, lengths=lengths)``);
        the chunk's outputs past each length are `fill`.

    Returns
    -------
    y_seq : array (or tuple of arrays), shape ``[T, ...]``
        Returned alone when `state` is None, else as ``(y_seq, final_state)``.

    Raises
    ------
    TypeError
        `split_size` is not an integer (``bool``, ``float``, ``str`` and ``None`` included);
        `checkpoint` is not a bool; `compile` is neither a bool nor a string; plus the cases
        of :func:`multi_step_forward`.
    ValueError
        ``split_size <= 0``; ``checkpoint=True`` with a SpikingJelly memory module, or with
        `compile`; a
        SpikingJelly memory module in single-step mode; plus the cases of
        :func:`multi_step_forward` (but see there for the step mode).
    RuntimeError
        On torch with ``checkpoint=True``, in the backward pass: a chunk's recomputation gave
        other values than its forward pass for a tensor autograd saved.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import chunk_multi_step_forward
    >>> cumsum = lambda x_chunk, s: (np.cumsum(x_chunk, 0) + s, s + x_chunk.sum(0))
    >>> chunk_multi_step_forward(2, np.ones((5, 1)), cumsum, state=np.zeros(1))[0].ravel()
    array([1., 2., 3., 4., 5.])
    """
    split_size = _check_split_size(split_size)
    backend, state = _check_stepping(x_seq, multi_step_module, state, _TIME_FIRST_RANK, "m")
    _check_checkpoint(checkpoint, multi_step_module)
    _check_compile(compile, checkpoint)
    # A split larger than T is one chunk; clamping keeps huge NumPy integers out of torch.split
    # (a symbolic T, under torch.export, is not compared).
    if isinstance(x_seq.shape[0], int):
        split_size = min(split_size, x_seq.shape[0])
    if lengths is not None:
        _lengths.check_state(state)
        fill = _lengths.check_fill(fill)
        lengths, _ = _lengths.check_lengths(lengths, x_seq, 1, 0)
        chunk = _lengths.chunked(multi_step_module, lengths, fill)
        y, (_, final) = backend.chunk_multi_step_forward(
            split_size,
            x_seq,
            chunk,
            _lengths.initial(x_seq, state, x_seq.shape[0]),
            checkpoint,
            compile,
        )
        return y, final
    return backend.chunk_multi_step_forward(
        split_size, x_seq, multi_step_module, state, checkpoint, compile
    )


def seq_to_ann_forward(x_seq: Any, stateless_module: Any) -> Any:
    """Run stateless module(s) on a ``[T, batch_size, ...]`` sequence as one flat batch.

    The time and batch axes are flattened, the module(s) called once, and every output restored
    to ``[T, batch_size, ...]``. A tuple `x_seq` (arrays sharing ``[T, batch_size]``) is fed as
    positional arguments to the first module; later modules get the previous output. Tuple
    outputs are restored item by item.

    Parameters
    ----------
    x_seq : array or tuple of arrays, shape ``[T, batch_size, ...]``
    stateless_module : callable or list/tuple of callables

    Returns
    -------
    y_seq : array or tuple of arrays, shape ``[T, batch_size, ...]``

    Raises
    ------
    TypeError
        `x_seq` (or an item of it) is not a supported array, or items mix array kinds; a module
        is not callable.
    ValueError
        `x_seq` has fewer than 2 dimensions; a tuple `x_seq` is empty or its arrays differ in
        their ``[T, batch_size] leading dimensions``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import seq_to_ann_forward
    >>> seq_to_ann_forward(np.ones((4, 3, 2)), lambda x: x.sum(-1)).shape
    (4, 3)
    """
    if callable(stateless_module) and not isinstance(x_seq, tuple):
        # One array, one module (a list is not callable): the checks below, inlined, since
        # this call is all per-call overhead.
        backend = backend_for(x_seq)
        if x_seq.ndim < 2:
            _check_sequence(x_seq, *_SEQ_TO_ANN_RANK)
        return backend.seq_to_ann_forward(x_seq, stateless_module)
    backend = _check_seq_to_ann(x_seq, 0)
    _check_modules(stateless_module, "stateless_module")
    return backend.seq_to_ann_forward(x_seq, stateless_module)


def t_last_seq_to_ann_forward(x_seq: Any, stateless_module: Any) -> Any:
    """Map stateless module(s) over the last (time) axis of a ``[batch_size, ..., T]`` sequence.

    A vectorised map: ``torch.vmap(..., in_dims=-1, out_dims=-1)`` on torch,
    ``jax.vmap(..., in_axes=-1, out_axes=-1)`` on JAX, a loop on NumPy. Modules in a list or
    tuple are called in order inside the map; an ``nn.Sequential`` is called as one container.
    A tuple `x_seq` is fed positionally to the first module; tuple outputs come back with time
    last. Modules whose output depends on the whole batch (batch norm in training) cannot be
    mapped this way.

    Parameters
    ----------
    x_seq : array or tuple of arrays, shape ``[batch_size, ..., T]``
    stateless_module : callable or list/tuple of callables

    Returns
    -------
    y_seq : array or tuple of arrays, shape ``[batch_size, ..., T]``

    Raises
    ------
    TypeError
        As :func:`seq_to_ann_forward`.
    ValueError
        `x_seq` has no dimensions or ``T == 0`` (no output shape could be known on NumPy; the
        rule is the same everywhere); a tuple `x_seq` is empty or its arrays differ in their last
        (time) dimension.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import t_last_seq_to_ann_forward
    >>> t_last_seq_to_ann_forward(np.arange(6.0).reshape(2, 3), lambda x: 2 * x)
    array([[ 0.,  2.,  4.],
           [ 6.,  8., 10.]])
    """
    backend = _check_seq_to_ann(x_seq, -1)
    _check_modules(stateless_module, "stateless_module")
    return backend.t_last_seq_to_ann_forward(x_seq, stateless_module)

"""Whole-sequence kernels for elementwise steps: the time loop inside one kernel.

``pallas.py`` lowers a step for JAX, ``triton.py`` for torch; this file holds what both share:
which steps can be fused, how a call's arrays are laid out for a kernel, and how a launch is
chosen.

A step can be fused when every output and every state leaf has the shape of one time step of
``x_seq`` and every operation it performs is elementwise (arithmetic, comparisons, casts,
``where``, exponentials, surrogate-gradient functions built from these), so that element ``i`` of
step ``t`` depends only on element ``i`` of ``x_seq[t]`` and of the state. Values the step
captures must be scalars. The kernel then views ``x_seq`` as ``[T, N]`` (N elements per step),
gives each program a block of N and loops over time inside the program.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from .._modules import call_once
from .._tree import leaves_with_path, map_with_path, node

# How a GPU launch is chosen from the problem (:func:`gpu_launch`). Data, so that a measured
# retune changes numbers, not code.
GPU = {
    "sms": 132,  # streaming multiprocessors when the device does not say (H100 SXM, H200)
    "programs_per_sm": 2,  # the block halves until there are this many programs per SM...
    "min_block": 32,  # ...but not below one warp's lanes, nor above...
    "max_block": 1024,
    "bytes_in_flight_per_sm": 32768,  # unroll doubles until the card has this much loading...
    "min_unroll": 8,  # ...from at least this many steps' loads in flight, up to...
    "max_unroll": 32,
    # ...and while the loop's body stays within this much generated source: compile time
    # grows faster than the code (a 644-character step: 1.3 s at 8 steps, 8 s at 32).
    "source_per_iteration": 12000,
    "loaded_per_thread": 64,  # values a thread holds loaded: unroll x streams x elements
    "bytes_per_access": 8,  # a thread's share of one step (16 bytes: 184 registers, 8: 39)
    "max_warps": 8,
}
# Interpreted (CPU) runs: small blocks keep the interpreter's per-program cost low.
INTERPRET_LAUNCH = {"block": 64, "unroll": 2, "num_warps": 1}


def _floor_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def gpu_launch(
    n: int,
    steps: int,
    itemsize: int,
    streams: int,
    source: int,
    sms: int,
    max_block: int | None = None,
) -> dict:
    """Block (elements per program), unroll (time steps whose loads are issued together) and
    warps for a kernel over `steps` steps of `n` elements of `itemsize` bytes, reading
    `streams` arrays per step, whose step is `source` characters of generated code, on a card
    of `sms` SMs; the block at most `max_block`.

    Enough programs to fill the card (small N: small blocks), enough steps' loads in flight
    to cover the memory latency (small N: more steps, within what a thread can hold in
    registers and what compiles in reasonable time), and each thread's share of a step one
    vector access.
    """
    g = GPU
    block = int(g["max_block"] if max_block is None else min(max_block, g["max_block"]))
    while block > g["min_block"] and math.ceil(n / block) < g["programs_per_sm"] * sms:
        block //= 2
    unroll = g["min_unroll"]
    while (
        unroll < g["max_unroll"]
        and unroll * streams * n * itemsize < g["bytes_in_flight_per_sm"] * sms
    ):
        unroll *= 2
    unroll = min(
        unroll,
        _floor_pow2(g["loaded_per_thread"] // streams),
        _floor_pow2(g["source_per_iteration"] // max(source, 1)),
        _floor_pow2(steps),
    )
    per_thread = max(
        1, min(g["bytes_per_access"] // itemsize, g["loaded_per_thread"] // (unroll * streams))
    )
    block = min(block, g["max_warps"] * 32 * per_thread)  # more programs, not more per thread
    warps = max(1, block // (32 * per_thread))
    return {"block": block, "unroll": unroll, "num_warps": warps}


def saved_for_backward(
    graph: list[tuple[Any, list]],
    inputs: list,
    cotangents: list,
    gradients: list,
    dtype: Callable[[Any], Any],
    itemsize: Callable[[Any], int],
) -> list:
    """The values of one step the forward kernel saves for the backward kernel: of all sets
    of forward values from which the step's gradient can be computed, the one moving the
    fewest bytes (a minimum cut, found as a maximum flow).

    `graph` is the step's joint forward-and-backward computation, every value (inputs
    included) with the values it is computed from, in order; `inputs` are its inputs
    (``x``, then the state), `cotangents` those of the backward, `gradients` its gradient
    outputs. A value computed from neither is a constant, recomputed where needed. Saving
    ``x`` costs one read per step (it is in memory already); saving the state or another
    value of ``x``'s dtype, a write in the forward kernel and a read in the backward; other
    values are not saved. A LIF neuron with a surrogate saves its charged voltage ``h``, as
    SpikingJelly's kernel does, instead of ``x`` and ``v``. Of equal cuts, the one nearest
    the inputs (the same whatever order the flow is found in). Returns the values in the
    order of `graph`.
    """
    reads = {v: r for v, r in graph}
    backward = set(cotangents)
    forward = set(inputs)
    for v, r in graph:
        if any(u in backward for u in r):
            backward.add(v)
        elif any(u in forward for u in r):
            forward.add(v)
    needed = {u for v in backward for u in reads.get(v, ()) if u in forward}
    needed |= {v for v in gradients if v in forward}
    x_dtype = dtype(inputs[0])

    def cost(v: Any) -> int | None:
        if v is inputs[0]:
            return itemsize(x_dtype)
        if v in inputs or dtype(v) == x_dtype:
            return 2 * itemsize(dtype(v))
        return None

    # Each value split into an edge in -> out of its cost; every other edge is unbounded.
    costs = {v: cost(v) for v in forward}
    unbounded = sum(c for c in costs.values() if c is not None) + 1
    capacity: dict = defaultdict(int)
    edges: dict = defaultdict(set)

    def edge(a: Any, b: Any, c: int) -> None:
        capacity[a, b] += c
        edges[a].add(b)
        edges[b].add(a)

    source, sink = object(), object()
    for v in inputs:
        edge(source, (v, 0), unbounded)
    for v in forward:
        c = costs[v]
        edge((v, 0), (v, 1), unbounded if c is None else c)
        for u in reads.get(v, ()):
            if u in forward:
                edge((u, 1), (v, 0), unbounded)
    for v in needed:
        edge((v, 1), sink, unbounded)
    while True:  # Edmonds-Karp: shortest augmenting paths until none is left
        parent: dict = {source: None}
        queue = deque([source])
        while queue and sink not in parent:
            a = queue.popleft()
            for b in edges[a]:
                if b not in parent and capacity[a, b] > 0:
                    parent[b] = a
                    queue.append(b)
        if sink not in parent:
            break
        path, b = [], sink
        while parent[b] is not None:
            path.append((parent[b], b))
            b = parent[b]
        push = min(capacity[e] for e in path)
        for a, b in path:
            capacity[a, b] -= push
            capacity[b, a] += push
    return [v for v, _ in graph if (v, 0) in parent and (v, 1) not in parent]


class NotFusable(ValueError):
    """``fused=True`` was asked for a step that cannot run as one elementwise kernel.

    Examples
    --------
    >>> import numpy as np
    >>> import dualstep as ds
    >>> def step(x, v):
    ...     return x, v
    >>> x_seq, v0 = np.ones((3, 2)), np.zeros(2)
    >>> ds.multi_step_forward(x_seq, step, state=v0, fused=True)
    Traceback (most recent call last):
        ...
    dualstep.fused.NotFusable: `fused=True`: NumPy arrays have no fused kernel; use ...
    >>> ds.multi_step_forward(x_seq, step, state=v0, fused="auto")[0].shape  # the loop
    (3, 2)
    """

    what = ""  # the reason alone, without the advice around it
    kernel_failed = False  # a kernel was built (or compiled) and failed: not the step's form


def check_fused(fused: Any) -> None:
    """`fused` is a bool or ``'auto'``."""
    if isinstance(fused, bool) or (isinstance(fused, str) and fused == "auto"):
        return
    error = ValueError if isinstance(fused, str) else TypeError
    raise error(f"`fused` must be True, False or 'auto'; got {fused!r}")


def one_array(state: Any) -> bool:
    """Whether `state` is one array (the common case, which needs no tree walk)."""
    return state is not None and not isinstance(state, (tuple, list, dict)) and node(state) is None


def state_leaves(state: Any) -> list:
    """The arrays of `state` (``None`` entries hold none), dict entries by sorted key: a step
    may return its dict state in another insertion order."""
    if one_array(state):
        return [state]
    return [
        leaf for _, leaf in leaves_with_path(state, "state", sort_keys=True) if leaf is not None
    ]


def with_leaves(state: Any, leaves: Any) -> Any:
    """`state` with its arrays replaced by `leaves`, in :func:`state_leaves`' order."""
    if one_array(state):
        (leaf,) = leaves
        return leaf
    paths = [p for p, leaf in leaves_with_path(state, "state", sort_keys=True) if leaf is not None]
    new = dict(zip(paths, leaves, strict=True))
    return map_with_path(lambda leaf, p: None if leaf is None else new[p], state, "state")


def output_leaves(y: Any) -> tuple[list, Callable[[list], Any]]:
    """A step's output as a list of arrays and the function that rebuilds its structure."""
    if isinstance(y, tuple):
        cls = type(y) if hasattr(y, "_fields") else None  # the type only: no array is kept
        return list(y), lambda items: tuple(items) if cls is None else cls(*items)
    return [y], lambda items: items[0]


def flat_step(modules: Any, state: Any, outputs: list) -> Callable[..., tuple]:
    """The step as ``(x, *state_arrays) -> (*y_arrays, *new_state_arrays)``.

    The first call records, in `outputs`, the function that rebuilds the output structure.
    """
    stateful = state is not None

    def step(x: Any, *leaves: Any) -> tuple:
        y, new = call_once(x, with_leaves(state, leaves) if stateful else None, modules, stateful)
        ys, rebuild = output_leaves(y)
        if any(a is None or isinstance(a, (tuple, list, dict)) for a in ys):
            raise not_fusable("an output is None or a nested structure; return arrays")
        if not outputs:
            outputs.append((len(ys), rebuild))
        return (*ys, *(state_leaves(new) if stateful else ()))

    return step


def lengths_leaf(modules: Any) -> int | None:
    """Which state leaf holds each element's length (as float32) when `modules` stops each
    element at its length (``lengths=``): past the largest length in a block of elements the
    step keeps their state and its outputs are constants, so the backward kernel starts the
    block at that step. None for any other step."""
    from .._lengths import Elementwise

    return modules.lengths_leaf if isinstance(modules, Elementwise) else None


def block_starts(lengths: Any, block: int) -> Any:
    """Each block's longest length (int32), for `lengths` (the lengths leaf, one value per
    element) in blocks of `block` elements, the last padded with zeros: where the backward
    kernel of a step with a :func:`lengths_leaf` starts the block."""
    from array_api_compat import array_namespace, device

    xp = array_namespace(lengths)
    flat = xp.reshape(lengths, (-1,))
    pad = -flat.shape[0] % block
    if pad:
        flat = xp.concat([flat, xp.zeros((pad,), dtype=flat.dtype, device=device(flat))])
    return xp.astype(xp.max(xp.reshape(flat, (-1, block)), axis=1), xp.int32)


def check_layout(step_shape: tuple, leaves: list, kind: str) -> None:
    """Every array a kernel reads or writes per step has the step's shape."""
    for i, leaf in enumerate(leaves):
        if tuple(leaf.shape) != tuple(step_shape):
            raise not_fusable(
                f"{kind} {i} has shape {tuple(leaf.shape)}, not the shape of one time step of "
                f"`x_seq`, {tuple(step_shape)}"
            )


def not_fusable(what: str, kernel_failed: bool = False) -> NotFusable:
    """The error for a step that cannot be fused because of `what`; `kernel_failed`: its
    kernel was built and failed (to trace, lower or compile), which 'auto' says."""
    error = NotFusable(
        f'`fused=True` needs an elementwise step (docs, "Fused kernels"); {what}. '
        "Use fused=False for the plain loop, or fused='auto' to fall back to it"
    )
    error.what, error.kernel_failed = what, kernel_failed
    return error


def warn_if_kernel_failed(error: NotFusable, instead: str) -> None:
    """fused='auto' falls back to `instead` (the loop, the scan) silently when the step is
    not elementwise, and with a warning naming the error when its kernel failed."""
    if error.kernel_failed:
        warnings.warn(f"fused='auto' runs the {instead}: {error.what}", RuntimeWarning, 3)

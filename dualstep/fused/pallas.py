"""JAX lowering: one ``pl.pallas_call`` runs the whole sequence, the user's step inside it.

The step is traced once per block shape into a jaxpr; values it captures (scalars, possibly
tracers of an enclosing ``jit`` or ``grad``) become kernel inputs. Each program owns a block of
the N elements of a step and loops over time with ``lax.fori_loop``, several steps per
iteration, reading ``x[t]`` and the carried state, writing ``y[t]``. Gradients come from a
second kernel that loops backwards over time through ``jax.vjp`` of the step (its own
``custom_vjp``/``custom_jvp`` surrogates included), traced once with the step into one jaxpr
that the two kernels divide where the fewest bytes cross (:class:`_Split`). On CPU
the kernels run in Pallas' interpret mode (for testing); on a GPU through Pallas' Triton
backend.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from . import (
    GPU,
    INTERPRET_LAUNCH,
    block_starts,
    check_layout,
    flat_step,
    gpu_launch,
    lengths_leaf,
    not_fusable,
    saved_for_backward,
    state_leaves,
    with_leaves,
)

_ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "add",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "convert_element_type",
        "copy",
        "copy_p",
        "cos",
        "cosh",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "integer_pow",
        "is_finite",
        "le",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "pow",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "stop_gradient",
        "sub",
        "tan",
        "tanh",
        "xor",
    ]
)
# Primitives that wrap a jaxpr: fusable when everything inside is.
_NESTED = frozenset(
    [
        "jit",
        "pjit",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "checkpoint",
        "remat",
    ]
)


def _check_jaxpr(jaxpr: Any, step_shape: tuple) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name.startswith("random_") or name.startswith("threefry"):
            raise not_fusable(f"it draws random numbers (`{name}`); pass them in `x_seq`")
        if name in _NESTED:
            for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
                inner = eqn.params.get(key)
                if inner is not None:
                    _check_jaxpr(getattr(inner, "jaxpr", inner), step_shape)
        elif name == "broadcast_in_dim":
            if eqn.invars[0].aval.shape != ():
                raise not_fusable(f"it broadcasts an array of shape {eqn.invars[0].aval.shape}")
        elif name not in _ELEMENTWISE:
            raise not_fusable(f"it uses `{name}`, which is not elementwise")
        for var in eqn.outvars:
            if var.aval.shape not in ((), step_shape):
                raise not_fusable(f"`{name}` gives an array of shape {var.aval.shape}")


def _trace(step: Any, shape: tuple, x: Any, leaves: list) -> Any:
    def spec(a: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, a.dtype)

    return jax.make_jaxpr(step)(spec(x), *map(spec, leaves))


def fusable(x_seq: Any, modules: Any, state: Any) -> Any:
    """The checked step jaxpr at one time step's shape, or raise NotFusable."""
    if not all(isinstance(d, int) for d in x_seq.shape):
        raise not_fusable(
            f"`x_seq` has the symbolic shape {tuple(x_seq.shape)} (jax.export), which a Pallas "
            "kernel's blocks cannot have; export the scan with fused=False or 'auto'"
        )
    leaves = state_leaves(state) if state is not None else []
    step_shape = tuple(x_seq.shape[1:])
    check_layout(step_shape, leaves, "state array")
    for i, a in enumerate([x_seq, *leaves]):
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            what = "`x_seq`" if i == 0 else f"state array {i - 1}"
            raise not_fusable(f"{what} is {a.dtype}; fused gradients need floating inputs")
    outputs: list = []
    closed = _trace(flat_step(modules, state, outputs), step_shape, x_seq, leaves)
    _check_jaxpr(closed.jaxpr, step_shape)
    ny = outputs[0][0]
    outs = closed.jaxpr.outvars
    check_layout(step_shape, [v.aval for v in outs[:ny]], "output")
    for c in closed.consts:
        if np.size(c) != 1:
            raise not_fusable(f"it captures an array of shape {np.shape(c)}; pass it as state")
    return closed


def _check_shape_blind(
    closed: Any, modules: Any, state: Any, x_seq: Any, leaves: list, block: int
) -> None:
    """The kernel runs the step on blocks of elements, not on a time step: a step that reads
    its input's shape (``x / x.shape[-1]``) would see the block's. Traced again at another
    block size, such a step differs in more than its shapes."""
    other = _trace(flat_step(modules, state, []), (block + 1,), x_seq, leaves)

    def text(c: Any, size: int) -> str:
        return str(c.jaxpr).replace(f"[{size}]", "[N]").replace(f"({size},)", "(N,)")

    if text(closed, block) != text(other, block + 1):
        raise not_fusable(
            "it depends on its input's shape, which a kernel's block of elements does not have"
        )


def _sms() -> int:
    """The SMs of the default device where it says (a GPU), else of the usual card."""
    return int(getattr(jax.devices()[0], "core_count", None) or GPU["sms"])


def _check_lowers(run: Any, args: tuple) -> None:
    """Raise NotFusable (the error chained) unless the kernels of `run`, forward and
    gradient, lower for CUDA. Checked while the call is traced, so that a step the Triton
    lowering cannot take (``round``, say) is refused here, and fused='auto' runs the scan,
    rather than failing when the program compiles."""
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)

    def gradient(*args: Any) -> Any:
        outs, pull = jax.vjp(run, *args)
        return pull(jax.tree.map(jnp.zeros_like, outs))

    for fn in (run, gradient):
        try:
            jax.jit(fn).trace(*specs).lower(lowering_platforms=("cuda",))
        except Exception as error:
            last = (str(error).strip().splitlines() or [""])[0][:300]
            what = f"its kernel could not be lowered ({type(error).__name__}: {last})"
            raise not_fusable(what, kernel_failed=True) from error


def multi_step(x_seq: Any, modules: Any, state: Any, *, interpret: bool) -> Any:
    """The fused ``multi_step_forward``: ``y_seq`` or ``(y_seq, final_state)``; `interpret`
    runs the kernels through Pallas' interpreter (on CPU)."""
    kernel, args, rebuild = _prepare(x_seq, modules, state, interpret)
    if not interpret:
        _check_lowers(kernel.run, args)
    ys, final = kernel.run(*args)
    step_shape = tuple(x_seq.shape[1:])
    y_seq = rebuild([y.reshape((x_seq.shape[0], *step_shape)) for y in ys])
    if state is None:
        return y_seq
    return y_seq, with_leaves(state, [a.reshape(step_shape) for a in final])


def _prepare(x_seq: Any, modules: Any, state: Any, interpret: bool) -> tuple:
    """The kernels of a fused call, as a :class:`_Kernel`, the arguments of its ``run``
    (``x`` as ``[T, N]``, the state arrays as ``[N]``, the captured constants) and the
    function that rebuilds the step's output structure."""
    checked = fusable(x_seq, modules, state)
    whole = checked.jaxpr
    outs = whole.outvars  # the outputs, then the state
    steps, step_shape = x_seq.shape[0], tuple(x_seq.shape[1:])
    n = math.prod(step_shape)
    leaves = state_leaves(state) if state is not None else []
    ny = len(outs) - len(leaves)
    itemsize = jnp.dtype(x_seq.dtype).itemsize

    def launch(streams: int, source: int, max_block: int | None = None) -> dict:
        if interpret:
            return INTERPRET_LAUNCH
        return gpu_launch(n, steps, itemsize, streams, source, _sms(), max_block)

    # One block for both kernels, the step traced once at its shape: the backward's (it
    # loads the saved values and the outputs' cotangents), which is the smaller.
    # Code size: the step's jaxpr printed (its gradient's, about twice as long).
    source = len(str(whole))
    dtypes = (x_seq.dtype, [a.dtype for a in leaves])
    loads = 0  # the backward's, which need its split; not for an interpreted launch
    if not interpret:
        const_dtypes = [jnp.asarray(c).dtype for c in checked.consts]
        loads = _Split(checked.jaxpr, ny, step_shape, const_dtypes, *dtypes).loads
    backward = launch(loads, 2 * source)
    forward = launch(1, source, backward["block"])
    block = min(forward["block"], pl.next_power_of_2(n))
    outputs: list = []
    closed = _trace(flat_step(modules, state, outputs), (block,), x_seq, leaves)
    rebuild = outputs[0][1]
    _check_shape_blind(closed, modules, state, x_seq, leaves, block)

    stops = lengths_leaf(modules)
    kernel = _Kernel(closed, ny, steps, block, n, interpret, forward, backward, dtypes, stops)
    consts = [jnp.reshape(jnp.asarray(c), (1,)) for c in closed.consts]
    args = (x_seq.reshape(steps, n), [a.reshape(n) for a in leaves], consts)
    return kernel, args, rebuild


def gpu_kernels(
    x_seq: Any, modules: Any, state: Any, grad: bool = True
) -> list[tuple[str, str, dict]]:
    """The Triton modules (MLIR text) of the kernels a fused call would run on a GPU of the
    default device's (or ``GPU["sms"]``) SMs, each with its launch and the arrays it reads
    and writes per step (``launch["arrays"]``): ``(name, module, launch)``;
    with `grad` the forward saving what the backward reads and the backward, else the forward
    alone. Lowered for CUDA here, without one, by Pallas' Triton lowering; for the GPU
    compile tests and ``benchmarks.gpu_model``, which compile them with the installed
    triton."""
    from jax._src.pallas.triton import lowering

    kernel, args, _ = _prepare(x_seq, modules, state, interpret=False)
    texts: list[str] = []
    lower = lowering.lower_jaxpr_to_triton_module

    def capture(*a: Any, **k: Any) -> Any:
        result = lower(*a, **k)
        texts.append(str(result.module.operation.get_asm()))
        return result

    def gradient(*args: Any) -> Any:
        outs, pull = jax.vjp(kernel.run, *args)
        return pull(jax.tree.map(jnp.zeros_like, outs))

    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    lowering.lower_jaxpr_to_triton_module = capture
    try:
        jax.jit(gradient if grad else kernel.run).trace(*specs).lower(lowering_platforms=("cuda",))
    finally:
        lowering.lower_jaxpr_to_triton_module = lower
    names = ("fwd", "bwd") if grad else ("fwd",)
    arrays = {"fwd": (1, kernel.ny)}
    if grad:
        arrays = {"fwd": (1, kernel.ny + len(kernel.split.saved)), "bwd": (kernel.split.loads, 1)}
    return [
        (name, text, {**kernel.launches[name], "arrays": arrays[name]})
        for name, text in zip(names, texts, strict=True)
    ]


# Public as jax.core.eval_jaxpr up to JAX 0.10; newer releases may keep it private only.
try:
    from jax.core import eval_jaxpr as _eval_jaxpr
except ImportError:  # pragma: no cover - depends on the JAX release
    from jax._src.core import eval_jaxpr as _eval_jaxpr

# Computed in float32 for half inputs inside a kernel, as XLA computes them: Pallas' Triton
# lowering has no half division or transcendentals ("unsupported types: tensor<...xbf16>").
_FLOAT32_MATH = frozenset(
    [
        "div",
        "logistic",
        "tanh",
        "exp",
        "exp2",
        "expm1",
        "log",
        "log1p",
        "sqrt",
        "rsqrt",
        "sin",
        "cos",
        "tan",
        "erf",
        "erfc",
        "erf_inv",
        "pow",
        "atan2",
        "cbrt",
    ]
)
_HALF = (jnp.float16, jnp.bfloat16)


def _rounded(name: str, args: list) -> Any:
    """The float32 `name` ("div", "sqrt", "logistic") of `args` rounded to nearest, as XLA
    computes it on a GPU: Triton lowers float32 ``/`` and ``sqrt`` to approximations
    (``div.approx.f32``, ``sqrt.approx.f32``), a last-bit difference that flips a spike on
    the threshold."""
    if name == "logistic":  # 1 / (1 + exp(-x)), as XLA expands it
        (x,) = args
        return _rounded("div", [jnp.ones_like(x), 1.0 + jnp.exp(-x)])
    args = jnp.broadcast_arrays(*(jnp.asarray(a, jnp.float32) for a in args))
    shape = args[0].shape
    if not shape:  # inline assembly takes tensors, not scalars (a step's 0-d parameter)
        args = [jnp.broadcast_to(a, (1,)) for a in args]
    result = jax.ShapeDtypeStruct(args[0].shape, jnp.float32)
    operands = ", ".join(f"${i}" for i in range(len(args) + 1))
    out = pltriton.elementwise_inline_asm(
        f"{name}.rn.f32 {operands};",
        args=args,
        constraints=",".join(["=r"] + ["r"] * len(args)),
        pack=1,
        result_shape_dtypes=[result],
    )[0]
    return out if shape else out.reshape(())


_ROUNDED = frozenset(["div", "sqrt", "logistic"])


def _eval_inlined(jaxpr: Any, consts: list, *args: Any, gpu: bool = False) -> list:
    """``eval_jaxpr`` for a kernel body: the jaxprs of ``custom_vjp``/``custom_jvp`` calls
    and of nested ``jit`` calls evaluated in place (Pallas' Triton lowering has no rule for
    ``custom_vjp_call``; the gradient kernel differentiates the step outside, through the
    custom rules), and half-precision math done in float32. With `gpu`, float32 division,
    square root and sigmoid rounded to nearest (:func:`_rounded`)."""
    known = dict(zip(jaxpr.constvars, consts, strict=True))
    known.update(zip(jaxpr.invars, args, strict=True))
    return _eval_part(jaxpr, known, jaxpr.outvars, gpu)


def _eval_part(jaxpr: Any, known: dict, outvars: list, gpu: bool) -> list:
    """`outvars` of `jaxpr` from the variables in `known` (a dict of them to values),
    computing only the equations they need, as :func:`_eval_inlined` does."""
    env = dict(known)

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    wanted = {v for v in outvars if isinstance(v, jax.extend.core.Var)} - env.keys()
    eqns = []
    for eqn in reversed(jaxpr.eqns):
        if wanted.intersection(eqn.outvars):
            eqns.append(eqn)
            wanted |= {v for v in eqn.invars if isinstance(v, jax.extend.core.Var)} - env.keys()
    for eqn in reversed(eqns):
        invals = [read(v) for v in eqn.invars]
        inner = next((eqn.params[k] for k in ("call_jaxpr", "jaxpr") if k in eqn.params), None)
        if eqn.primitive.name in _NESTED and inner is not None:
            closed_consts = getattr(inner, "consts", [])
            outs = _eval_inlined(getattr(inner, "jaxpr", inner), closed_consts, *invals, gpu=gpu)
        else:
            half = eqn.primitive.name in _FLOAT32_MATH and any(
                getattr(v, "dtype", None) in _HALF for v in invals
            )
            if half:
                invals = [
                    v.astype(jnp.float32) if getattr(v, "dtype", None) in _HALF else v
                    for v in invals
                ]
            name = eqn.primitive.name
            computed = jnp.float32 if half else eqn.outvars[0].aval.dtype
            if gpu and name in _ROUNDED and computed == jnp.float32:
                outs = [_rounded(name, invals)]
            else:
                outs = eqn.primitive.bind(*invals, **eqn.params)
                outs = outs if eqn.primitive.multiple_results else [outs]
            if half:
                outs = [o.astype(v.aval.dtype) for o, v in zip(outs, eqn.outvars, strict=True)]
        for var, val in zip(eqn.outvars, outs, strict=True):
            env[var] = val
    return [read(v) for v in outvars]


def _load(ref: Any, real: Any) -> Any:
    """A block of a step, its lanes past N masked (read as 0)."""
    return pltriton.load(ref, mask=real, other=0)


def _store(ref: Any, value: Any, real: Any) -> None:
    pltriton.store(ref, value, mask=real)


def _time_loop(
    steps: Any, unroll: int, load: Any, body: Any, carry: Any, reverse: bool = False
) -> Any:
    """``carry = body(t, load(t), carry)`` for every time step t < `steps` (backwards with
    `reverse`; `steps` may be traced), `unroll` steps per loop iteration with all their loads
    issued before the first step's arithmetic, so that loads of later steps are in flight
    while the recurrence runs."""

    def at(i: Any) -> Any:  # int32 as the lanes' indices, also with jax_enable_x64
        return lax.convert_element_type(steps - 1 - i if reverse else i, jnp.int32)

    def group(g: Any, carry: Any) -> Any:
        times = [at(g * unroll + k) for k in range(unroll)]
        loaded = [load(t) for t in times]
        for t, item in zip(times, loaded, strict=True):
            carry = body(t, item, carry)
        return carry

    carry = lax.fori_loop(0, steps // unroll, group, carry)
    rest = steps - steps % unroll
    return lax.fori_loop(rest, steps, lambda i, c: body(at(i), load(at(i)), c), carry)


class _Split:
    """One step and its vector-Jacobian product as one jaxpr at `shape` (a block of
    elements), traced outside the kernels through the step's own ``custom_vjp`` and
    ``custom_jvp`` rules, and where the two kernels divide it (:func:`saved_for_backward`):
    ``(*consts, x, *state, *output cotangents, *state cotangents) -> (g_x, *g_state,
    *g_consts, *outputs, *new_state)``. The forward kernel computes the outputs, the new
    state and the `saved` values from the constants, ``x`` and the state; the backward
    kernel the gradients from the constants, the saved values (and ``x`` when `reads_x`)
    and the cotangents. Each constant's gradient has one entry per element of the block
    (`per_lane`: the constant given as a block of copies), unless the step broadcasts a
    constant itself: then it is one sum over the block."""

    def __init__(
        self, jaxpr: Any, ny: int, shape: tuple, consts: list, x_dtype: Any, s_dtypes: list
    ) -> None:
        """`consts`: the dtypes of the step's captured constants."""
        out_avals = [v.aval for v in jaxpr.outvars]
        self.diff_y = [i for i in range(ny) if jnp.issubdtype(out_avals[i].dtype, jnp.inexact)]
        self.diff_c = [i for i, c in enumerate(consts) if jnp.issubdtype(c, jnp.inexact)]
        args = (jaxpr, ny, shape, consts, x_dtype, s_dtypes)
        try:
            self.closed, self.per_lane = self._trace(*args, per_lane=True), True
        except (TypeError, ValueError):  # the step broadcasts a constant itself
            self.closed, self.per_lane = self._trace(*args, per_lane=False), False
        joint = self.closed.jaxpr
        nc, nl = len(consts), len(s_dtypes)
        self.consts, self.inputs = joint.invars[:nc], joint.invars[nc : nc + 1 + nl]
        self.cotangents = joint.invars[nc + 1 + nl :]
        grads = 1 + nl + len(self.diff_c)
        self.gradients, self.primal = joint.outvars[:grads], joint.outvars[grads:]
        var = jax.extend.core.Var
        graph: list[tuple[Any, list]] = [(v, []) for v in joint.invars]
        for eqn in joint.eqns:
            reads = [v for v in eqn.invars if isinstance(v, var)]
            graph += [(v, reads) for v in eqn.outvars]
        saved = saved_for_backward(
            graph,
            self.inputs,
            self.cotangents,
            [v for v in self.gradients if isinstance(v, var)],
            lambda v: v.aval.dtype if v.aval.shape == tuple(shape) else None,
            lambda d: jnp.dtype(d).itemsize,
        )
        self.reads_x = self.inputs[0] in saved
        self.saved = [v for v in saved if v is not self.inputs[0]]
        # The arrays the backward kernel loads per step.
        self.loads = self.reads_x + len(self.saved) + len(self.diff_y)

    def _trace(
        self,
        jaxpr: Any,
        ny: int,
        shape: tuple,
        consts: list,
        x_dtype: Any,
        s_dtypes: list,
        per_lane: bool,
    ) -> Any:
        nl, nc, diff_y, diff_c = len(s_dtypes), len(consts), self.diff_y, self.diff_c

        def joint(*flat: Any) -> list:
            c, x, s = list(flat[:nc]), flat[nc], list(flat[nc + 1 : nc + 1 + nl])
            g = list(flat[nc + 1 + nl :])

            def step(x: Any, s: list, dc: list) -> tuple:
                full = list(c)
                for i, v in zip(diff_c, dc, strict=True):
                    full[i] = v
                outs = _eval_jaxpr(jaxpr, full, x, *s)
                return [outs[i] for i in diff_y] + list(outs[ny:]), list(outs)

            lanes = x.shape if per_lane else ()
            dc = [jnp.broadcast_to(c[j], lanes) for j in diff_c]
            primal: list
            _, pull, primal = jax.vjp(step, x, s, dc, has_aux=True)
            g_x, g_s, g_dc = pull(g)
            return [g_x, *g_s, *g_dc, *primal]

        out_avals = [v.aval for v in jaxpr.outvars]
        specs = [jax.ShapeDtypeStruct((), c) for c in consts]
        specs += [jax.ShapeDtypeStruct(shape, d) for d in [x_dtype, *s_dtypes]]
        specs += [jax.ShapeDtypeStruct(shape, out_avals[i].dtype) for i in diff_y]
        specs += [jax.ShapeDtypeStruct(shape, d) for d in s_dtypes]
        return jax.make_jaxpr(joint)(*specs)

    def _known(self, consts: list) -> dict:
        known = dict(zip(self.closed.jaxpr.constvars, self.closed.consts, strict=True))
        known.update(zip(self.consts, consts, strict=True))
        return known

    def forward(self, consts: list, x: Any, state: list, gpu: bool) -> list:
        """One step's outputs, new state and saved values."""
        known = self._known(consts)
        known.update(zip(self.inputs, [x, *state], strict=True))
        return _eval_part(self.closed.jaxpr, known, [*self.primal, *self.saved], gpu)

    def backward(self, consts: list, x: Any, saved: list, cotangents: list, gpu: bool) -> list:
        """One step's gradients (of x, the state and the constants) from its saved values
        (and `x`, read when `reads_x`) and the cotangents of its outputs and new state."""
        known = self._known(consts)
        known.update(zip(self.saved, saved, strict=True))
        known.update(zip(self.cotangents, cotangents, strict=True))
        if self.reads_x:
            known[self.inputs[0]] = x
        return _eval_part(self.closed.jaxpr, known, self.gradients, gpu)


class _Kernel:
    """The forward and backward kernels of one traced step, as a ``jax.custom_vjp``."""

    def __init__(
        self,
        closed: Any,
        ny: int,
        steps: int,
        block: int,
        n: int,
        interpret: bool,
        forward: dict,
        backward: dict,
        dtypes: tuple[Any, list],
        stops: int | None = None,
    ) -> None:
        self.jaxpr, self.ny, self.steps, self.block = closed.jaxpr, ny, steps, block
        self.stops = stops  # the state leaf of the lengths (`lengths_leaf`), or None
        self.dtypes = dtypes  # of x and of the state arrays
        self.const_dtypes = [jnp.asarray(c).dtype for c in closed.consts]
        self.n = n  # elements per step; the last block's lanes past N are masked
        self.grid = (pl.cdiv(n, block),)
        self.launches = {"fwd": forward, "bwd": backward}
        self.interpret = interpret
        self.out_avals = [v.aval for v in closed.jaxpr.outvars]
        self.run = jax.custom_vjp(self._primal)
        self.run.defvjp(self._fwd, self._bwd)

    def _unroll(self, name: str) -> int:
        return max(1, min(self.launches[name]["unroll"], self.steps))

    def _call(self, name: str, kernel: Any, shapes: list, *args: Any) -> Any:
        """``pl.pallas_call`` of the kernel `name` ("fwd" or "bwd") with its launch."""
        params: dict[str, Any] = {"interpret": True}
        if not self.interpret:
            warps = self.launches[name]["num_warps"]
            params = {"compiler_params": pltriton.CompilerParams(num_warps=warps, num_stages=1)}
        return pl.pallas_call(kernel, out_shape=shapes, grid=self.grid, **params)(*args)

    def _lanes(self) -> tuple[Any, Any]:
        """Inside a kernel: this program's block of a step, and which of its lanes are < N."""
        start = pl.program_id(0) * self.block
        cols = pl.ds(start, self.block)
        return cols, start + lax.broadcasted_iota(jnp.int32, (self.block,), 0) < self.n

    @functools.cached_property
    def split(self) -> _Split:
        """The step's joint jaxpr at the block's shape, traced with the first gradient."""
        return _Split(self.jaxpr, self.ny, (self.block,), self.const_dtypes, *self.dtypes)

    def _forward(self, x2d: Any, leaves: list, consts: list, save: bool) -> tuple:
        ny, nl, steps = self.ny, len(leaves), self.steps
        gpu = not self.interpret
        saved = self.split.saved if save else []

        def kernel(*refs: Any) -> None:
            x_ref, s_refs, c_refs = refs[0], refs[1 : 1 + nl], refs[1 + nl : 1 + nl + len(consts)]
            out = refs[1 + nl + len(consts) :]
            y_refs, final_refs, saved_refs = out[:ny], out[ny : ny + nl], out[ny + nl :]
            cols, real = self._lanes()
            c = [r[0] for r in c_refs]

            def load(t: Any) -> Any:
                return _load(x_ref.at[t, cols], real)

            def body(t: Any, x: Any, s: list) -> list:
                outs = (
                    self.split.forward(c, x, s, gpu)
                    if save
                    else _eval_inlined(self.jaxpr, c, x, *s, gpu=gpu)
                )
                stored = [*outs[:ny], *outs[ny + nl :]]
                for r, v in zip([*y_refs, *saved_refs], stored, strict=True):
                    _store(r.at[t, cols], v, real)
                return list(outs[ny : ny + nl])

            s = [_load(r.at[cols], real) for r in s_refs]
            s = _time_loop(steps, self._unroll("fwd"), load, body, s)
            for r, v in zip(final_refs, s, strict=True):
                _store(r.at[cols], v, real)

        seq = (steps, self.n)
        shapes = [jax.ShapeDtypeStruct(seq, a.dtype) for a in self.out_avals[:ny]]
        shapes += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
        shapes += [jax.ShapeDtypeStruct(seq, v.aval.dtype) for v in saved]
        out = self._call("fwd", kernel, shapes, x2d, *leaves, *consts)
        return list(out[:ny]), list(out[ny : ny + nl]), list(out[ny + nl :])

    def _primal(self, x2d: Any, leaves: list, consts: list) -> tuple:
        ys, final, _ = self._forward(x2d, leaves, consts, save=False)
        return ys, final

    def _fwd(self, x2d: Any, leaves: list, consts: list) -> tuple:
        ys, final, saved = self._forward(x2d, leaves, consts, save=True)
        lengths = None if self.stops is None else leaves[self.stops]
        return (ys, final), (x2d if self.split.reads_x else None, saved, consts, lengths)

    def _bwd(self, residuals: tuple, cotangents: tuple) -> tuple:
        x2d, saved, consts, lengths = residuals
        g_ys, g_final = cotangents
        split, block, steps = self.split, self.block, self.steps
        nl, ns, reads_x = len(g_final), len(saved), split.reads_x
        diff_c, per_lane = split.diff_c, split.per_lane
        g_ys = [g_ys[i] for i in split.diff_y]
        nc, ng = len(consts), len(g_ys)
        gpu = not self.interpret

        def kernel(*refs: Any) -> None:
            x_refs, refs = refs[:reads_x], refs[reads_x:]
            saved_refs, gy_refs = refs[:ns], refs[ns : ns + ng]
            gf_refs = refs[ns + ng : ns + ng + nl]
            c_refs = refs[ns + ng + nl : ns + ng + nl + nc]
            starts_refs = refs[ns + ng + nl + nc : ns + ng + nl + nc + stops]
            gx_ref, *out = refs[ns + ng + nl + nc + stops :]
            g0_refs, gc_refs = out[:nl], out[nl:]
            # Lanes past the step's N read zeros, whose gradients (g * log(0)...) may be NaN.
            cols, real = self._lanes()
            c = [r[0] for r in c_refs]

            def load(t: Any) -> tuple:
                return (
                    [_load(r.at[t, cols], real) for r in x_refs],
                    [_load(r.at[t, cols], real) for r in saved_refs],
                    [_load(r.at[t, cols], real) for r in gy_refs],
                )

            def body(t: Any, loaded: tuple, carry: tuple) -> tuple:
                (x_t, saved_t, gy_t), (g_s, g_c) = loaded, carry
                x = x_t[0] if x_t else None
                flat = split.backward(c, x, saved_t, [*gy_t, *g_s], gpu)
                g_x, g_s, g_dc = flat[0], flat[1 : 1 + nl], flat[1 + nl :]
                _store(gx_ref.at[t, cols], g_x, real)
                if per_lane:
                    g_dc = [jnp.where(real, g, jnp.zeros_like(g)) for g in g_dc]
                return list(g_s), [a + b for a, b in zip(g_c, g_dc, strict=True)]

            lanes = (block,) if per_lane else ()
            zeros = [jnp.zeros(lanes, consts[j].dtype) for j in diff_c]
            carry = ([_load(r.at[cols], real) for r in gf_refs], zeros)
            start = steps
            if starts_refs:  # past the block's longest length: x's gradients zero, no step
                start = starts_refs[0][pl.program_id(0)]
                nothing = jnp.zeros((block,), x_dtype)

                def skip(t: Any, unused: Any) -> Any:
                    _store(gx_ref.at[lax.convert_element_type(t, jnp.int32), cols], nothing, real)
                    return unused

                lax.fori_loop(start, steps, skip, 0)
            g_s, g_c = _time_loop(start, self._unroll("bwd"), load, body, carry, reverse=True)
            for r, v in zip(g0_refs, g_s, strict=True):
                _store(r.at[cols], v, real)
            for r, v in zip(gc_refs, g_c, strict=True):
                r[pl.program_id(0)] = jnp.sum(v) if per_lane else v

        x_dtype, s_dtypes = self.dtypes
        shapes = [jax.ShapeDtypeStruct((steps, self.n), x_dtype)]
        shapes += [jax.ShapeDtypeStruct((self.n,), d) for d in s_dtypes]
        shapes += [jax.ShapeDtypeStruct(self.grid, consts[j].dtype) for j in diff_c]
        xs = [x2d] if reads_x else []
        starts = [] if lengths is None else [block_starts(lengths, block)]
        stops = len(starts)
        args = (*xs, *saved, *g_ys, *g_final, *consts, *starts)
        out = self._call("bwd", kernel, shapes, *args)
        g_x, g_leaves, g_dc = out[0], list(out[1 : 1 + nl]), out[1 + nl :]
        g_consts: list = [np.zeros(c.shape, jax.dtypes.float0) for c in consts]
        for j, g in zip(diff_c, g_dc, strict=True):
            g_consts[j] = jnp.sum(g).reshape(1)
        return g_x, g_leaves, g_consts

"""JAX lowering: one ``pl.pallas_call`` runs the whole sequence, the user's step inside it.

The step is traced once per block shape into a jaxpr; values it captures (scalars, possibly
tracers of an enclosing ``jit`` or ``grad``) become kernel inputs. Each program owns a block of
the N elements of a step and loops over time with ``lax.fori_loop``, several steps per
iteration, reading ``x[t]`` and the carried state, writing ``y[t]``. Gradients come from a
second kernel that loops backwards over time, calling ``jax.vjp`` of the step (its own
``custom_vjp``/``custom_jvp`` surrogates included) on the state saved before each step. On CPU
the kernels run in Pallas' interpret mode (for testing); on a GPU through Pallas' Triton
backend.
"""

from __future__ import annotations

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
    check_layout,
    flat_step,
    gpu_launch,
    not_fusable,
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
    whole = fusable(x_seq, modules, state).jaxpr
    outs = whole.outvars  # the outputs, then the state
    steps, step_shape = x_seq.shape[0], tuple(x_seq.shape[1:])
    n = math.prod(step_shape)
    leaves = state_leaves(state) if state is not None else []
    ny = len(outs) - len(leaves)
    ng = sum(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in outs[:ny])
    itemsize = jnp.dtype(x_seq.dtype).itemsize

    def launch(streams: int, source: int, max_block: int | None = None) -> dict:
        if interpret:
            return INTERPRET_LAUNCH
        return gpu_launch(n, steps, itemsize, streams, source, _sms(), max_block)

    # One block for both kernels, the step traced once at its shape: the backward's (it
    # loads x, the saved state and the outputs' cotangents), which is the smaller.
    # Code size: the step's jaxpr printed (its gradient's, about twice as long).
    source = len(str(whole))
    backward = launch(1 + len(leaves) + ng, 2 * source)
    forward = launch(1, source, backward["block"])
    block = min(forward["block"], pl.next_power_of_2(n))
    outputs: list = []
    closed = _trace(flat_step(modules, state, outputs), (block,), x_seq, leaves)
    rebuild = outputs[0][1]
    _check_shape_blind(closed, modules, state, x_seq, leaves, block)

    kernel = _Kernel(closed, ny, steps, block, n, interpret, forward, backward)
    consts = [jnp.reshape(jnp.asarray(c), (1,)) for c in closed.consts]
    args = (x_seq.reshape(steps, n), [a.reshape(n) for a in leaves], consts)
    return kernel, args, rebuild


def gpu_kernels(
    x_seq: Any, modules: Any, state: Any, grad: bool = True
) -> list[tuple[str, str, dict]]:
    """The Triton modules (MLIR text) of the kernels a fused call would run on a GPU of the
    default device's (or ``GPU["sms"]``) SMs, each with its launch: ``(name, module,
    launch)``; with `grad` the forward saving the state and the backward, else the forward
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
    return [(name, text, kernel.launches[name]) for name, text in zip(names, texts, strict=True)]


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
    result = jax.ShapeDtypeStruct(args[0].shape, jnp.float32)
    operands = ", ".join(f"${i}" for i in range(len(args) + 1))
    return pltriton.elementwise_inline_asm(
        f"{name}.rn.f32 {operands};",
        args=args,
        constraints=",".join(["=r"] + ["r"] * len(args)),
        pack=1,
        result_shape_dtypes=[result],
    )[0]


_ROUNDED = frozenset(["div", "sqrt", "logistic"])


def _eval_inlined(jaxpr: Any, consts: list, *args: Any, gpu: bool = False) -> list:
    """``eval_jaxpr`` for a kernel body: the jaxprs of ``custom_vjp``/``custom_jvp`` calls
    and of nested ``jit`` calls evaluated in place (Pallas' Triton lowering has no rule for
    ``custom_vjp_call``; the gradient kernel differentiates the step outside, through the
    custom rules), and half-precision math done in float32. With `gpu`, float32 division,
    square root and sigmoid rounded to nearest (:func:`_rounded`)."""
    env: dict = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
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
    return [read(v) for v in jaxpr.outvars]


def _load(ref: Any, real: Any) -> Any:
    """A block of a step, its lanes past N masked (read as 0)."""
    return pltriton.load(ref, mask=real, other=0)


def _store(ref: Any, value: Any, real: Any) -> None:
    pltriton.store(ref, value, mask=real)


def _time_loop(
    steps: int, unroll: int, load: Any, body: Any, carry: Any, reverse: bool = False
) -> Any:
    """``carry = body(t, load(t), carry)`` for every time step t (backwards with `reverse`),
    `unroll` steps per loop iteration with all their loads issued before the first step's
    arithmetic, so that loads of later steps are in flight while the recurrence runs."""

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
    ) -> None:
        self.jaxpr, self.ny, self.steps, self.block = closed.jaxpr, ny, steps, block
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

    def _apply(self, consts: list, x: Any, state: list) -> list:
        return _eval_inlined(self.jaxpr, consts, x, *state, gpu=not self.interpret)

    def _forward(self, x2d: Any, leaves: list, consts: list, save: bool) -> tuple:
        ny, nl, steps = self.ny, len(leaves), self.steps

        def kernel(*refs: Any) -> None:
            x_ref, s_refs, c_refs = refs[0], refs[1 : 1 + nl], refs[1 + nl : 1 + nl + len(consts)]
            out = refs[1 + nl + len(consts) :]
            y_refs, final_refs, saved_refs = out[:ny], out[ny : ny + nl], out[ny + nl :]
            cols, real = self._lanes()
            c = [r[0] for r in c_refs]

            def load(t: Any) -> Any:
                return _load(x_ref.at[t, cols], real)

            def body(t: Any, x: Any, s: list) -> list:
                for r, v in zip(saved_refs, s, strict=False):
                    _store(r.at[t, cols], v, real)
                outs = self._apply(c, x, s)
                for r, y in zip(y_refs, outs[:ny], strict=True):
                    _store(r.at[t, cols], y, real)
                return list(outs[ny:])

            s = [_load(r.at[cols], real) for r in s_refs]
            s = _time_loop(steps, self._unroll("fwd"), load, body, s)
            for r, v in zip(final_refs, s, strict=True):
                _store(r.at[cols], v, real)

        seq = (steps, self.n)
        shapes = [jax.ShapeDtypeStruct(seq, a.dtype) for a in self.out_avals[:ny]]
        shapes += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
        if save:
            shapes += [jax.ShapeDtypeStruct(seq, a.dtype) for a in leaves]
        out = self._call("fwd", kernel, shapes, x2d, *leaves, *consts)
        return list(out[:ny]), list(out[ny : ny + nl]), list(out[ny + nl :])

    def _vjp_jaxpr(
        self,
        consts: list,
        diff_y: list,
        diff_c: list,
        x_dtype: Any,
        s_dtypes: list,
        per_lane: bool,
    ) -> Any:
        """One step's vector-Jacobian product at the block's shape, traced here, outside the
        kernel, through the step's own ``custom_vjp``/``custom_jvp`` rules: ``(*consts, x,
        *state, *output cotangents, *state cotangents) -> (g_x, *g_state, *g_consts)``. With
        `per_lane` each constant's gradient has one entry per element of the block (the
        constant given as a block of copies), else it is one sum over the block."""
        ny, nl, nc = self.ny, len(s_dtypes), len(consts)

        def vjp(*flat: Any) -> list:
            c, x, s = list(flat[:nc]), flat[nc], list(flat[nc + 1 : nc + 1 + nl])
            g = list(flat[nc + 1 + nl :])

            def step(x: Any, s: list, dc: list) -> list:
                full = list(c)
                for i, v in zip(diff_c, dc, strict=True):
                    full[i] = v
                outs = _eval_jaxpr(self.jaxpr, full, x, *s)
                return [outs[i] for i in diff_y] + list(outs[ny:])

            shape = x.shape if per_lane else ()
            _, pull = jax.vjp(step, x, s, [jnp.broadcast_to(c[j], shape) for j in diff_c])
            g_x, g_s, g_dc = pull(g)
            return [g_x, *g_s, *g_dc]

        block = (self.block,)
        specs = [jax.ShapeDtypeStruct((), c.dtype) for c in consts]
        specs += [jax.ShapeDtypeStruct(block, d) for d in [x_dtype, *s_dtypes]]
        specs += [jax.ShapeDtypeStruct(block, self.out_avals[i].dtype) for i in diff_y]
        specs += [jax.ShapeDtypeStruct(block, d) for d in s_dtypes]
        return jax.make_jaxpr(vjp)(*specs)

    def _primal(self, x2d: Any, leaves: list, consts: list) -> tuple:
        ys, final, _ = self._forward(x2d, leaves, consts, save=False)
        return ys, final

    def _fwd(self, x2d: Any, leaves: list, consts: list) -> tuple:
        ys, final, saved = self._forward(x2d, leaves, consts, save=True)
        return (ys, final), (x2d, saved, consts)

    def _bwd(self, residuals: tuple, cotangents: tuple) -> tuple:
        x2d, saved, consts = residuals
        g_ys, g_final = cotangents
        ny, nl, block, steps = self.ny, len(saved), self.block, self.steps
        diff_y = [i for i in range(ny) if jnp.issubdtype(self.out_avals[i].dtype, jnp.inexact)]
        diff_c = [i for i, c in enumerate(consts) if jnp.issubdtype(c.dtype, jnp.inexact)]
        g_ys = [g_ys[i] for i in diff_y]
        nc, ng = len(consts), len(g_ys)
        dtypes = [a.dtype for a in saved]
        try:  # each constant's gradient per element, the padded lanes masked out
            vjp, per_lane = self._vjp_jaxpr(consts, diff_y, diff_c, x2d.dtype, dtypes, True), True
        except (TypeError, ValueError):  # the step broadcasts a constant itself: per block
            vjp, per_lane = self._vjp_jaxpr(consts, diff_y, diff_c, x2d.dtype, dtypes, False), False

        def kernel(*refs: Any) -> None:
            x_ref, saved_refs = refs[0], refs[1 : 1 + nl]
            gy_refs = refs[1 + nl : 1 + nl + ng]
            gf_refs = refs[1 + nl + ng : 1 + 2 * nl + ng]
            c_refs = refs[1 + 2 * nl + ng : 1 + 2 * nl + ng + nc]
            gx_ref, *out = refs[1 + 2 * nl + ng + nc :]
            g0_refs, gc_refs = out[:nl], out[nl:]
            # Lanes past the step's N read zeros, whose gradients (g * log(0)...) may be NaN.
            cols, real = self._lanes()
            c = [r[0] for r in c_refs]

            def load(t: Any) -> tuple:
                return (
                    _load(x_ref.at[t, cols], real),
                    [_load(r.at[t, cols], real) for r in saved_refs],
                    [_load(r.at[t, cols], real) for r in gy_refs],
                )

            def body(t: Any, loaded: tuple, carry: tuple) -> tuple:
                (x_t, s_t, gy_t), (g_s, g_c) = loaded, carry
                flat = _eval_inlined(
                    vjp.jaxpr, vjp.consts, *c, x_t, *s_t, *gy_t, *g_s, gpu=not self.interpret
                )
                g_x, g_s, g_dc = flat[0], flat[1 : 1 + nl], flat[1 + nl :]
                _store(gx_ref.at[t, cols], g_x, real)
                if per_lane:
                    g_dc = [jnp.where(real, g, jnp.zeros_like(g)) for g in g_dc]
                return list(g_s), [a + b for a, b in zip(g_c, g_dc, strict=True)]

            lanes = (block,) if per_lane else ()
            zeros = [jnp.zeros(lanes, consts[j].dtype) for j in diff_c]
            carry = ([_load(r.at[cols], real) for r in gf_refs], zeros)
            g_s, g_c = _time_loop(steps, self._unroll("bwd"), load, body, carry, reverse=True)
            for r, v in zip(g0_refs, g_s, strict=True):
                _store(r.at[cols], v, real)
            for r, v in zip(gc_refs, g_c, strict=True):
                r[pl.program_id(0)] = jnp.sum(v) if per_lane else v

        shapes = [jax.ShapeDtypeStruct(x2d.shape, x2d.dtype)]
        shapes += [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in saved]
        shapes += [jax.ShapeDtypeStruct(self.grid, consts[j].dtype) for j in diff_c]
        out = self._call("bwd", kernel, shapes, x2d, *saved, *g_ys, *g_final, *consts)
        g_x, g_leaves, g_dc = out[0], list(out[1 : 1 + nl]), out[1 + nl :]
        g_consts: list = [np.zeros(c.shape, jax.dtypes.float0) for c in consts]
        for j, g in zip(diff_c, g_dc, strict=True):
            g_consts[j] = jnp.sum(g).reshape(1)
        return g_x, g_leaves, g_consts

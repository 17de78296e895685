"""torch lowering: the step traced into aten operations and printed as a Triton kernel.

The step is traced once with ``make_fx`` (``torch.autograd.Function`` surrogates run their
forward; the gradient graph is traced from ``torch.autograd.grad``, so their ``backward`` is
what the backward kernel computes). Each aten operation becomes one Triton expression; a step
using anything else is not fusable. The forward kernel loops over time inside each program,
issuing the loads of several steps before computing them; the backward kernel loops backwards
over time from the values the forward saved, the fewest bytes its gradient can be computed
from (:func:`_training_steps`). On CPU tensors the kernels run in Triton's
interpreter (for testing), on CUDA tensors compiled.

Traces are cached by the step's structure (:func:`_key`): code, closure cells, defaults,
``functools.partial`` arguments, bound ``self`` and ``nn.Module`` attributes, with Python scalars
by value and tensors by identity and version (``tensor.add_`` bumps it); module-level globals
are not seen, as in the JAX compile cache.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import linecache
import math
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from .._tree import map_with_path
from . import (
    GPU,
    INTERPRET_LAUNCH,
    NotFusable,
    block_starts,
    check_layout,
    flat_step,
    gpu_launch,
    lengths_leaf,
    not_fusable,
    one_array,
    saved_for_backward,
    state_leaves,
    with_leaves,
)

_TL = {
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.float32: "tl.float32",
    torch.float64: "tl.float64",
    torch.bool: "tl.int1",
    torch.uint8: "tl.uint8",
    torch.int8: "tl.int8",
    torch.int16: "tl.int16",
    torch.int32: "tl.int32",
    torch.int64: "tl.int64",
}


def _call(fn: str) -> Callable[..., str]:
    return lambda *a, **_: f"{fn}({', '.join(a)})"


def _infix(op: str) -> Callable[..., str]:
    return lambda a, b, **_: f"({a} {op} {b})"


def _scaled(op: str, swap: bool = False) -> Callable[..., str]:
    def render(a: str, b: str, alpha: str = "1", **_: Any) -> str:
        a, b = (b, a) if swap else (a, b)
        return f"({a} {op} {b})" if alpha == "1" else f"({a} {op} {b} * {alpha})"

    return render


def _div(a: str, b: str, rounding_mode: str = "None", dtype: Any = None, **_: Any) -> str:
    """True division giving `dtype`, rounded to nearest as torch divides: Triton's `/` is an
    approximate division in float32 (exact in float64), its rounded one takes float32 only."""
    if rounding_mode != "None":
        raise not_fusable(f"it divides with rounding_mode={rounding_mode}")
    if dtype == torch.float64:
        return f"({a} / {b})"
    return f"tl.math.div_rn({_as_float32(a)}, {_as_float32(b)})"


def _as_float32(text: str) -> str:
    try:
        float(text)  # a Python literal: converted where it meets a tensor
    except ValueError:
        return f"({text}).to(tl.float32)"
    return text


def _pow(a: str, b: str, dtype: Any) -> str:
    """``a ** b``: small integer powers by multiplication, as torch computes them, other
    integer powers of ``|a|`` with the sign of an odd power (a negative base is no NaN), and
    the rest as ``exp2(b * log2(a))`` (NaN for a negative base, as in torch)."""
    try:
        exponent: float | None = float(b)
    except ValueError:  # a tensor exponent
        exponent = None
    if exponent is None or not exponent.is_integer():
        return f"tl.exp2({b} * tl.log2({a}))"
    n = abs(int(exponent))
    if n == 0:
        return f"tl.where({a} == {a}, 1.0, 1.0)"  # 1 for every base, NaN included
    if n <= 8:
        power = f"({' * '.join([a] * n)})"
    else:
        power = f"tl.exp2({float(n)} * tl.log2(tl.abs({a})))"
        power = f"tl.where({a} < 0, -{power}, {power})" if n % 2 else power
    return _div("1.0", power, dtype=dtype) if exponent < 0 else power


_NAN = "propagate_nan=tl.PropagateNan.ALL"  # torch.maximum/minimum/clamp propagate NaN


def _clamp(a: str, lo: str = "None", hi: str = "None", **_: Any) -> str:
    if lo != "None":
        a = f"tl.maximum({a}, {lo}, {_NAN})"
    if hi != "None":
        a = f"tl.minimum({a}, {hi}, {_NAN})"
    return a


_IDENTITY: tuple[str, ...] = ("clone", "alias", "detach", "lift_fresh_copy", "contiguous")
_IDENTITY += ("_to_copy", "expand", "detach_copy", "alias_copy", "expand_copy")
_CONSTANT = ("zeros_like", "ones_like", "full_like", "full", "scalar_tensor", "new_full")
_OPS: dict[str, Callable[..., str]] = {
    "add": _scaled("+"),
    "sub": _scaled("-"),
    "rsub": _scaled("-", swap=True),
    "mul": _infix("*"),
    "div": _div,
    "neg": lambda a, **_: f"(-{a})",
    "reciprocal": lambda a, dtype=None, **_: _div("1.0", a, dtype=dtype),
    "square": lambda a, **_: f"({a} * {a})",
    "relu": lambda a, **_: f"tl.where({a} < 0, 0, {a})",  # NaN stays NaN
    "maximum": lambda a, b, **_: f"tl.maximum({a}, {b}, {_NAN})",
    "minimum": lambda a, b, **_: f"tl.minimum({a}, {b}, {_NAN})",
    "clamp": _clamp,
    "clamp_min": lambda a, lo, **_: _clamp(a, lo),
    "clamp_max": lambda a, hi, **_: _clamp(a, "None", hi),
    "ge": _infix(">="),
    "gt": _infix(">"),
    "le": _infix("<="),
    "lt": _infix("<"),
    "eq": _infix("=="),
    "ne": _infix("!="),
    "where": _call("tl.where"),
    "masked_fill": lambda a, m, v, **_: f"tl.where({m}, {v}, {a})",
    "logical_not": lambda a, **_: f"({a} == 0)",
    "logical_and": lambda a, b, **_: f"(({a} != 0) & ({b} != 0))",
    "logical_or": lambda a, b, **_: f"(({a} != 0) | ({b} != 0))",
    "bitwise_and": _infix("&"),
    "bitwise_or": _infix("|"),
    "bitwise_xor": _infix("^"),
    "heaviside": lambda a, v, **_: f"tl.where({a} > 0, 1.0, tl.where({a} == 0, {v}, 0.0))",
    "sign": lambda a, **_: f"(tl.where({a} > 0, 1, 0) - tl.where({a} < 0, 1, 0))",
    "pow": lambda a, b, dtype=None, **_: _pow(a, b, dtype),
    "sgn": lambda a, **_: f"(tl.where({a} > 0, 1, 0) - tl.where({a} < 0, 1, 0))",  # abs' grad
    "sigmoid_backward": lambda g, y, **_: f"({g} * (1.0 - {y}) * {y})",
    "tanh_backward": lambda g, y, **_: f"({g} * (1.0 - {y} * {y}))",
    "threshold_backward": lambda g, x, t, **_: f"tl.where({x} <= {t}, 0.0, {g})",
}
# sigmoid as in torch; Triton's `tl.sigmoid` is a jit function the interpreter cannot call.
_OPS["sigmoid"] = lambda a, **_: f"(1.0 / (1.0 + tl.exp(-{a})))"
for _name in ("abs", "exp", "log", "rsqrt", "sin", "cos", "floor", "ceil"):
    _OPS[_name] = _call(f"tl.{_name}")
_OPS["sqrt"] = _call("tl.sqrt_rn")  # rounded as torch's; `tl.sqrt` is sqrt.approx in float32
_OPS["erf"] = _call("tl.erf")
_OPS["exp2"] = _call("tl.exp2")
_OPS["log2"] = _call("tl.log2")


def _tanh(a: str, **_: Any) -> str:
    """tanh from exp, with its odd series near 0 where ``1 - exp(-2|a|)`` would cancel
    (relative error below 1e-7 in float32). Triton's own tanh is a libdevice call that the
    interpreter lacks."""
    a2 = f"({a} * {a})"
    poly = f"(-17.0 / 315 + {a2} * (62.0 / 2835))"
    series = f"{a} * (1.0 + {a2} * (-1.0 / 3 + {a2} * (2.0 / 15 + {a2} * {poly})))"
    e = f"tl.exp(-2.0 * tl.abs({a}))"
    sign = f"tl.where({a} < 0, -1.0, 1.0)"
    return f"tl.where(tl.abs({a}) < 0.25, {series}, {sign} * (1.0 - {e}) / (1.0 + {e}))"


_OPS["tanh"] = _tanh


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise not_fusable(f"it uses the constant {value}")
        return repr(float(value)) if isinstance(value, float) else repr(value)
    if value is None or isinstance(value, str):
        return repr(value) if isinstance(value, str) else "None"
    raise not_fusable(f"it passes {type(value).__qualname__} to an operation")


def _op_name(node: Any) -> str:
    """The aten operation a ``call_function`` node calls: ``add`` for ``aten.add.Tensor``."""
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _reads(node: Any) -> list:
    """The nodes whose values `node` is computed from (none for a constant made in the
    shape of another)."""
    if node.op == "call_function" and _op_name(node) in _CONSTANT:
        return []
    return node.all_input_nodes


class _Graph:
    """One traced graph as Triton source lines: inputs are named, outputs come back named."""

    def __init__(self, gm: torch.fx.GraphModule, step_shape: tuple) -> None:
        self.gm, self.step_shape = gm, step_shape
        gm.graph.eliminate_dead_code()
        self.inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node in gm.graph.nodes:
            if node.op == "call_function":
                self._check(node)

    def _check(self, node: Any) -> None:
        name = _op_name(node)
        if name.endswith("_") and not name.startswith("_"):
            raise not_fusable(f"it works in place (`{name}`)")
        if name not in _OPS and name not in _IDENTITY and name not in _CONSTANT:
            raise not_fusable(f"it uses `{name}`, which has no fused lowering")
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or tuple(val.shape) not in ((), self.step_shape):
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
            raise not_fusable(f"`{name}` gives {shape}")
        if val.dtype not in _TL:
            raise not_fusable(f"`{name}` gives {val.dtype}")

    def emit(
        self, names: list[str] | dict, prefix: str, outputs: list | None = None
    ) -> tuple[list[str], list[str]]:
        """Source lines computing `outputs` (the graph's own by default) from the inputs
        named by `names` (in order, or nodes to names: any node given a name is read, not
        computed), and the outputs' names; only the nodes the outputs need are computed."""
        env: dict[Any, str]
        env = dict(names) if isinstance(names, dict) else dict(zip(self.inputs, names, strict=True))
        outputs = _output_nodes(self) if outputs is None else outputs
        wanted: set = set()
        stack = [o for o in outputs if o is not None]
        while stack:
            node = stack.pop()
            if node not in env and node not in wanted:
                wanted.add(node)
                stack += _reads(node)
        # Nodes that are Python literals in the source (captured scalars, and what is
        # computed from them alone): an operation on them alone makes a 0-d tensor.
        self.literals: set = set()
        lines: list[str] = []
        for i, node in enumerate(self.gm.graph.nodes):
            if node not in wanted:
                continue
            if node.op == "get_attr":
                value = getattr(self.gm, node.target)
                if value.numel() != 1:
                    raise not_fusable(
                        f"it captures an array of shape {tuple(value.shape)}; pass it as state"
                    )
                if value.requires_grad and torch.is_grad_enabled():
                    raise not_fusable(
                        "it captures a tensor that requires grad; fused kernels give "
                        "gradients for `x_seq` and `state` only"
                    )
                env[node] = _literal(value.item())
                self.literals.add(node)
            elif node.op == "call_function":
                same = self._same_as(node)
                if same is not None:  # a copy of a value (`detach`, `clone`): its name
                    env[node] = env[same]
                    continue
                var = f"{prefix}{i}"
                lines.append(f"{var} = {self._expression(node, env)}")
                env[node] = var
            else:
                raise AssertionError(f"{node} is needed and not given")
        return lines, [self._output(o, env) for o in outputs]

    def _same_as(self, node: Any) -> Any:
        """The node an identity operation (`_IDENTITY`) copies when it keeps its dtype and
        shape and the copied value is a tensor in the source, not a literal; else None."""
        if _op_name(node) not in _IDENTITY or not isinstance(node.args[0], torch.fx.Node):
            return None
        a, val = node.args[0], node.meta["val"]
        before = a.meta.get("val")
        if a in self.literals or not isinstance(before, torch.Tensor):
            return None
        return a if (before.dtype, before.shape) == (val.dtype, val.shape) else None

    def _output(self, node: Any, env: dict) -> str:
        if node is None:
            raise not_fusable("an output is None")
        return env[node]

    def _expression(self, node: Any, env: dict) -> str:
        name = _op_name(node)
        val = node.meta["val"]
        dtype = _TL[val.dtype]

        def render(a: Any) -> str:
            return env[a] if isinstance(a, torch.fx.Node) else _literal(a)

        if name in _CONSTANT:
            value = node.args[-1] if name in ("full_like", "full", "new_full") else None
            value = node.args[0] if name == "scalar_tensor" else value
            value = {"zeros_like": 0, "ones_like": 1}.get(name, value)
            if val.dim() == 0:
                return f"tl.full([], {_literal(value)}, {dtype})"
            return f"tl.full([BLOCK], {_literal(value)}, {dtype})"
        args = [render(a) for a in node.args]
        if name in _FLOAT32_MATH:
            args = [_float32(a, text) for a, text in zip(node.args, args, strict=True)]
        if name in _IDENTITY:
            expr = args[0]
        else:
            kwargs = {k: render(v) for k, v in node.kwargs.items()}
            expr = _OPS[name](*args, **{**kwargs, "dtype": val.dtype})
        inputs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        if all(a in self.literals for a in inputs):  # no tensor to call `.to` on
            return f"tl.full([], {expr}, {dtype})"
        return f"({expr}).to({dtype})"


# Computed in float32 for half inputs, as torch computes them; Triton's libdevice calls and
# its rounded division take float32 and float64 only.
_FLOAT32_MATH = {
    "div",
    "reciprocal",
    "pow",
    "sigmoid",
    "tanh",
    "exp",
    "exp2",
    "log",
    "log2",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "erf",
}


def _float32(arg: Any, text: str) -> str:
    val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    half = isinstance(val, torch.Tensor) and val.dtype in (torch.float16, torch.bfloat16)
    return _as_float32(text) if half else text


_Key = tuple
_cache: OrderedDict[_Key, tuple[list, _Kernels | str]] = OrderedDict()
_lock = threading.Lock()
CACHE_SIZE = 128
# make_fx keeps global state while it traces, and Triton's interpreter patches `triton.language`
# globally while a kernel runs: each is serialised across threads (compiled CUDA launches are
# not). Re-entrant: a step may itself make a fused call.
_tracing = threading.RLock()
_interpreting = threading.RLock()


class _Uncacheable(Exception):
    pass


_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_BY_IDENTITY = (type, types.BuiltinFunctionType, types.ModuleType, types.MethodWrapperType)


def _key(obj: Any, tensors: list, depth: int = 0) -> Any:
    """What a trace of `obj` depends on, hashable; tensors are appended to `tensors`."""
    if depth > 64:
        raise _Uncacheable
    cls = type(obj)
    if cls in _SCALARS:
        return (cls, obj)
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        # The storage too: `t.data = other` keeps the tensor and its version.
        return ("tensor", id(obj), obj._version, obj.data_ptr(), obj.requires_grad)
    nested = functools.partial(_key, tensors=tensors, depth=depth + 1)
    if cls in (tuple, list) or (isinstance(obj, tuple) and hasattr(obj, "_fields")):
        return (cls, tuple(map(nested, obj)))
    if isinstance(obj, dict):
        return (cls, tuple((k, nested(v)) for k, v in obj.items()))
    if cls in (set, frozenset):  # as every nn.Module holds (its non-persistent buffers' names)
        return (cls, frozenset(map(nested, obj)))
    if isinstance(obj, types.FunctionType):
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(nested(cell.cell_contents))
            except ValueError:  # an empty cell
                cells.append(None)
        defaults, kwdefaults = obj.__defaults__, obj.__kwdefaults__
        return (
            "function",
            obj.__code__,
            None if defaults is None else nested(defaults),
            None if kwdefaults is None else nested(kwdefaults),
            tuple(cells),
        )
    if isinstance(obj, functools.partial):
        return ("partial", nested(obj.func), nested(obj.args), nested(obj.keywords))
    if isinstance(obj, types.MethodType):
        return ("method", nested(obj.__func__), nested(obj.__self__))
    if isinstance(obj, _BY_IDENTITY):
        return ("object", obj)
    attrs = getattr(obj, "__dict__", None)
    if attrs is None:
        raise _Uncacheable
    return ("instance", cls, nested(attrs))


class _Kernels:
    """The Triton kernels of one traced step, and what the launcher needs to know of it.

    Holds each kernel's step as source lines (``${k}`` for the step's place in a group of
    unrolled steps), not the step or the arrays it was traced with (the cache keeps these
    objects); a kernel is generated and compiled per unroll the launches ask for. The
    backward step is traced with the forward one when gradients are enabled.
    """

    def __init__(
        self,
        steps: dict[str, tuple[list, list]],
        nl: int,
        outputs: tuple[int, Callable],
        out_dtypes: list,
        saved: tuple[bool, list],
        interpret: bool,
        stops: int | None = None,
    ) -> None:
        self.steps, self.nl, self.interpret = steps, nl, interpret
        self.stops = stops  # the state leaf of the lengths (`lengths_leaf`), or None
        # Characters of generated source per step, which bound the unroll (`gpu_launch`).
        self.source = {name: sum(map(len, body)) for name, (body, _) in steps.items()}
        self.ny, self.rebuild = outputs
        self.out_dtypes = out_dtypes
        self.diff_y = [i for i in range(self.ny) if out_dtypes[i].is_floating_point]
        # What the backward kernel reads besides the outputs' gradients: `x` or not, and the
        # values the forward kernel saves, by dtype (`saved_for_backward`).
        self.reads_x, self.saved_dtypes = saved
        self.key: Any = None  # the cache's key, set by `_kernels`
        self.launched: set = set()  # a first launch compiles (on a GPU) and may still fail
        self.sources: list[str] = []  # dropped from linecache with the kernels
        self._built: dict[tuple[str, int], Any] = {}
        self._launches: dict[tuple, tuple[Any, dict]] = {}
        weakref.finalize(self, _drop_sources, self.sources)

    def kernel(self, name: str, unroll: int) -> Any:
        """The kernel `name` ("fwd" or "bwd") with `unroll` steps per loop iteration."""
        found = self._built.get((name, unroll))
        if found is None:
            step, nl = self.steps[name], self.nl
            if name == "fwd":
                source = _forward_source(step, nl, self.ny, unroll)
            else:
                ns, ng = len(self.saved_dtypes), len(self.diff_y)
                stops = self.stops is not None
                source = _backward_source(step, nl, ng, ns, self.reads_x, unroll, stops)
            found = _compile(source, name, self.interpret, self.sources)
            self._built[name, unroll] = found
        return found

    def arrays(self, name: str) -> tuple[int, int]:
        """The arrays the kernel `name` reads and writes per time step (the forward's saved
        values included)."""
        if name == "fwd":
            return 1, self.ny + len(self.saved_dtypes)
        return self.reads_x + len(self.saved_dtypes) + len(self.diff_y), 1

    def launch(self, name: str, x: torch.Tensor) -> tuple[Any, dict]:
        """The kernel `name` for a launch over `x` (``[T, ...]``), and that launch (chosen
        once per sequence shape and device: the last few are remembered)."""
        steps = x.shape[0]
        key = (name, x.numel(), steps, x.element_size(), x.get_device())
        found = self._launches.get(key)
        if found is None:
            if self.interpret:
                launch = INTERPRET_LAUNCH
            else:
                n, sms, source = x.numel() // steps, _sms(x.device), self.source[name]
                loads = self.arrays(name)[0]
                launch = gpu_launch(n, steps, x.element_size(), loads, source, sms)
            if len(self._launches) >= 64:
                self._launches.clear()
            found = self._launches[key] = (self.kernel(name, launch["unroll"]), launch)
        return found


def _sms(device: torch.device) -> int:
    """The SMs of a CUDA device (of the usual card, for kernels built without one)."""
    if device.type != "cuda":
        return int(GPU["sms"])
    return _cuda_sms(device.index)


@functools.cache
def _cuda_sms(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


_counter = itertools.count()


def _compile(source: str, name: str, interpret: bool, filenames: list) -> Any:
    """Define the kernel `name` from `source`, registered with linecache so that Triton (which
    reads a kernel's source) can see it; the name it is registered under is appended to
    `filenames`, to be dropped with the kernels (:func:`_drop_sources`)."""
    import triton
    import triton.language as tl

    filename = f"<dualstep-fused-{next(_counter)}>"
    filenames.append(filename)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"triton": triton, "tl": tl}
    exec(compile(source, filename, "exec"), namespace)
    fn = namespace[name]
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    return triton.jit(fn)


def _at(lines: list[str], k: int) -> list[str]:
    """A step's source lines as step `k` of an unrolled group."""
    return [line.replace("${k}", str(k)) for line in lines]


# Every kernel's first lines: its program's lanes, which are < N, their offsets in `x`.
_LANES = [
    "    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
    "    mask = offs < N",
    "    seq = offs.to(tl.int64) * SN",
]


def _carry(carried: list[str], values: list[str], indent: str) -> list[str]:
    """The carried values (the state, its cotangents) updated to `values` all at once: a
    value that is itself carried (a state passed on to another entry) is read before any
    is overwritten."""
    if not set(carried) & set(values):
        return [f"{indent}{c} = {v}" for c, v in zip(carried, values, strict=True)]
    lines = [f"{indent}{c}_next = {v}" for c, v in zip(carried, values, strict=True)]
    return lines + [f"{indent}{c} = {c}_next" for c in carried]


def _loops(steps: Callable[[int, str], list[str]], unroll: int, count: str = "T") -> list[str]:
    """The time loop over `count` steps: `unroll` steps per iteration, then the remaining
    ones one by one."""
    lines = [f"    for _ in range(0, {count} // {unroll}):", *steps(unroll, "        ")]
    if unroll > 1:
        lines += [f"    for _ in range(0, {count} % {unroll}):", *steps(1, "        ")]
    return lines


def _forward_source(step: tuple[list, list], nl: int, ny: int, unroll: int) -> str:
    """Forwards over time: each loop iteration issues the loads of `unroll` steps before
    computing the first of them. Each array is walked by one pointer per lane, advanced a
    step at a time: no per-step address stays live across the group of steps. `x` and the
    outputs are read and written in place at strides ST (step to step) and SN (element to
    element): ``[T, N]`` in time-first layout (SN = 1), its transpose time-last (ST = 1).
    The step's results past the outputs and the new state are the values saved for the
    backward kernel (with SAVE), each ``[T, N]``."""
    body, results = step
    ns = len(results) - ny - nl
    s_in = [f"s{i}_ptr" for i in range(nl)]
    y_out = [f"y{i}_ptr" for i in range(ny)]
    s_out = [f"f{i}_ptr" for i in range(nl)]
    saved = [f"saved{j}_ptr" for j in range(ns)]
    params = ["x_ptr", *s_in, *y_out, *s_out, *saved, "T", "N", "ST", "SN"]
    lines = [
        f"def fwd({', '.join([*params, 'SAVE: tl.constexpr', 'BLOCK: tl.constexpr'])}):",
        *_LANES,
        *(f"    s{i} = tl.load(s{i}_ptr + offs, mask=mask)" for i in range(nl)),
        *(f"    {a}_p = {a}_ptr + seq" for a in ["x", *(f"y{j}" for j in range(ny))]),
        *(f"    saved{j}_p = saved{j}_ptr + offs" for j in range(ns)),
    ]

    def steps(count: int, indent: str) -> list[str]:
        out: list[str] = []
        for k in range(count):
            out += [f"{indent}x_{k} = tl.load(x_p, mask=mask)", f"{indent}x_p += ST"]
        for k in range(count):
            out += [indent + line for line in _at(body, k)]
            named = _at(results, k)
            out += [f"{indent}if SAVE:"] if ns else []
            for j in range(ns):
                out += [f"{indent}    tl.store(saved{j}_p, {named[ny + nl + j]}, mask=mask)"]
                out += [f"{indent}    saved{j}_p += N"]
            for j in range(ny):
                out += [f"{indent}tl.store(y{j}_p, {named[j]}, mask=mask)"]
                out += [f"{indent}y{j}_p += ST"]
            out += _carry([f"s{i}" for i in range(nl)], named[ny : ny + nl], indent)
        return out

    lines += _loops(steps, unroll)
    lines += [f"    tl.store(f{i}_ptr + offs, s{i}, mask=mask)" for i in range(nl)]
    return "\n".join(lines) + "\n"


def _backward_source(
    step: tuple[list, list],
    nl: int,
    ng: int,
    ns: int,
    reads_x: bool,
    unroll: int,
    stops: bool = False,
) -> str:
    """Backwards over time from the last step: each loop iteration issues the loads of
    `unroll` steps (t, t-1, ...) before computing the first of them, the arrays walked as
    in the forward kernel (the gradients of `x` and of the outputs at `x`'s strides, from
    SEQ_LAST, the offset of its last step; the `ns` saved values from LAST). `x` is read
    only where the step's gradient needs it (`reads_x`). With `stops` (a step that stops
    each element at its length, :func:`lengths_leaf`), each block starts at the last step of
    its longest element, ``starts_ptr[block]`` (:func:`block_starts`): after that step the state's
    gradients pass through and `x`'s are zero, stored without computing a step."""
    body, results = step
    params = ["x_ptr", *(f"saved{j}_ptr" for j in range(ns)), *(f"gy{j}_ptr" for j in range(ng))]
    params += [f"gf{i}_ptr" for i in range(nl)] + ["gx_ptr"]
    params += [f"g0_{i}_ptr" for i in range(nl)] + (["starts_ptr"] if stops else [])
    params += ["T", "N", "ST", "SN", "SEQ_LAST", "LAST", "BLOCK: tl.constexpr"]
    pointers = ["x"] if reads_x else []
    pointers += [*(f"saved{j}" for j in range(ns)), *(f"gy{j}" for j in range(ng))]
    loaded = ["x"] if reads_x else []
    loaded += [*(f"c{j}" for j in range(ns)), *(f"gy{j}" for j in range(ng))]
    sequences = [*pointers[:reads_x], *(f"gy{j}" for j in range(ng)), "gx"]  # at x's strides
    lines = [
        f"def bwd({', '.join(params)}):",
        *_LANES,
        *(f"    {a}_p = {a}_ptr + SEQ_LAST + seq" for a in sequences),
        *(f"    saved{j}_p = saved{j}_ptr + LAST + offs" for j in range(ns)),
        *(f"    g{i} = tl.load(gf{i}_ptr + offs, mask=mask)" for i in range(nl)),
    ]

    def back(a: str, count: str = "") -> str:
        return f"{a}_p -= {count}{'ST' if a in sequences else 'N'}"

    if stops:
        lines += [
            "    START = tl.load(starts_ptr + tl.program_id(0))",
            "    for _ in range(0, T - START):",
            "        tl.store(gx_p, tl.full([BLOCK], 0, tl.float32), mask=mask)",
            "        gx_p -= ST",
            *(f"    {back(a, '(T - START) * ')}" for a in pointers),
        ]

    def steps(count: int, indent: str) -> list[str]:
        out: list[str] = []
        for k in range(count):
            for v, a in zip(loaded, pointers, strict=True):
                out += [f"{indent}{v}_{k} = tl.load({a}_p, mask=mask)", f"{indent}{back(a)}"]
        for k in range(count):
            out += [indent + line for line in _at(body, k)]
            named = _at(results, k)
            out += [f"{indent}tl.store(gx_p, {named[0]}, mask=mask)", f"{indent}gx_p -= ST"]
            out += _carry([f"g{i}" for i in range(nl)], named[1 : 1 + nl], indent)
        return out

    lines += _loops(steps, unroll, "START" if stops else "T")
    lines += [f"    tl.store(g0_{i}_ptr + offs, g{i}, mask=mask)" for i in range(nl)]
    return "\n".join(lines) + "\n"


def _trace(fn: Callable, args: list) -> torch.fx.GraphModule:
    return make_fx(fn, tracing_mode="real")(*args)


def _kernels(x_seq: torch.Tensor, modules: Any, state: Any, leaves: list, single: bool) -> _Kernels:
    """The cached kernels of a call (`single`: its state is one array), built on a miss."""
    interpret = not x_seq.is_cuda
    device = "cuda" if not interpret else x_seq.device.type
    step_shape = tuple(x_seq.shape[1:])
    tensors: list = []
    try:
        key: Any = (
            _key(modules, tensors),
            "array" if single else _key(map_with_path(_is_none, state, ""), []),
            step_shape,
            x_seq.dtype,
            tuple(a.dtype for a in leaves),
            device,
            torch.is_grad_enabled(),
        )
        hash(key)
    except (_Uncacheable, TypeError):
        key = None
    found = _cached(key, tensors)
    cause = None  # the error of a build that failed in this call
    if found is None:
        with _tracing:
            found = _cached(key, tensors)  # built meanwhile by another thread
            if found is None:
                # The kernels, or why they cannot be built: remembered per step structure,
                # so that fused='auto' does not trace a step it cannot fuse at every call.
                try:
                    _check_dtypes(x_seq, leaves)
                    found = _build(x_seq, modules, state, leaves, step_shape, interpret)
                except NotFusable as error:
                    found = error.what or str(error)
                except Exception as error:
                    _raise_if_the_step_fails(x_seq, modules, state, leaves)
                    found, cause = _failure("built", error), error
                if key is not None:
                    if isinstance(found, _Kernels):
                        found.key = key
                    _remember(key, tensors, found)
    if isinstance(found, str):
        raise not_fusable(found, kernel_failed=isinstance(found, _Failure)) from cause
    return found


def _is_none(a: Any, path: str) -> bool:
    return a is None


class _Failure(str):
    """Why a step's kernel failed to build or compile, as remembered in the cache."""


def _failure(what: str, error: Exception) -> _Failure:
    last = str(error).strip().splitlines()[-1:] or [""]
    return _Failure(f"its kernel could not be {what} ({type(error).__name__}: {last[0][:300]})")


def _raise_if_the_step_fails(x_seq: torch.Tensor, modules: Any, state: Any, leaves: list) -> None:
    """Call the step once as the loop would: an error the step raises by itself is its own,
    not the fuser's, and propagates unchanged."""
    flat_step(modules, state, [])(x_seq[0], *leaves)


def _remember(key: Any, tensors: list, found: _Kernels | str) -> None:
    with _lock:
        _cache[key] = ([weakref.ref(t) for t in tensors], found)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def _cached(key: Any, tensors: list) -> _Kernels | str | None:
    """The cached kernels of `key` (or the reason they failed) when the tensors it names are
    still the same objects."""
    entry = None if key is None else _cache.get(key)
    if entry is None:
        return None
    refs, kernels = entry
    if not tensors:  # the common step, which captures none
        return None if refs else kernels
    if len(refs) == len(tensors) and all(r() is t for r, t in zip(refs, tensors, strict=True)):
        return kernels
    return None


def _build(
    x_seq: torch.Tensor,
    modules: Any,
    state: Any,
    leaves: list,
    step_shape: tuple,
    interpret: bool,
) -> _Kernels:
    outputs: list = []
    step = flat_step(modules, state, outputs)
    example = [x_seq[0].detach(), *(a.detach() for a in leaves)]
    with torch.no_grad():
        graph = _Graph(_trace(step, example), step_shape)
    ny = outputs[0][0]
    out_vals = [n.meta.get("val") for n in _output_nodes(graph)]
    check_layout(step_shape, out_vals[:ny], "output")
    nl = len(leaves)
    out_dtypes = [v.dtype for v in out_vals[:ny]]
    saved: tuple[bool, list] = (False, [])
    if torch.is_grad_enabled():
        diff_y = [i for i in range(ny) if out_dtypes[i].is_floating_point]
        steps, saved = _training_steps(step, example, ny, out_dtypes, diff_y)
    else:
        steps = {"fwd": graph.emit(["x_${k}", *(f"s{i}" for i in range(nl))], "v${k}_")}
    kernels = _Kernels(steps, nl, outputs[0], out_dtypes, saved, interpret, lengths_leaf(modules))
    for name in steps:  # this call's kernels, defined here: an error in either is the build's
        kernels.launch(name, x_seq)
    return kernels


def _drop_sources(filenames: list) -> None:
    for filename in filenames:
        linecache.cache.pop(filename, None)


def _output_nodes(graph: _Graph) -> list:
    outs = graph.gm.graph.find_nodes(op="output")[0].args[0]
    return list(outs) if isinstance(outs, (tuple, list)) else [outs]


def _training_steps(
    step: Callable, example: list, ny: int, out_dtypes: list, diff_y: list
) -> tuple[dict, tuple[bool, list]]:
    """Both kernels' steps with gradients, from one graph: the step and its vector-Jacobian
    product, traced through ``torch.autograd.grad`` (so a ``torch.autograd.Function``'s
    backward is what the backward kernel computes), split where the fewest bytes cross
    (:func:`saved_for_backward`). The forward step computes the outputs, the new state and
    the values saved; the backward step the gradients of `x` and of the state from these.
    Also returns whether the backward reads `x`, and the saved values' dtypes."""
    nl = len(example) - 1
    # Distinct tensors: make_fx tells inputs apart by identity.
    example = [a.clone() for a in example]
    shape = example[0].shape
    cotangents = [example[0].new_zeros(shape, dtype=out_dtypes[i]) for i in diff_y]
    cotangents += [torch.zeros_like(a) for a in example[1:]]

    def joint(x: torch.Tensor, *rest: torch.Tensor) -> tuple:
        s, g = rest[:nl], rest[nl:]
        inputs = [x.detach().requires_grad_(), *(a.detach().requires_grad_() for a in s)]
        with torch.enable_grad():
            outs = step(*inputs)
        pairs = [(outs[i], g[k]) for k, i in enumerate(diff_y)]
        pairs += [(outs[ny + i], g[len(diff_y) + i]) for i in range(nl)]
        pairs = [(o, c) for o, c in pairs if o.requires_grad]
        grads = torch.autograd.grad(
            [o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True
        )
        grads = tuple(
            torch.zeros_like(a) if d is None else d for a, d in zip(inputs, grads, strict=True)
        )
        return (*grads, *(o.detach() for o in outs))

    # Functionalized: autograd's own backward formulas work in place (clamp's and maximum's
    # `logical_and_`, `masked_fill_`); the step itself was traced as written (`_build`).
    args = [*example, *cotangents]
    functional = torch.func.functionalize(_trace(joint, args), remove="mutations_and_views")
    graph = _Graph(_trace(functional, args), tuple(shape))
    outs = _output_nodes(graph)
    gradients, primal = outs[: 1 + nl], outs[1 + nl :]
    inputs, cot = graph.inputs[: 1 + nl], graph.inputs[1 + nl :]
    order = [(n, _reads(n)) for n in graph.gm.graph.nodes if n.op != "output"]
    saved = saved_for_backward(
        order, inputs, cot, gradients, lambda n: n.meta["val"].dtype, lambda d: d.itemsize
    )
    x, reads_x = inputs[0], inputs[0] in saved
    saved = [n for n in saved if n is not x]
    forward = {x: "x_${k}", **{a: f"s{i}" for i, a in enumerate(inputs[1:])}}
    backward = {x: "x_${k}"} if reads_x else {}
    backward |= {n: f"c{j}_${{k}}" for j, n in enumerate(saved)}
    backward |= {c: f"gy{j}_${{k}}" for j, c in enumerate(cot[: len(diff_y)])}
    backward |= {c: f"g{i}" for i, c in enumerate(cot[len(diff_y) :])}
    steps = {
        "fwd": graph.emit(forward, "v${k}_", [*primal, *saved]),
        "bwd": graph.emit(backward, "v${k}_", gradients),
    }
    return steps, (reads_x, [n.meta["val"].dtype for n in saved])


@contextlib.contextmanager
def _interpreted() -> Any:
    """Around an interpreted launch: one at a time, and NumPy's warnings off as on a GPU
    (libdevice calls such as the rounded division run as NumPy functions there, and the
    masked lanes past N divide zeros)."""
    with _interpreting, np.errstate(all="ignore"):
        yield


_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def gpu_kernels(x_seq: torch.Tensor, modules: Any, state: Any) -> list[tuple[Any, dict]]:
    """The Triton kernels a fused call would launch on a GPU of ``GPU["sms"]`` SMs (forward,
    and backward when gradients are enabled), each with its launch and the arrays it reads
    and writes per step (``launch["arrays"]``), built here, without one and outside the
    cache: for the GPU compile tests and the launch model
    (``benchmarks.gpu_model``), with `compile_ahead`."""
    leaves = state_leaves(state) if state is not None else []
    kernels = _build(x_seq, modules, state, leaves, tuple(x_seq.shape[1:]), interpret=False)
    built = [(name, *kernels.launch(name, x_seq)) for name in kernels.steps]
    return [(kernel, {**launch, "arrays": kernels.arrays(name)}) for name, kernel, launch in built]


def compile_ahead(kernel: Any, launch: dict, dtype: torch.dtype, cc: int) -> Any:
    """Compile one of `gpu_kernels` for an NVIDIA GPU of compute capability `cc` (80, 90...)
    without a GPU, as its `launch` would (`dtype` for every array): Triton's
    ``CompiledKernel``, whose ``asm`` holds the PTX and the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget

    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for param in kernel.arg_names:
        if param == "starts_ptr":
            signature[param] = "*i32"
        elif param.endswith("_ptr"):
            signature[param] = _POINTER[dtype]
        elif param in ("SAVE", "BLOCK"):
            signature[param] = "constexpr"
            constexprs[param] = True if param == "SAVE" else launch["block"]
        else:
            signature[param] = "i32"
    return triton.compile(
        triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", cc, 32),
        options=_options(launch),
    )


def registers_and_spills(compiled: Any) -> tuple[int, int]:
    """Registers per thread and spill bytes (stores + loads) of a `compile_ahead` kernel, as
    ``ptxas -v`` (the one Triton compiles with, shipped in its wheel) reports them."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    from triton.backends.nvidia.compiler import get_ptxas

    ptx = compiled.asm["ptx"]
    arch = re.search(r"\.target (sm_(\d+)\w*)", ptx)
    assert arch is not None, "a PTX names its target"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        command = [get_ptxas(int(arch.group(2))).path, "-v", f"--gpu-name={arch.group(1)}"]
        out = subprocess.run(
            [*command, str(path), "-o", str(Path(tmp) / "k.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    registers = re.search(r"Used (\d+) registers", out)
    assert registers is not None, out
    return int(registers.group(1)), sum(int(n) for n in re.findall(r"(\d+) bytes spill", out))


def _options(launch: dict) -> dict:
    """A GPU launch's compile options. No fused multiply-add: the loop rounds each product
    and sum separately, and one ulp on the threshold flips a spike."""
    return {"num_warps": launch["num_warps"], "enable_fp_fusion": False}


def _in_place(x: torch.Tensor) -> tuple[int, int] | None:
    """The strides (step to step, element to element) at which a kernel reads `x`
    (``[T, ...]``) in place as ``[T, N]``: laid out time-first or, as the time-last functions
    pass it, time-last (a contiguous ``[..., T]`` with time moved first). None otherwise."""
    steps, n = x.shape[0], x.numel() // x.shape[0]
    if x.is_contiguous():
        return n, 1
    spacing, expected = None, None
    for size, stride in reversed(list(zip(x.shape[1:], x.stride()[1:], strict=True))):
        if size == 1:
            continue
        if expected is not None and stride != expected:
            return None
        spacing = stride if spacing is None else spacing
        expected = stride * size
    strides = (x.stride(0) if steps > 1 else n, 1 if spacing is None else spacing)
    return strides if strides in ((n, 1), (1, steps)) else None


def _like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised array of `x`'s shape and strides (`x` is dense: :func:`_in_place`)."""
    return torch.empty_like(x) if dtype == x.dtype else torch.empty_like(x, dtype=dtype)


def _forward(
    kernels: _Kernels, fwd: Any, launch: dict, x: torch.Tensor, leaves: list, save: bool
) -> tuple[list, list, list]:
    """Launch the forward kernel over `x` (``[T, ...]``, laid out as :func:`_in_place`
    reads it) from the contiguous state arrays `leaves`: the outputs (laid out as `x`), the
    final state and (with `save`) the values saved for the backward kernel, as ``[T, N]``."""
    steps = x.shape[0]
    n = x.numel() // steps
    st, sn = launch["strides"]
    ys = [_like(x, d) for d in kernels.out_dtypes]
    finals = [torch.empty_like(a) for a in leaves]
    saved = [x.new_empty((steps, n), dtype=d) for d in kernels.saved_dtypes] if save else []
    grid = (math.ceil(n / launch["block"]),)
    interpret = kernels.interpret
    options = {} if interpret else _options(launch)
    with _interpreted() if interpret else torch.cuda.device(x.device):
        fwd[grid](
            x,
            *leaves,
            *ys,
            *finals,
            *(saved or [x] * len(kernels.saved_dtypes)),
            steps,
            n,
            st,
            sn,
            SAVE=save,
            BLOCK=launch["block"],
            **options,
        )
    return ys, finals, saved


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, kernels: _Kernels, fwd: Any, launch: dict, x: torch.Tensor, *leaves: Any
    ) -> Any:
        ny = kernels.ny
        save = any(ctx.needs_input_grad[3:])
        ys, finals, saved = _forward(kernels, fwd, launch, x, list(leaves), save)
        if save:
            lengths = [] if kernels.stops is None else [leaves[kernels.stops]]
            ctx.save_for_backward(*([x] if kernels.reads_x else []), *saved, *lengths)
            ctx.layout = (x.shape, x.stride(), x.dtype, x.device, launch["strides"])
            ctx.state_dtypes = [a.dtype for a in leaves]
            ctx.kernels = kernels
        ctx.mark_non_differentiable(*(ys[i] for i in range(ny) if i not in kernels.diff_y))
        return (*ys, *finals)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        kernels = ctx.kernels
        shape, stride, dtype, device, (st, sn) = ctx.layout
        g_x = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        x = ctx.saved_tensors[0] if kernels.reads_x else g_x  # g_x: not read
        saved = ctx.saved_tensors[kernels.reads_x :]
        lengths = [] if kernels.stops is None else [saved[-1]]
        saved = saved[: len(saved) - len(lengths)]
        steps = g_x.shape[0]
        n = g_x.numel() // steps
        interpret = kernels.interpret
        bwd, launch = kernels.launch("bwd", g_x)
        starts = [block_starts(a, launch["block"]) for a in lengths]
        g_ys = [
            _like(g_x, kernels.out_dtypes[i]).zero_()
            if grads[i] is None
            else grads[i]
            if grads[i].stride() == stride
            else _like(g_x, grads[i].dtype).copy_(grads[i])
            for i in kernels.diff_y
        ]
        g_final = [
            g_x.new_zeros(shape[1:], dtype=d) if g is None else g.contiguous()
            for g, d in zip(grads[kernels.ny :], ctx.state_dtypes, strict=True)
        ]
        g_0 = [g_x.new_empty(shape[1:], dtype=d) for d in ctx.state_dtypes]  # as the state
        grid = (math.ceil(n / launch["block"]),)
        options = {} if interpret else _options(launch)
        # The offsets of the last step, computed here in Python ints.
        seq_last, last = (steps - 1) * st, (steps - 1) * n
        with _interpreted() if interpret else torch.cuda.device(device):
            bwd[grid](
                x,
                *saved,
                *g_ys,
                *g_final,
                g_x,
                *g_0,
                *starts,
                steps,
                n,
                st,
                sn,
                seq_last,
                last,
                BLOCK=launch["block"],
                **options,
            )
        return (None, None, None, g_x, *g_0)


def _check_arrays(x_seq: torch.Tensor, leaves: list) -> None:
    """Raise NotFusable unless the state arrays are tensors of one step's shape on `x_seq`'s
    device (checked at every call; dtypes and device types by :func:`_check_dtypes` when a
    step is traced, since the cache's key holds them)."""
    shape, device = x_seq.shape[1:], x_seq.device
    for i, a in enumerate(leaves):
        if not isinstance(a, torch.Tensor):
            raise not_fusable(f"state array {i} is not a floating tensor")
        if a.shape != shape:
            check_layout(tuple(shape), leaves, "state array")
        if a.device != device:
            raise not_fusable(f"state array {i} is on {a.device}, `x_seq` on {device}")


def _check_dtypes(x_seq: torch.Tensor, leaves: list) -> None:
    """Raise NotFusable unless `x_seq` and the state arrays are floating tensors a kernel
    computes right where they are."""
    for i, a in enumerate([x_seq, *leaves]):
        if not a.is_floating_point():
            what = "`x_seq`" if i == 0 else f"state array {i - 1}"
            raise not_fusable(f"{what} is not a floating tensor")
    device = x_seq.device
    if device.type == "cuda":
        return
    if device.type != "cpu":
        raise not_fusable(f"`x_seq` is on {device}; kernels run on CUDA (or interpreted)")
    if any(a.dtype == torch.bfloat16 for a in [x_seq, *leaves]):
        raise not_fusable("Triton's interpreter (CPU) computes bfloat16 wrongly; use a GPU")


def multi_step(x_seq: torch.Tensor, modules: Any, state: Any) -> Any:
    """The fused ``multi_step_forward``: ``y_seq`` or ``(y_seq, final_state)``."""
    single = one_array(state)
    leaves = [state] if single else state_leaves(state) if state is not None else []
    _check_arrays(x_seq, leaves)
    kernels = _kernels(x_seq, modules, state, leaves, single)
    strides = _in_place(x_seq)  # time-first, or time-last read in place; else a copy
    x = x_seq if strides else x_seq.contiguous()
    fwd, launch = kernels.launch("fwd", x)
    launch = {**launch, "strides": strides or (x.numel() // x.shape[0], 1)}
    flat = [a.contiguous() for a in leaves]
    # Triton compiles per launch and per SAVE (gradients wanted or not); without gradients
    # the kernel is launched directly, not through autograd (25 us a call).
    grad = torch.is_grad_enabled() and (x.requires_grad or any(a.requires_grad for a in flat))
    tried = (fwd, *launch.values(), grad)
    try:
        if grad:
            outs = _Fused.apply(kernels, fwd, launch, x, *flat)
        else:
            ys, finals, _ = _forward(kernels, fwd, launch, x, flat, save=False)
            outs = (*ys, *finals)
    except Exception as error:
        if tried in kernels.launched or isinstance(error, NotFusable):
            raise
        # A first launch compiles the kernel on a GPU (and runs it in the interpreter).
        _raise_if_the_step_fails(x_seq, modules, state, leaves)
        reason = _failure("compiled", error)
        if kernels.key is not None:
            with _lock:
                entry = _cache.get(kernels.key)
                if entry is not None and entry[1] is kernels:
                    _cache[kernels.key] = (entry[0], reason)
        raise not_fusable(reason, kernel_failed=True) from error
    kernels.launched.add(tried)
    y_seq = kernels.rebuild(list(outs[: kernels.ny]))
    if state is None:
        return y_seq
    return y_seq, outs[kernels.ny] if single else with_leaves(state, outs[kernels.ny :])


__all__ = ["NotFusable", "multi_step"]

"""Run NIR graphs (the Neuromorphic Intermediate Representation) on torch, JAX and NumPy.

:func:`load` turns a graph (a ``nir.NIRGraph`` or a file written by ``nir.write``) into one step
function and its initial state, written once against the array API, so the graph runs through
the five functions on every backend (and, on JAX, under ``jit``, ``grad`` and ``vmap``)::

    model = dualstep.nir.load("net.nir", dt=1e-4)
    y_seq, final = dualstep.multi_step_forward(x_seq, model.step, state=model.initial_state(x_seq))

Discretisation is forward Euler with the given ``dt``, as NIR's documentation writes each node's
equation: ``LIF``: ``v += dt / tau * (v_leak - v + r * I)``, then ``z = v > v_threshold`` and
``v = v_reset`` where ``z``; ``IF``: ``v += dt * r * I``; ``LI`` and ``I`` (integrator) without
the spike; ``CubaLIF``/``CubaLI``: the synaptic current first (``I += dt / tau_syn * (w_in * S -
I)``), then the membrane from the new current. Exporters that follow another convention are
read with `convention` (docs, "NIR graphs").

Needs the ``nir`` package: ``pip install 'dualstep[nir]'``.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math
import os
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from ._dispatch import dtype_name, kind_of

__all__ = ["CONVENTIONS", "Model", "NIRFileError", "UnsupportedNode", "load"]

# How a neuron fires and resets, by the exporter whose graphs follow it.
CONVENTIONS = {
    # NIR's documentation: z = v > v_threshold, then v = v_reset where z.
    "nir": {"inclusive": False, "subtract": False},
    # SpikingJelly fires at v >= v_threshold (a Heaviside with H(0) = 1), then resets the same.
    "spikingjelly": {"inclusive": True, "subtract": False},
    # snnTorch (Leaky, default reset "subtract"): v_threshold is subtracted one step late, where
    # the previous step's membrane was above it; z = v > v_threshold; no reset to v_reset.
    "snntorch": {"inclusive": False, "subtract": True},
}
"""How a graph's neurons fire and reset, by `convention=` name (docs, "NIR graphs")."""


class UnsupportedNode(NotImplementedError):
    """The graph holds a node type (or a form of one) that dualstep cannot run.

    Examples
    --------
    >>> import nir
    >>> import numpy as np
    >>> from dualstep.nir import load
    >>> graph = nir.NIRGraph.from_list(nir.Delay(delay=np.ones(2)))  # input -> delay -> output
    >>> load(graph, dt=1e-3)
    Traceback (most recent call last):
        ...
    dualstep.nir.UnsupportedNode: node 'delay' is a Delay, which dualstep.nir cannot run; ...
    """


class NIRFileError(ValueError):
    """A file that cannot be read as a NIR graph: missing, not HDF5, truncated or damaged.

    The message names the file and what is wrong; the error from reading it is chained
    (``__cause__``).

    Examples
    --------
    >>> from dualstep.nir import NIRFileError, load
    >>> load("missing.nir", dt=1e-3)
    Traceback (most recent call last):
        ...
    dualstep.nir.NIRFileError: cannot read 'missing.nir' as a NIR graph: no such file
    >>> issubclass(NIRFileError, ValueError)
    True
    """


def _read(nir: Any, path: str, type_check: bool) -> Any:
    if not os.path.isfile(path):
        why = "it is a directory" if os.path.isdir(path) else "no such file"
        raise NIRFileError(f"cannot read {path!r} as a NIR graph: {why}")
    try:
        return nir.read(path, type_check=type_check)
    except ImportError:
        raise
    except Exception as error:  # h5py and nir raise many kinds for a damaged file
        raise NIRFileError(
            f"cannot read {path!r} as a NIR graph: {type(error).__name__}: {error}"
        ) from error


def _nir() -> Any:
    try:
        import nir
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "dualstep.nir needs the nir package: pip install 'dualstep[nir]'"
        ) from error
    return nir


# NumPy parameters already converted for torch or NumPy, by the parameter's id, with a weak
# reference that tells a live parameter from a new one at a reused id. The step runs once per
# time step: without this every step would copy every weight (to the GPU, on CUDA).
_converted: dict[int, tuple[Any, dict]] = {}


def _forget(key: int, _: Any, table: dict = _converted) -> None:
    # `table` bound here: at interpreter exit the module's globals may already be gone.
    table.pop(key, None)


def _like(p: np.ndarray, x: Any) -> Any:
    """NumPy parameter `p` as an array of `x`'s kind, dtype and device."""
    kind = kind_of(x)
    if kind == "jax":  # traced once per program: JAX keeps the constant
        import jax.numpy as jnp

        return jnp.asarray(p, dtype=x.dtype)
    if kind != "torch" and p.dtype == x.dtype:
        return p  # already what NumPy needs: caching `p` itself would keep it alive forever
    device = getattr(x, "device", None)
    entry = _converted.get(id(p))
    if entry is None or entry[0]() is not p:
        entry = (weakref.ref(p, functools.partial(_forget, id(p))), {})
        _converted[id(p)] = entry
    key = (kind, x.dtype, device)
    value = entry[1].get(key)
    if value is None:
        if kind == "torch":
            import torch

            # A copy: a tensor sharing `p`'s memory would keep `p` alive through the cache.
            value = torch.tensor(p, dtype=x.dtype, device=device)
        else:
            value = np.asarray(p, dtype=x.dtype)
        entry[1][key] = value
    return value


def _declared_shape(node: Any, port: str) -> tuple[int, ...] | None:
    """The shape of a node's input or output (without the batch) as the graph declares it, or
    None where it declares none (a graph read with ``type_check=False`` may not)."""
    types_ = getattr(node, f"{port}_type", None) or {}
    shape = types_.get(port, next(iter(types_.values()), None))
    a = None if shape is None else np.asarray(shape)
    if a is None or a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        return None
    return tuple(int(n) for n in a)


def _port_shape(node: Any, name: str, port: str) -> tuple[int, ...]:
    """:func:`_declared_shape`, which this node must declare."""
    shape = _declared_shape(node, port)
    if shape is None:
        types_ = getattr(node, f"{port}_type", None) or {}
        raise UnsupportedNode(
            f"node {name!r} ({type(node).__name__}) has no {port} shape (its {port}_type is "
            f"{types_!r}); write the graph with its types (nir's type inference), or give "
            "the node its shape"
        )
    return shape


def _fire(v: Any, threshold: Any, inclusive: bool) -> Any:
    xp = array_namespace(v)
    return xp.astype(_crossed(v, threshold, inclusive), v.dtype)


def _crossed(v: Any, threshold: Any, inclusive: bool) -> Any:
    return v >= threshold if inclusive else v > threshold


def _pair(value: Any, n: int) -> tuple:
    a = np.atleast_1d(np.asarray(value)).astype(int).tolist()
    return tuple(a * n if len(a) == 1 else a)


@dataclasses.dataclass
class _Node:
    """One node: ``apply(x, state) -> (y, state)`` and the zeros of its state (by the shapes
    of its state arrays, or a subgraph's whole state)."""

    name: str
    kind: str
    apply: Callable[[Any, Any], tuple[Any, Any]]
    state_shapes: dict[str, tuple]
    sub: Model | None = None  # a NIRGraph node: the subgraph, run as one step

    @property
    def stateful(self) -> bool:
        return bool(self.state_shapes) or (self.sub is not None and self.sub.stateful)

    def zeros(self, zeros: Callable[[tuple], Any]) -> dict:
        if self.sub is not None:
            return self.sub.zeros(zeros)
        return {key: zeros(shape) for key, shape in self.state_shapes.items()}


_NEEDS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "IF": ("r", "v_threshold", "v_reset"),
    "LI": ("tau", "r", "v_leak"),
    "I": ("r",),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
}


def _neuron(node: Any, kind: str, dt: float, convention: dict, name: str) -> _Node:
    p = {k: np.asarray(v, dtype=np.float64) for k, v in vars(node).items() if _is_param(v)}
    for tau in ("tau", "tau_syn", "tau_mem"):
        if tau in p and not (np.all(np.isfinite(p[tau])) and np.all(p[tau] > 0)):
            raise ValueError(
                f"node {name!r} ({kind}): `{tau}` must be finite and positive everywhere; got "
                f"{p[tau].min() if p[tau].size else p[tau]!r} at least once"
            )
    missing = [k for k in _NEEDS[kind] if k not in p]
    if missing:
        why = " (nir before 1.0.6 has no v_reset: pip install 'nir>=1.0.6')"
        raise UnsupportedNode(
            f"node {name!r} ({kind}) has no {', '.join(missing)}"
            + (why if "v_reset" in missing else "")
        )
    # The Euler factors, once: each step then converts the same arrays (cached by `_like`).
    for tau in ("tau", "tau_syn", "tau_mem"):
        if tau in p:
            p[f"dt/{tau}"] = dt / p[tau]
    if "r" in p:
        p["dt*r"] = dt * p["r"]
    shape = _port_shape(node, name, "output")
    inclusive = convention["inclusive"]

    def get(key: str, x: Any) -> Any:
        return _like(p[key], x)

    def fire_and_reset(v_before: Any, v: Any, x: Any) -> tuple:
        # Resets are selects, not `z * v_reset + (1 - z) * v`: with an infinite membrane the
        # product would be 0 * inf = NaN where the equation says v_reset.
        xp = array_namespace(v)
        threshold = get("v_threshold", x)
        if convention["subtract"]:
            v = xp.where(_crossed(v_before, threshold, inclusive), v - threshold, v)
            return _fire(v, threshold, inclusive), v
        crossed = _crossed(v, threshold, inclusive)
        return xp.astype(crossed, v.dtype), xp.where(crossed, get("v_reset", x), v)

    def leak(x: Any, v: Any, drive: Any, tau: str) -> Any:
        return v + (get("v_leak", x) - v + get("r", x) * drive) * get(f"dt/{tau}", x)

    def lif(x: Any, s: Any) -> tuple:
        z, v = fire_and_reset(s["v"], leak(x, s["v"], x, "tau"), x)
        return z, {"v": v}

    def if_(x: Any, s: Any) -> tuple:
        z, v = fire_and_reset(s["v"], s["v"] + get("dt*r", x) * x, x)
        return z, {"v": v}

    def li(x: Any, s: Any) -> tuple:
        v = leak(x, s["v"], x, "tau")
        return v, {"v": v}

    def integrator(x: Any, s: Any) -> tuple:
        v = s["v"] + get("dt*r", x) * x
        return v, {"v": v}

    def cuba(x: Any, s: Any) -> tuple:
        # The synaptic current first, then the membrane driven by the new current.
        i = s["i"] + (get("w_in", x) * x - s["i"]) * get("dt/tau_syn", x)
        v = leak(x, s["v"], i, "tau_mem")
        if kind == "CubaLI":
            return v, {"i": i, "v": v}
        z, v = fire_and_reset(s["v"], v, x)
        return z, {"i": i, "v": v}

    apply = {"LIF": lif, "IF": if_, "LI": li, "I": integrator, "CubaLIF": cuba, "CubaLI": cuba}
    keys = ("i", "v") if kind.startswith("Cuba") else ("v",)
    return _Node(name, kind, apply[kind], dict.fromkeys(keys, shape))


def _is_param(v: Any) -> bool:
    return isinstance(v, (np.ndarray, float, int)) and not isinstance(v, bool)


def _stateless(name: str, kind: str, fn: Callable[[Any], Any]) -> _Node:
    return _Node(name, kind, lambda x, s: (fn(x), s), {})


def _dense(node: Any, kind: str, name: str) -> _Node:
    if kind == "Scale":
        scale = np.asarray(node.scale)
        return _stateless(name, kind, lambda x: x * _like(scale, x))
    weight_t = np.ascontiguousarray(np.asarray(node.weight).T)
    if weight_t.ndim != 2:
        raise UnsupportedNode(f"node {name!r}: {kind} with a weight of {weight_t.ndim} dimensions")
    bias = np.asarray(node.bias) if kind == "Affine" else None

    def fn(x: Any) -> Any:
        y = x @ _like(weight_t, x)
        return y if bias is None else y + _like(bias, x)

    return _stateless(name, kind, fn)


def _flatten(node: Any, name: str) -> _Node:
    # NIR's dimensions leave out the batch: dimension d of a node is d + 1 of the array.
    in_shape = _port_shape(node, name, "input")
    start = int(node.start_dim) % len(in_shape)
    end = int(node.end_dim) % len(in_shape)

    def fn(x: Any) -> Any:
        xp = array_namespace(x)
        shape = (*x.shape[: start + 1], -1, *x.shape[end + 2 :])
        return xp.reshape(x, shape)

    return _stateless(name, "Flatten", fn)


def _conv_node(node: Any, kind: str, name: str) -> _Node:
    dims = 1 if kind == "Conv1d" else 2
    weight = np.asarray(node.weight)
    bias = np.asarray(node.bias) if node.bias is not None else None
    stride, dilation = _pair(node.stride, dims), _pair(node.dilation, dims)
    padding = node.padding
    groups = int(node.groups)  # nir.read gives NumPy integers; a plain int is static everywhere
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * dims
        elif any(s_ != 1 for s_ in stride):
            raise UnsupportedNode(
                f"node {name!r} ({kind}) has padding='same' with stride {stride}; dualstep.nir "
                "runs 'same' at stride 1 only (write the padding as numbers)"
            )
        else:  # "same", for stride 1: the total padding split as torch does (more at the end)
            total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
            padding = tuple((t // 2, t - t // 2) for t in total)
    else:
        padding = _pair(padding, dims)
    pads = tuple(p if isinstance(p, tuple) else (p, p) for p in padding)

    if bias is not None:
        bias = bias.reshape((-1,) + (1,) * dims)  # over the channels of [B, C, ...]

    def fn(x: Any) -> Any:
        y = _conv(x, _like(weight, x), stride, pads, dilation, groups)
        return y if bias is None else y + _like(bias, x)

    return _stateless(name, kind, fn)


def _pool_node(node: Any, kind: str, name: str) -> _Node:
    kernel, stride = _pair(node.kernel_size, 2), _pair(node.stride, 2)
    pads = tuple((p, p) for p in _pair(node.padding, 2))
    channels = _port_shape(node, name, "input")[0]
    scale = 1.0 / math.prod(kernel) if kind == "AvgPool2d" else 1.0
    # On NumPy a pool is a grouped convolution with a kernel of ones (average: padding counted).
    window = np.ones((channels, 1, *kernel)) * scale

    def fn(x: Any) -> Any:
        kind_ = kind_of(x)
        if kind_ == "jax":  # a window sum, channels last (as the convolution, for XLA on CPU)
            import jax.numpy as jnp
            from jax import lax

            y = lax.reduce_window(
                jnp.transpose(x, (0, 2, 3, 1)),
                0.0,
                lax.add,
                (1, *kernel, 1),
                (1, *stride, 1),
                ((0, 0), *pads, (0, 0)),
            )
            y = jnp.transpose(y, (0, 3, 1, 2))
            return y if scale == 1.0 else y * scale
        if kind_ == "torch":
            import torch.nn.functional as F

            flat = [p for pair in reversed(pads) for p in pair]
            y = F.avg_pool2d(F.pad(x, flat), kernel, stride, divisor_override=1)
            return y if scale == 1.0 else y * scale
        return _conv(x, _like(window, x), stride, pads, (1, 1), channels)

    return _stateless(name, kind, fn)


def _conv(x: Any, w: Any, stride: tuple, pads: tuple, dilation: tuple, groups: int) -> Any:
    """An N-d cross-correlation, channels first (``[B, C, ...]``), as torch's ``convNd``."""
    kind = kind_of(x)
    dims = len(stride)
    if kind == "torch":
        import torch.nn.functional as F

        flat = [p for pair in reversed(pads) for p in pair]
        x = F.pad(x, flat)
        conv = F.conv1d if dims == 1 else F.conv2d
        return conv(x, w, stride=stride, dilation=dilation, groups=groups)
    if kind == "jax":
        import jax.numpy as jnp
        from jax import lax

        # Channels last, transposed in and out: XLA on CPU runs a channels-first convolution
        # inside a scan (a while loop) about 5x slower than the same one channels last.
        spec = ("NHC", "HIO", "NHC") if dims == 1 else ("NHWC", "HWIO", "NHWC")
        to_last, to_first = (0, *range(2, 2 + dims), 1), (0, 1 + dims, *range(1, 1 + dims))
        y = lax.conv_general_dilated(
            jnp.transpose(x, to_last),
            jnp.transpose(w, (*range(2, 2 + dims), 1, 0)),
            window_strides=stride,
            padding=list(pads),
            rhs_dilation=dilation,
            dimension_numbers=spec,
            feature_group_count=groups,
            precision=lax.Precision.HIGHEST,
        )
        return jnp.transpose(y, to_first)
    return _conv_numpy(x, w, stride, pads, dilation, groups)


def _conv_numpy(
    x: np.ndarray, w: np.ndarray, stride: tuple, pads: tuple, dilation: tuple, groups: int
) -> np.ndarray:
    dims = len(stride)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    kernel = w.shape[2:]
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + dims)))
    index: tuple[Any, ...] = (Ellipsis, *(slice(None, None, d) for d in dilation))
    windows = windows[index]  # [B, C, *out_full, *kernel]
    strided: tuple[Any, ...] = (slice(None), slice(None), *(slice(None, None, s) for s in stride))
    windows = windows[strided]
    c_in, c_out = x.shape[1] // groups, w.shape[0] // groups
    outs = []
    letters = "hw"[:dims]
    for g in range(groups):
        xs = windows[:, g * c_in : (g + 1) * c_in]
        ws = w[g * c_out : (g + 1) * c_out]
        spec = f"bc{letters}{letters.upper()},oc{letters.upper()}->bo{letters}"
        outs.append(np.einsum(spec, xs, ws))
    return np.concatenate(outs, axis=1).astype(x.dtype, copy=False)


_NEURONS = ("LIF", "IF", "LI", "I", "CubaLIF", "CubaLI")


def _build_node(
    name: str, node: Any, dt: float, convention: dict, prefix: str, convention_name: str
) -> _Node:
    kind = type(node).__name__
    if kind in ("Input", "Output"):
        return _stateless(name, kind, lambda x: x)
    if kind in _NEURONS:
        return _neuron(node, kind, dt, convention, name)
    if kind in ("Affine", "Linear", "Scale"):
        return _dense(node, kind, name)
    if kind == "Flatten":
        return _flatten(node, name)
    if kind in ("Conv1d", "Conv2d"):
        return _conv_node(node, kind, name)
    if kind in ("SumPool2d", "AvgPool2d"):
        return _pool_node(node, kind, name)
    if kind == "NIRGraph":  # a subgraph (a recurrent layer, as Spyx and snnTorch write them)
        sub = _model(node, dt, convention_name, f"{prefix}{name}.")
        if len(sub.output_names) != 1:
            raise UnsupportedNode(
                f"node {prefix + name!r} is a subgraph with {len(sub.output_names)} Output "
                "nodes; a subgraph node must have one"
            )
        # A subgraph without state gets None from its parent, and runs from an empty dict.
        return _Node(name, kind, lambda x, s: sub.step(x, {} if s is None else s), {}, sub)
    if kind == "Threshold":
        threshold = np.asarray(node.threshold)
        inclusive = convention["inclusive"]
        return _stateless(name, kind, lambda x: _fire(x, _like(threshold, x), inclusive))
    raise UnsupportedNode(
        f"node {name!r} is a {kind}, which dualstep.nir cannot run; supported: Input, Output, "
        "Affine, Linear, Scale, Flatten, Conv1d, Conv2d, SumPool2d, AvgPool2d, Threshold, "
        "IF, LIF, LI, I (integrator), CubaLIF, CubaLI, NIRGraph (a subgraph)"
    )


def _node_name(endpoint: str, nodes: dict) -> str:
    """An edge endpoint's node: ``"lif"``, or ``"lif.output"`` for a port of it."""
    if endpoint in nodes:
        return endpoint
    head = endpoint.split(".")[0]
    if head in nodes:
        return head
    raise UnsupportedNode(f"edge endpoint {endpoint!r} names no node of the graph")


@dataclasses.dataclass
class Model:
    """A NIR graph as one step function: ``step(x, state) -> (y, state)``.

    `state` is a dict: one entry per stateful node (``{"v": ...}``, ``{"i": ..., "v": ...}``)
    and, for recurrent edges, the previous step's output of each node that feeds back. Build
    it with :meth:`initial_state`. ``y`` is the output node's value, or a tuple for several
    output nodes (by name).

    Examples
    --------
    >>> import nir
    >>> import numpy as np
    >>> from dualstep import multi_step_forward
    >>> from dualstep.nir import load
    >>> lif = nir.LIF(tau=np.full(2, 2e-3), r=np.ones(2), v_leak=np.zeros(2),
    ...               v_threshold=np.ones(2), v_reset=np.zeros(2))
    >>> graph = nir.NIRGraph.from_list(lif)  # input -> lif -> output
    >>> model = load(graph, dt=1e-3)  # dt / tau = 0.5
    >>> x_seq = np.full((4, 1, 2), 1.5)  # [T, B, N]
    >>> y_seq, final = multi_step_forward(x_seq, model.step, state=model.initial_state(x_seq))
    >>> y_seq[:, 0, 0].tolist(), list(final)  # the spikes; the state by node name
    ([0.0, 1.0, 0.0, 1.0], ['lif'])
    """

    nodes: dict[str, _Node]
    order: list[str]
    inputs: dict[str, list[str]]  # node -> its sources this step
    recurrent: dict[str, list[str]]  # node -> its sources from the previous step
    input_name: str
    input_shape: tuple  # one example's, without the batch
    output_names: list[str]
    output_shapes: dict[str, tuple]
    dt: float
    convention: str

    def step(self, x: Any, state: Any) -> tuple[Any, Any]:
        _check_floating(x, "x")
        values: dict[str, Any] = {}
        new_state: dict[str, Any] = {}
        for name in self.order:
            node = self.nodes[name]
            if name == self.input_name:
                value = x
            else:
                parts = [values[src] for src in self.inputs[name]]
                parts += [state["recurrent"][src] for src in self.recurrent.get(name, ())]
                value = parts[0]
                for part in parts[1:]:
                    value = value + part
            y, s = node.apply(value, state.get(name))
            values[name] = y
            if node.stateful:
                new_state[name] = s
        if "recurrent" in state:
            new_state["recurrent"] = {src: values[src] for src in state["recurrent"]}
        outs = tuple(values[name] for name in self.output_names)
        return (outs[0] if len(outs) == 1 else outs), new_state

    def initial_state(self, x_seq: Any) -> dict:
        """Zeros for every stateful node, for `x_seq` (``[T, batch, ...]``): its kind of
        array, dtype, device and batch size. A subgraph node's entry is the subgraph's state."""
        _check_floating(x_seq, "x_seq")
        xp = array_namespace(x_seq)
        batch = x_seq.shape[1]

        def zeros(shape: tuple) -> Any:
            return xp.zeros((batch, *shape), dtype=x_seq.dtype, device=_device(x_seq))

        return self.zeros(zeros)

    @property
    def stateful(self) -> bool:
        return bool(self.recurrent) or any(node.stateful for node in self.nodes.values())

    def zeros(self, zeros: Callable[[tuple], Any]) -> dict:
        """The initial state, each array made by ``zeros(shape)``."""
        state: dict[str, Any] = {
            name: node.zeros(zeros) for name, node in self.nodes.items() if node.stateful
        }
        feeding = sorted({src for sources in self.recurrent.values() for src in sources})
        if feeding:
            state["recurrent"] = {src: zeros(self.output_shapes[src]) for src in feeding}
        return state


_FLOATING = frozenset({"float16", "bfloat16", "float32", "float64"})


def _check_floating(x: Any, argument: str) -> None:
    """Graphs compute in floating point: an integer or bool input would cast the weights to
    its dtype (a Linear of 0.5 on ones gave 0)."""
    name = dtype_name(x)
    if name not in _FLOATING:
        raise TypeError(
            f"`{argument}` of a NIR graph must be a floating array (float16, bfloat16, float32 "
            f"or float64); got {name}: convert it first, e.g. x.astype('float32')"
        )


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def load(source: Any, *, dt: float, convention: str = "nir", type_check: bool = True) -> Model:
    """Read a NIR graph into a :class:`Model`: one step function and its initial state.

    Parameters
    ----------
    source : nir.NIRGraph, str or os.PathLike
        A graph, or a file written by ``nir.write``.
    dt : float
        The time step, in the unit of the graph's time constants (seconds for SpikingJelly's
        and snnTorch's exporters, which take it as an argument too).
    convention : {"nir", "spikingjelly", "snntorch"}
        How neurons fire and reset: ``"nir"`` as NIR documents it (``v > v_threshold``, then
        ``v_reset``); ``"spikingjelly"`` as SpikingJelly computes (``v >= v_threshold``);
        ``"snntorch"`` as snnTorch's ``Leaky`` does (``v_threshold`` subtracted one step
        late), which its exporter writes as a reset to ``v_reset`` all the same.
    type_check : bool, default True
        For a file: passed to ``nir.read``, which checks that the types of connected nodes
        agree (some exporters write graphs that fail that check but run).

    Returns
    -------
    Model
        ``model.step(x, state) -> (y, state)`` for the five functions, and
        ``model.initial_state(x_seq)``.

    Raises
    ------
    UnsupportedNode
        A node type (or form) that cannot run, named with the node; an edge to no node.
    NIRFileError
        A file that is missing or cannot be read as a NIR graph (a ValueError).
    ValueError
        `dt` is not a finite positive number; an unknown `convention`; a graph without exactly
        one ``Input`` node or without an ``Output`` node.
    ImportError
        The ``nir`` package is not installed.

    Examples
    --------
    >>> import numpy as np, nir
    >>> import dualstep as ds
    >>> from dualstep.nir import load
    >>> graph = nir.NIRGraph.from_list(nir.Linear(weight=np.ones((2, 3))), nir.IF(
    ...     r=np.ones(2), v_threshold=np.ones(2), v_reset=np.zeros(2)))
    >>> model = load(graph, dt=1.0)
    >>> x = np.full((3, 1, 3), 0.25)
    >>> y, final = ds.multi_step_forward(x, model.step, state=model.initial_state(x))
    >>> y[:, 0, 0].tolist()  # v = 0.75, 1.5 (fires, resets), 0.75
    [0.0, 1.0, 0.0]
    """
    nir = _nir()
    real = (int, float, np.integer, np.floating)
    if isinstance(dt, bool) or not isinstance(dt, real) or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"`dt` must be a finite positive number; got {dt!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"`convention` must be one of {sorted(CONVENTIONS)}; got {convention!r}")
    if not isinstance(type_check, bool):
        raise TypeError(f"`type_check` must be a bool; got {type(type_check).__qualname__}")
    if isinstance(source, (str, os.PathLike)):
        graph = _read(nir, os.fspath(source), type_check)
    else:
        graph = source
    return _model(graph, float(dt), convention)


def _model(graph: Any, dt: float, convention: str, prefix: str = "") -> Model:
    """The :class:`Model` of a graph (or of a subgraph, whose node names get `prefix` in
    errors)."""
    rules = CONVENTIONS[convention]
    nodes = {
        name: _build_node(name, node, dt, rules, prefix, convention)
        for name, node in graph.nodes.items()
    }
    shapes = {name: _port_shape(node, name, "output") for name, node in graph.nodes.items()}
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    inputs_ = [name for name, kind in kinds.items() if kind == "Input"]
    outputs = sorted(name for name, kind in kinds.items() if kind == "Output")
    if len(inputs_) != 1 or not outputs:
        where = f" (subgraph {prefix[:-1]!r})" if prefix else ""
        raise ValueError(
            f"a graph{where} needs one Input node and at least one Output node; got inputs "
            f"{inputs_} and outputs {outputs}"
        )
    edges = [(_node_name(a, nodes), _node_name(b, nodes)) for a, b in graph.edges]
    into_input = [edge for edge in edges if edge[1] == inputs_[0]]
    if into_input:
        raise UnsupportedNode(
            f"edge {into_input[0]} goes into the Input node {prefix + inputs_[0]!r}, whose value "
            "is the sequence's input alone; feed the node it goes to instead"
        )
    for a, b in edges:  # what nir's type check does, for graphs built or read without it
        want = _declared_shape(graph.nodes[b], "input")
        if want is not None and want != shapes[a]:
            raise UnsupportedNode(
                f"edge {(prefix + a, prefix + b)} joins an output of shape {list(shapes[a])} "
                f"to an input of shape {list(want)}; the arrays would broadcast silently"
            )
    order, forward, back = _order(inputs_[0], list(nodes), edges)
    return Model(
        nodes,
        order,
        forward,
        back,
        inputs_[0],
        shapes[inputs_[0]],
        outputs,
        shapes,
        dt,
        convention,
    )


def _order(start: str, names: list[str], edges: list) -> tuple[list, dict, dict]:
    """Nodes in the order one step computes them, each node's sources computed before it this
    step, and its sources from the previous step: the rule of the docs ("NIR graphs").

    The order depends on the graph alone, not on the order of its node or edge lists: the
    cycles (strongly connected components) run in dependency order, the nodes of each by their
    distance from the input (the fewest edges, ties by name). An edge into a node of its own
    cycle that has already run this step (a self-loop too) feeds the previous step's output.
    Sources are listed by name, so several inputs to a node are summed in one order too."""
    successors: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        successors[a].append(b)
    distance = {start: 0}
    frontier = [start]
    for n in frontier:  # breadth first, so the list grows as it is read
        for m in successors[n]:
            if m not in distance:
                distance[m] = distance[n] + 1
                frontier.append(m)
    unreached = [n for n in names if n not in distance]
    if unreached:
        raise UnsupportedNode(f"nodes {unreached} cannot be reached from the input")
    cycle = _cycles(names, successors)
    rank = {n: (distance[n], n) for n in names}
    members: dict[str, list[str]] = {}
    for n in sorted(names, key=rank.__getitem__):
        members.setdefault(cycle[n], []).append(n)
    needs: dict[str, set[str]] = {c: set() for c in members}  # the cycles each one reads
    for a, b in edges:
        if cycle[a] != cycle[b]:
            needs[cycle[b]].add(cycle[a])
    # The cycles in dependency order (Kahn's), the nearest to the input first among those ready.
    ready = [(rank[first[0]], c) for c, first in members.items() if not needs[c]]
    order: list[str] = []
    while ready:
        _, c = heapq.heappop(ready)
        order += members[c]
        for d in {cycle[b] for n in members[c] for b in successors[n]} - {c}:
            needs[d].discard(c)
            if not needs[d]:
                heapq.heappush(ready, (rank[members[d][0]], d))
    position = {n: i for i, n in enumerate(order)}
    forward: dict[str, list[str]] = {n: [] for n in names}
    back: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        if position[a] < position[b]:
            forward[b].append(a)
        else:
            back.setdefault(b, []).append(a)
    return order, forward, back


def _cycles(names: list[str], successors: dict[str, list[str]]) -> dict[str, str]:
    """Each node's strongly connected component, named by one of its nodes (Kosaraju's two
    depth-first passes, without recursion: a chain of thousands of nodes is a valid graph)."""
    finished: list[str] = []
    seen: set[str] = set()
    for root in names:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(successors[root]))]
        while stack:
            n, rest = stack[-1]
            m = next(rest, None)
            if m is None:
                stack.pop()
                finished.append(n)
            elif m not in seen:
                seen.add(m)
                stack.append((m, iter(successors[m])))
    predecessors: dict[str, list[str]] = {n: [] for n in names}
    for a, bs in successors.items():
        for b in bs:
            predecessors[b].append(a)
    component: dict[str, str] = {}
    for root in reversed(finished):
        if root in component:
            continue
        component[root] = root
        todo = [root]
        while todo:
            for m in predecessors[todo.pop()]:
                if m not in component:
                    component[m] = root
                    todo.append(m)
    return component

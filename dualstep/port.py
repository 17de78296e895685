"""A torch or SpikingJelly network as a pure JAX step, in one call.

:func:`to_jax` reads a network's layers and gives back ``(step, params, state)``:

- ``step(params, x, state) -> (y, state)``: pure JAX, jit-able and differentiable, doing what
  the network's ``forward`` does on the same input. A network in SpikingJelly's multi-step mode
  takes ``[T, B, ...]`` and its neurons loop over time inside (``multi_step_forward``); a
  single-step network takes one step ``[B, ...]`` and runs over a sequence through
  ``multi_step_forward(x_seq, functools.partial(step, params), state=state)``.
- ``params``: the trainable parameters, a dict of JAX arrays keyed by their torch names
  (``"0.weight"``), what ``jax.grad`` differentiates.
- ``state``: the initial state, a dict keyed by module path: each neuron's (its
  :meth:`~dualstep.neurons.Neuron.initial_state`, SpikingJelly's), and in training mode batch
  norm's running statistics and dropout's random key or mask.

Buffers of modules in evaluation mode (batch norm's running statistics) are constants of the
step. ``step.weights(params, state)`` gives every parameter and buffer by name, the dict that
:func:`dualstep.interop.module_from_jax` copies back into the network.

Each module is ported as its class does its ``forward``, in the mode it is in (``training``,
SpikingJelly's ``step_mode``): supported are :data:`SUPPORTED`. A module of any other type
(a subclass included: its ``forward`` may differ), or an option the port does not have, raises
:class:`UnsupportedModule` naming the module and its path in the network.

Examples
--------
>>> import jax, jax.numpy as jnp, torch
>>> from dualstep import port
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
>>> step, params, state = port.to_jax(net, torch.zeros(4, 3))
>>> sorted(params), state
(['0.bias', '0.weight'], {})
>>> y, _ = step(params, jnp.ones((4, 3)), state)
>>> bool(jnp.allclose(y, net(torch.ones(4, 3)).detach().numpy(), atol=1e-6))
True
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from typing import Any

from . import neurons, surrogate
from ._api import multi_step_forward

__all__ = ["SUPPORTED", "PortedStep", "UnsupportedModule", "to_jax"]

# An op: ``op(params, x, state) -> (y, state)``, params and state the whole network's dicts.
Op = Callable[[dict, Any, dict], tuple[Any, dict]]


class UnsupportedModule(TypeError):
    """A module, or an option of one, that :func:`to_jax` cannot port.

    Examples
    --------
    >>> import torch
    >>> from dualstep import port
    >>> port.to_jax(torch.nn.LSTM(3, 2), torch.zeros(1, 3))
    Traceback (most recent call last):
        ...
    dualstep.port.UnsupportedModule: cannot port torch.nn.modules.rnn.LSTM at the network ...
    """


SUPPORTED = (
    "torch.nn: Sequential, Linear, Conv1d, Conv2d, BatchNorm1d, BatchNorm2d, MaxPool2d, "
    "AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, ReLU, ReLU6, LeakyReLU, ELU, "
    "GELU, SiLU, Sigmoid, Tanh, Hardtanh, Softplus, Softmax, LogSoftmax; "
    "spikingjelly.activation_based.layer: the same layers in either step mode, Dropout, "
    "SeqToANNContainer, MultiStepContainer; spikingjelly neurons: IFNode, LIFNode, "
    "ParametricLIFNode, QIFNode, EIFNode, IzhikevichNode, CUBALIFNode, NonSpikingLIFNode"
)
"""What `to_jax` ports, as its errors name it."""


class PortedStep:
    """The step :func:`to_jax` returns: ``step(params, x, state) -> (y, state)``.

    ``buffers`` holds the network's buffers as JAX arrays (constants of the step where their
    module is in evaluation mode); :meth:`weights` gives parameters and buffers by name for
    :func:`dualstep.interop.module_from_jax`.

    Examples
    --------
    >>> import torch
    >>> from dualstep import port
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    >>> step, params, state = port.to_jax(net, torch.zeros(1, 3))
    >>> step.layers  # path and type of each ported module
    [('0', 'Linear'), ('1', 'ReLU')]
    >>> list(step.weights(params, state))  # by torch name, for interop.module_from_jax
    ['0.weight', '0.bias']
    """

    def __init__(self, op: Op, buffers: dict, builder: _Builder, description: str) -> None:
        self.op = op
        self.buffers = buffers
        self._carried = builder.carried  # buffer name -> (state key, entry) training updates
        # What each state entry is ("neuron" with its variables, "batch_norm", "dropout key",
        # "dropout mask"), and every ported module's path and class, in the network's order.
        self.entries: dict[str, tuple[str, tuple[str, ...]]] = builder.entries
        self.layers: list[tuple[str, str]] = builder.layers
        self._resets = builder.resets
        self._description = description

    def reset(self, state: dict) -> dict:
        """`state` as SpikingJelly's ``functional.reset_net`` leaves a network: each neuron
        back to its initial state, SpikingJelly's dropout with a new mask; batch norm's
        running statistics and torch dropout's key carried on."""
        return {k: self._resets[k](v) if k in self._resets else v for k, v in state.items()}

    def __call__(self, params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        return self.op(params, x, state)

    def weights(self, params: dict, state: dict) -> dict:
        """Every parameter and buffer by torch name: `params`, and the buffers, updated from
        `state` where training carries them (batch norm's running statistics)."""
        out = {**params, **self.buffers}
        for name, (key, entry) in self._carried.items():
            out[name] = state[key][entry]
        return out

    def __repr__(self) -> str:
        return f"PortedStep({self._description})"

    @staticmethod
    @contextlib.contextmanager
    def tapping() -> Iterator[dict[str, list]]:
        """Within it, eager calls of ported steps record each module's output: a dict from
        module path to the outputs of its calls, in order (values computed inside a JAX
        transformation, a ``MultiStepContainer``'s loop for one, are not recorded)."""
        taps: dict[str, list] = {}
        token = _TAPS.set(taps)
        try:
            yield taps
        finally:
            _TAPS.reset(token)


_TAPS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("taps", default=None)


def _tap(path: str, y: Any) -> None:
    taps = _TAPS.get()
    if taps is not None:
        import jax

        if not any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(y)):
            taps.setdefault(path, []).append(y)


def to_jax(module: Any, example_input: Any, *, key: Any = None) -> tuple[PortedStep, dict, dict]:
    """Port a torch / SpikingJelly network to ``(step, params, state)`` (see the module's
    docstring).

    Parameters
    ----------
    module : torch.nn.Module
        The network, in the mode to port (``module.train()`` or ``.eval()``; SpikingJelly's
        ``step_mode``); its parameters and buffers are copied, so later training of it does
        not change the port.
    example_input : torch.Tensor or jax.Array
        An input of the shape and dtype the step will take (``[T, B, ...]`` for a multi-step
        network), from which the state's shapes are found; nothing is computed on it.
    key : jax.Array, optional
        The random key of dropout in training mode (``jax.random.key``); required then.

    Returns
    -------
    tuple
        ``(step, params, state)``.

    Raises
    ------
    UnsupportedModule
        A module or option the port does not cover, named with its path; a TypeError.
    ValueError
        Training-mode dropout without `key`, or an `example_input` the network rejects.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import torch
    >>> from dualstep import port
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    >>> step, params, state = port.to_jax(net, torch.zeros(1, 3))  # [B, N]: single-step
    >>> sorted(params), state
    (['0.bias', '0.weight'], {})
    >>> y, state = step(params, jnp.ones((1, 3)), state)
    >>> y.shape
    (1, 2)
    """
    import jax

    from .interop import module_to_jax
    from .interop import to_jax as arrays_to_jax

    params = module_to_jax(module, which="parameters")
    buffers = module_to_jax(module, which="buffers")
    builder = _Builder(key, buffers)
    op = builder.lower(module, "")
    x = arrays_to_jax(example_input.detach() if hasattr(example_input, "detach") else example_input)
    # Shapes only: each stateful op records how to make its entry from its input's shape.
    initial = _Initial()
    jax.eval_shape(lambda p, x: op(p, x, initial)[0], params, x)
    state = {k: make() for k, make in {**builder.makers, **initial.makers}.items()}
    description = f"{type(module).__name__}, {len(params)} parameters, state {sorted(state)}"
    for path, (kind, _) in builder.entries.items():
        if kind == "neuron":
            builder.resets[path] = lambda entry, initial=state[path]: initial
    return PortedStep(op, buffers, builder, description), params, state


class _Initial(dict):
    """The state of the shape-finding pass: no entries; each stateful op puts into `makers`
    how to make its initial entry (ops refer to nothing else, so the compile cache can key
    them)."""

    def __init__(self) -> None:
        super().__init__()
        self.makers: dict[str, Callable[[], Any]] = {}


def _modules() -> tuple[Any, Any, Any]:
    """torch.nn, and SpikingJelly's layer and neuron modules (None where not installed)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("spikingjelly") is None:
        return torch.nn, None, None
    from spikingjelly.activation_based import layer, neuron

    return torch.nn, layer, neuron


def _pair(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


class _Builder:
    """Lowers modules to ops, and collects what the state needs."""

    def __init__(self, key: Any, buffers: dict) -> None:
        self.key = key
        self.buffers = buffers
        self.carried: dict = {}  # buffer name -> (state key, entry)
        self.makers: dict = {}  # state key -> () -> initial value, for entries known unrun
        self.dropouts = 0
        self.entries: dict = {}
        self.layers: list = []
        self.resets: dict = {}  # state key -> (entry -> its value after a reset)
        self.nn, self.layer, self.neuron = _modules()
        self.neuron_classes = set() if self.neuron is None else _neuron_classes(self.neuron)

    def fail(self, module: Any, path: str, why: str = "") -> UnsupportedModule:
        cls = type(module)
        where = f"`{path}`" if path else "the network itself"
        reason = f" ({why})" if why else ""
        return UnsupportedModule(
            f"cannot port {cls.__module__}.{cls.__qualname__} at {where}{reason}; "
            f"supported: {SUPPORTED}"
        )

    def lower(self, module: Any, path: str) -> Op:
        nn, layer, neuron = self.nn, self.layer, self.neuron
        cls = type(module)
        if path:
            self.layers.append((path, cls.__name__))
        if cls in self.neuron_classes:
            return self.neuron_op(module, path)
        if neuron is not None and cls is neuron.NonSpikingLIFNode:
            return self.readout_op(module, path)
        if layer is not None and cls in (layer.SeqToANNContainer, layer.MultiStepContainer):
            inner = self.sequence(list(module.named_children()), path)
            if cls is layer.SeqToANNContainer:
                return _over_time_and_batch(inner)
            return _looped(inner, path)
        if cls is nn.Sequential:
            return self.sequence(list(module.named_children()), path)
        if layer is not None and cls is layer.Dropout:
            return self.sj_dropout(module, path)
        if cls.__name__ in _SJ_LAYERS and getattr(layer, cls.__name__, None) is cls:
            op = self.stateless(module, path, getattr(nn, cls.__name__))
            if cls.__name__ == "Linear" or module.step_mode == "s":
                return op
            return _over_time_and_batch(op)
        return self.stateless(module, path, cls)

    def sequence(self, children: list, path: str) -> Op:
        paths = [_join(path, name) for name, _ in children]
        ops = [self.lower(child, p) for (_, child), p in zip(children, paths, strict=True)]
        kinds = [type(child).__name__ for _, child in children]

        def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
            for each, where, kind in zip(ops, paths, kinds, strict=True):
                if isinstance(state, _Initial):
                    x, state = _fitted(each, params, x, state, where, kind)
                else:
                    x, state = each(params, x, state)
                _tap(where, x)
            return x, state

        return op

    def stateless(self, module: Any, path: str, cls: type) -> Op:
        nn = self.nn
        if cls is nn.Linear:
            return _linear(path, module.bias is not None)
        if cls in (nn.Conv1d, nn.Conv2d):
            return self.conv(module, path)
        if cls in (nn.BatchNorm1d, nn.BatchNorm2d):
            return self.batch_norm(module, path)
        if cls is nn.MaxPool2d:
            if module.ceil_mode or module.return_indices:
                raise self.fail(module, path, "ceil_mode and return_indices are not supported")
            return _max_pool(
                _pair(module.kernel_size, 2),
                _pair(module.stride or module.kernel_size, 2),
                _pair(module.padding, 2),
                _pair(module.dilation, 2),
            )
        if cls is nn.AvgPool2d:
            if module.ceil_mode:
                raise self.fail(module, path, "ceil_mode is not supported")
            return _avg_pool(
                _pair(module.kernel_size, 2),
                _pair(module.stride or module.kernel_size, 2),
                _pair(module.padding, 2),
                module.count_include_pad,
                module.divisor_override,
            )
        if cls is nn.AdaptiveAvgPool2d:
            return _adaptive_avg_pool(_pair(module.output_size, 2))
        if cls is nn.Flatten:
            return _flatten(module.start_dim, module.end_dim)
        if cls is nn.Dropout:
            return self.dropout(module, path)
        activation = _activation(module, cls, nn)
        if activation is None:
            raise self.fail(module, path)
        return _elementwise(activation)

    def conv(self, module: Any, path: str) -> Op:
        import jax

        if module.padding_mode != "zeros":
            raise self.fail(module, path, f"padding_mode={module.padding_mode!r}")
        n = len(module.kernel_size)
        padding = module.padding
        if padding == "valid":
            pads = [(0, 0)] * n
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
            pads = [(t // 2, t - t // 2) for t in total]
        else:
            pads = [(p, p) for p in _pair(padding, n)]
        spatial = "HW"[:n] if n == 2 else "H"
        numbers = (f"NC{spatial}", f"OI{spatial}", f"NC{spatial}")
        stride, dilation, groups = tuple(module.stride), tuple(module.dilation), module.groups
        has_bias = module.bias is not None

        def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
            unbatched = x.ndim == n + 1
            xb = x[None] if unbatched else x
            y = jax.lax.conv_general_dilated(
                xb,
                params[_join(path, "weight")],
                window_strides=stride,
                padding=pads,
                rhs_dilation=dilation,
                dimension_numbers=numbers,
                feature_group_count=groups,
            )
            if has_bias:
                y = y + params[_join(path, "bias")].reshape((1, -1) + (1,) * n)
            return (y[0] if unbatched else y), state

        return op

    def batch_norm(self, module: Any, path: str) -> Op:
        import jax.numpy as jnp

        eps, momentum, affine = module.eps, module.momentum, module.affine
        track = module.track_running_stats
        training = module.training
        names = [_join(path, n) for n in ("running_mean", "running_var", "num_batches_tracked")]
        running: list[Any] = [self.buffers[n] for n in names] if track else [None] * 3
        if training and track:
            entries = dict(zip(("mean", "var", "count"), running, strict=True))
            for name, entry in zip(names, entries, strict=True):
                self.carried[name] = (path, entry)
            self.makers[path] = lambda: entries
            self.entries[path] = ("batch_norm", tuple(entries))

        def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
            axes = (0,) if x.ndim == 2 else tuple(i for i in range(x.ndim) if i != 1)
            shape = [1] * x.ndim
            shape[1] = -1
            batch = training or not track
            mean = jnp.mean(x, axis=axes) if batch else running[0]
            var = jnp.var(x, axis=axes) if batch else running[1]
            y = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)
            if affine:
                w, b = params[_join(path, "weight")], params[_join(path, "bias")]
                y = y * w.reshape(shape) + b.reshape(shape)
            if training and track and not isinstance(state, _Initial):
                old = state[path]
                count = old["count"] + 1
                n = math.prod(x.shape[i] for i in axes)
                factor = 1.0 / count if momentum is None else momentum
                unbiased = var * (n / max(n - 1, 1))
                new = {
                    "mean": (1 - factor) * old["mean"] + factor * mean,
                    "var": (1 - factor) * old["var"] + factor * unbiased,
                    "count": count,
                }
                state = {**state, path: {k: v.astype(old[k].dtype) for k, v in new.items()}}
            return y, state

        return op

    def dropout(self, module: Any, path: str) -> Op:
        import jax

        if not module.training or module.p == 0:
            return _elementwise(lambda x: x)
        p = module.p
        first = self.dropout_key(path)
        self.makers[path] = lambda: first
        self.entries[path] = ("dropout key", ())

        def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
            key, use = jax.random.split(first if isinstance(state, _Initial) else state[path])
            keep = jax.random.bernoulli(use, 1 - p, x.shape)
            y = jax.numpy.where(keep, x / (1 - p), 0)
            if not isinstance(state, _Initial):
                state = {**state, path: key}
            return y.astype(x.dtype), state

        return op

    def sj_dropout(self, module: Any, path: str) -> Op:
        """SpikingJelly's dropout: one mask per sequence, kept across steps until reset."""
        import jax

        if not module.training:
            return _elementwise(lambda x: x)
        p, multi = module.p, module.step_mode == "m"
        key = self.dropout_key(path)
        self.entries[path] = ("dropout mask", ("key", "mask"))

        def draw(key: Any, shape: tuple, dtype: Any) -> dict:
            """A new mask and the key of the next (SpikingJelly draws one at each reset)."""
            key, use = jax.random.split(key)
            keep = jax.random.bernoulli(use, 1 - p, shape)
            return {"key": key, "mask": jax.numpy.where(keep, 1 / (1 - p), 0).astype(dtype)}

        def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
            if isinstance(state, _Initial):
                shape, dtype = (x.shape[1:] if multi else x.shape), x.dtype
                state.makers[path] = lambda: draw(key, shape, dtype)
                return x, state
            return x * state[path]["mask"], state

        self.resets[path] = lambda entry: draw(
            entry["key"], entry["mask"].shape, entry["mask"].dtype
        )
        return op

    def dropout_key(self, path: str) -> Any:
        """The random key of the dropout at `path`: `key` folded with the path's position."""
        import jax

        if self.key is None:
            raise ValueError(
                f"dropout at `{path}` is in training mode: pass `key=jax.random.key(...)` for "
                "its masks, or port the network in eval mode"
            )
        self.dropouts += 1
        return jax.random.fold_in(self.key, self.dropouts)

    def neuron_op(self, module: Any, path: str) -> Op:
        cls = getattr(neurons, _NEURONS[type(module).__name__])
        hyper = {}
        for name in cls.HYPER:
            value = getattr(module, name)
            if name == "surrogate_function":
                value = self.surrogate(value, module, path)
            hyper[name] = value
        learnable = "w" in cls.PARAMETERS
        ours = cls(**hyper) if not learnable else cls(**hyper, w=0.0)
        multi = module.step_mode == "m"
        w_name = _join(path, "w")
        self.entries[path] = ("neuron", cls.STATE)

        def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
            neuron = ours.replace(w=params[w_name]) if learnable else ours
            if isinstance(state, _Initial):
                shape, dtype = (x.shape[1:] if multi else x.shape), x.dtype
                state.makers[path] = lambda: _full_state(ours, shape, dtype)
                s = _zeros_state(ours, shape, dtype)
            else:
                s = state[path]
            if multi:
                y, s = multi_step_forward(x, neuron, state=s)
            else:
                y, s = neuron(x, s)
            if not isinstance(state, _Initial):
                state = {**state, path: s}
            return y, state

        return op

    def readout_op(self, module: Any, path: str) -> Op:
        """SpikingJelly's NonSpikingLIFNode: a multi-step leaky integrator and its decoding."""
        import jax.numpy as jnp

        decodes = {
            "last_mem": lambda v: v[-1],
            "max-mem": lambda v: jnp.max(v, axis=0),
            "mean-mem": lambda v: jnp.mean(v, axis=0),
        }
        if module.decode not in decodes:
            raise self.fail(module, path, f"decode={module.decode!r}; supported: {sorted(decodes)}")
        decode, li = decodes[module.decode], neurons.LI(module.tau)

        def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
            v_seq, _ = multi_step_forward(x, li, state=jnp.zeros(x.shape[1:], x.dtype))
            return decode(v_seq), state

        return op

    def surrogate(self, function: Any, module: Any, path: str) -> surrogate.Surrogate:
        name = type(function).__name__
        ours = getattr(surrogate, name, None)
        sj = "spikingjelly.activation_based.surrogate"
        if ours not in surrogate.SURROGATES or type(function).__module__ != sj:
            raise self.fail(
                module,
                path,
                f"its surrogate {type(function).__qualname__}; ported surrogates: "
                + ", ".join(c.__name__ for c in surrogate.SURROGATES),
            )
        params = {n: getattr(function, n) for n in ours.PARAMS}
        return ours(**params, spiking=function.spiking)


def _fitted(op: Op, params: dict, x: Any, state: dict, path: str, kind: str) -> tuple:
    """`op` in the shape-finding pass, a shape it rejects named with its module's path."""
    shape = tuple(x.shape)
    try:
        return op(params, x, state)
    except (TypeError, ValueError) as error:
        if isinstance(error, UnsupportedModule) or "`example_input`" in str(error):
            raise
        raise ValueError(
            f"`example_input` does not fit the network: {kind} at `{path}` got an input of "
            f"shape {shape} ({error})"
        ) from error


def _neuron_classes(neuron: Any) -> set:
    return {getattr(neuron, name) for name in _NEURONS}


# SpikingJelly's neuron classes and the dualstep neurons they become.
_NEURONS = {
    "IFNode": "IF",
    "LIFNode": "LIF",
    "ParametricLIFNode": "ParametricLIF",
    "QIFNode": "QIF",
    "EIFNode": "EIF",
    "IzhikevichNode": "Izhikevich",
    "CUBALIFNode": "CubaLIF",
}
# SpikingJelly's layer wrappers and the torch layer each computes (per time step and batch
# element in multi-step mode, except Linear, which takes any leading axes as torch's does).
_SJ_LAYERS = frozenset(
    [
        "Linear",
        "Conv1d",
        "Conv2d",
        "BatchNorm1d",
        "BatchNorm2d",
        "MaxPool2d",
        "AvgPool2d",
        "AdaptiveAvgPool2d",
        "Flatten",
    ]
)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _full_state(neuron: neurons.Neuron, shape: tuple, dtype: Any) -> Any:
    import jax.numpy as jnp

    return neuron.initial_state(jnp.zeros((1, *shape), dtype))


def _zeros_state(neuron: neurons.Neuron, shape: tuple, dtype: Any) -> Any:
    import jax.numpy as jnp

    zeros = jnp.zeros(shape, dtype)
    return zeros if neuron.STATE == ("v",) else {name: zeros for name in neuron.STATE}


def _over_time_and_batch(op: Op) -> Op:
    """`op` on ``[T * B, ...]``, as SpikingJelly's multi-step layers and ``SeqToANNContainer``
    run a stateless layer (``seq_to_ann_forward``; batch statistics span ``T * B``)."""

    def flat(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        t, b = x.shape[:2]
        y, state = op(params, x.reshape((t * b, *x.shape[2:])), state)
        return y.reshape((t, b, *y.shape[1:])), state

    return flat


def _looped(op: Op, path: str) -> Op:
    """``MultiStepContainer``: `op` once per time step, the state entries under `path`
    carried through ``multi_step_forward``."""
    prefix = _join(path, "")

    def looped(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        if isinstance(state, _Initial):
            return _over_steps_initial(op, params, x, state)
        mine = {k: v for k, v in state.items() if k.startswith(prefix) or not path}

        def step(x_t: Any, s: dict) -> tuple[Any, dict]:
            return op(params, x_t, s)

        y, mine = multi_step_forward(x, step, state=mine)
        return y, {**state, **mine}

    return looped


def _over_steps_initial(op: Op, params: dict, x: Any, state: dict) -> tuple[Any, dict]:
    """The shape-finding pass of a looped op: one step's shapes, stacked over time."""
    import jax.numpy as jnp

    y, _ = op(params, x[0], state)
    return jnp.broadcast_to(y, (x.shape[0], *y.shape)), state


def _linear(path: str, has_bias: bool) -> Op:
    def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        y = x @ params[_join(path, "weight")].T
        return (y + params[_join(path, "bias")] if has_bias else y), state

    return op


def _elementwise(fn: Callable[[Any], Any]) -> Op:
    def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        return fn(x), state

    return op


def _window(x: Any, init: Any, reducer: Any, kernel: tuple, stride: tuple, pads: tuple) -> Any:
    import jax

    lead = x.ndim - 2
    return jax.lax.reduce_window(
        x,
        init,
        reducer,
        (1,) * lead + kernel,
        (1,) * lead + stride,
        ((0, 0),) * lead + tuple((p, p) for p in pads),
    )


def _max_pool(kernel: tuple, stride: tuple, pads: tuple, dilation: tuple) -> Op:
    import jax

    def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        lead = x.ndim - 2
        y = jax.lax.reduce_window(
            x,
            -jax.numpy.inf,
            jax.lax.max,
            (1,) * lead + kernel,
            (1,) * lead + stride,
            ((0, 0),) * lead + tuple((p, p) for p in pads),
            window_dilation=(1,) * lead + dilation,
        )
        return y, state

    return op


def _avg_pool(
    kernel: tuple, stride: tuple, pads: tuple, include_pad: bool, divisor: int | None
) -> Op:
    import jax
    import jax.numpy as jnp

    def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        total = _window(x, 0.0, jax.lax.add, kernel, stride, pads)
        if divisor is not None:
            return total / divisor, state
        if include_pad:
            return total / math.prod(kernel), state
        ones = jnp.ones(x.shape[-2:], x.dtype)
        count = _window(ones, 0.0, jax.lax.add, kernel, stride, pads)
        return total / count, state

    return op


def _adaptive_avg_pool(size: tuple) -> Op:
    import jax.numpy as jnp

    def pool(x: Any, axis: int, out: int | None) -> Any:
        n = x.shape[axis]
        if out is None or out == n:
            return x
        parts = []
        for i in range(out):
            start, end = (i * n) // out, -((-(i + 1) * n) // out)
            part = jnp.take(x, jnp.arange(start, end), axis=axis)
            parts.append(jnp.mean(part, axis=axis, keepdims=True))
        return jnp.concatenate(parts, axis=axis)

    def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        return pool(pool(x, x.ndim - 2, size[0]), x.ndim - 1, size[1]), state

    return op


def _flatten(start: int, end: int) -> Op:
    def op(params: dict, x: Any, state: dict) -> tuple[Any, dict]:
        s, e = start % x.ndim, end % x.ndim
        shape = (*x.shape[:s], math.prod(x.shape[s : e + 1]), *x.shape[e + 1 :])
        return x.reshape(shape), state

    return op


def _activation(module: Any, cls: type, nn: Any) -> Callable[[Any], Any] | None:
    """The JAX function of an elementwise torch layer, or None."""
    import jax
    import jax.numpy as jnp

    simple = {
        nn.Identity: lambda x: x,
        nn.ReLU: jax.nn.relu,
        nn.ReLU6: lambda x: jnp.clip(x, 0.0, 6.0),
        nn.SiLU: jax.nn.silu,
        nn.Sigmoid: jax.nn.sigmoid,
        nn.Tanh: jnp.tanh,
    }
    if cls in simple:
        return simple[cls]
    if cls is nn.LeakyReLU:
        slope = module.negative_slope
        return lambda x: jax.nn.leaky_relu(x, slope)
    if cls is nn.ELU:
        alpha = module.alpha
        return lambda x: jax.nn.elu(x, alpha)
    if cls is nn.GELU:
        approximate = module.approximate == "tanh"
        return lambda x: jax.nn.gelu(x, approximate=approximate)
    if cls is nn.Hardtanh:
        low, high = module.min_val, module.max_val
        return lambda x: jnp.clip(x, low, high)
    if cls is nn.Softplus:
        beta, threshold = module.beta, module.threshold
        return lambda x: jnp.where(x * beta > threshold, x, jnp.log1p(jnp.exp(beta * x)) / beta)
    if cls in (nn.Softmax, nn.LogSoftmax):
        if module.dim is None:
            return None
        fn, dim = (jax.nn.softmax if cls is nn.Softmax else jax.nn.log_softmax), module.dim
        return lambda x: fn(x, axis=dim)
    return None

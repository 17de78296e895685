"""SpikingJelly's neurons as explicit-state steps, written once for torch, JAX and NumPy.

Each neuron is a small immutable callable holding its hyperparameters under SpikingJelly's names
and defaults (``neurons.LIF(tau=2.0, v_reset=None)``). It is a step ``(x, state) -> (spike,
state)``, so it runs through :func:`dualstep.multi_step_forward` (fused or not) as any step::

    lif = neurons.LIF(tau=2.0)
    spikes, v = multi_step_forward(x_seq, lif, state=lif.initial_state(x_seq))

The state is the membrane voltage ``v`` (an array shaped like one time step of ``x``), or a dict
of such arrays for neurons with more than one variable (:attr:`Neuron.STATE` names them, in
SpikingJelly's order), and :meth:`Neuron.initial_state` gives SpikingJelly's initial values.

On torch a step equals the SpikingJelly neuron in ``step_mode="s"`` bit for bit, spikes,
voltages and gradients (SpikingJelly's operations in SpikingJelly's order, and the surrogate
gradient SpikingJelly's kernels use: :meth:`dualstep.surrogate.Surrogate.fire`); on JAX and
NumPy it agrees within float rounding. Learnable parameters (ParametricLIF's ``w``) are floats
or arrays the neuron holds: a ``torch.nn.Parameter`` trains as any, and under JAX they are
arguments (``neuron.replace(w=w)`` inside the differentiated function; the compile cache passes
them in rather than baking them into a program). A fused kernel captures them as scalars: it
trains through a float or a detached tensor, and refuses a tensor that requires grad.

Examples
--------
>>> import numpy as np
>>> from dualstep import multi_step_forward, neurons
>>> lif = neurons.LIF(tau=2.0)
>>> x_seq = np.full((4, 1), 1.5, np.float32)
>>> spikes, v = multi_step_forward(x_seq, lif, state=lif.initial_state(x_seq))
>>> spikes.ravel().tolist(), v.tolist()
([0.0, 1.0, 0.0, 1.0], [0.0])
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace, device

from .surrogate import Rect, Sigmoid, Surrogate, _kind, _sigmoid


def _detach(x: Any) -> Any:
    """`x` cut from the graph: ``Tensor.detach`` or ``lax.stop_gradient`` (no array-API name)."""
    kind = _kind(x)
    if kind == "torch":
        return x.detach()
    if kind == "jax":
        import jax

        return jax.lax.stop_gradient(x)
    return x


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a real number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value!r}")
    return float(value)


def _above(name: str, value: float, bound: float) -> None:
    if not value > bound:
        raise ValueError(f"`{name}` must be greater than {bound}; got {value!r}")


class Neuron:
    """A spiking neuron step ``(x, state) -> (y, state)`` with SpikingJelly's hyperparameters.

    Subclasses list their hyperparameters in ``HYPER`` (floats, bools, a surrogate: fixed at
    construction), their learnable parameters in ``PARAMETERS`` (floats or arrays) and their
    state variables in ``STATE``. ``v_threshold``, ``v_reset`` (None: soft reset, the threshold
    subtracted after a spike) and ``detach_reset`` (no gradient through the reset) are as in
    SpikingJelly's ``BaseNode``.

    Examples
    --------
    >>> from dualstep import neurons
    >>> lif = neurons.LIF(tau=2.0)
    >>> lif.replace(tau=3.0).tau, lif.tau  # immutable: replace makes another
    (3.0, 2.0)
    >>> isinstance(lif, neurons.Neuron), neurons.CubaLIF.STATE, neurons.ParametricLIF.PARAMETERS
    (True, ('v', 'c'), ('w',))
    """

    HYPER: tuple[str, ...] = ("v_threshold", "v_reset", "surrogate_function", "detach_reset")
    PARAMETERS: tuple[str, ...] = ()
    STATE: tuple[str, ...] = ("v",)
    v_threshold: float
    v_reset: float | None
    surrogate_function: Surrogate
    detach_reset: bool

    def __init__(self, **values: Any) -> None:
        for name, value in values.items():
            if name == "v_reset" and value is None:
                pass
            elif name == "surrogate_function":
                if not isinstance(value, Surrogate):
                    raise TypeError(
                        "`surrogate_function` must be a dualstep.surrogate.Surrogate (such as "
                        f"surrogate.Sigmoid()); got {value!r}"
                    )
            elif name in ("detach_reset", "decay_input"):
                if not isinstance(value, bool):
                    raise TypeError(f"`{name}` must be a bool; got {value!r}")
            elif name not in self.PARAMETERS or isinstance(value, (bool, int, float)):
                value = _real(name, value)
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__} is immutable: make a new one with .replace({name}=...)"
        )

    def replace(self, **changes: Any) -> Neuron:
        """A copy with some hyperparameters or parameters changed (``lif.replace(tau=3.0)``,
        ``plif.replace(w=w)`` inside a function JAX differentiates)."""
        names = (*self.HYPER, *self.PARAMETERS)
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no hyperparameter or parameter {unknown[0]!r}; it "
                f"has {', '.join(names)}"
            )
        values = {name: getattr(self, name) for name in names}
        values.update(changes)
        return type(self)(**values)

    @property
    def params(self) -> dict[str, Any]:
        """The learnable parameters by name (empty for a neuron without any)."""
        return {name: getattr(self, name) for name in self.PARAMETERS}

    def __repr__(self) -> str:
        values = ", ".join(f"{n}={getattr(self, n)!r}" for n in (*self.HYPER, *self.PARAMETERS))
        return f"{type(self).__name__}({values})"

    def _initial(self) -> dict[str, float]:
        """Each state variable's initial value (SpikingJelly's: ``v_reset``, or 0 for a soft
        reset)."""
        return {"v": 0.0 if self.v_reset is None else self.v_reset}

    def initial_state(self, x_seq: Any, *, t_last: bool = False) -> Any:
        """The state before the first step of `x_seq` (``[T, B, ...]``; ``[B, ..., T]`` with
        ``t_last=True``): each variable full of its initial value, shaped like one time step,
        with `x_seq`'s dtype and device."""
        _kind(x_seq)  # a TypeError for what is not an array
        if x_seq.ndim < 1:
            raise ValueError(f"`x_seq` must have a time axis; got shape {tuple(x_seq.shape)}")
        xp = array_namespace(x_seq)
        shape = tuple(x_seq.shape[:-1] if t_last else x_seq.shape[1:])
        state = {
            name: xp.full(shape, value, dtype=x_seq.dtype, device=device(x_seq))
            for name, value in self._initial().items()
        }
        return state["v"] if self.STATE == ("v",) else state

    def _spike(self, h: Any) -> Any:
        """The spike at charged voltage `h`, with SpikingJelly's kernel gradient."""
        return self.surrogate_function.fire(h - self.v_threshold)

    def _reset(self, h: Any, spike: Any, threshold: Any = None) -> Any:
        """The voltage after a spike: ``v_reset`` (hard) or ``h`` less the threshold (soft)."""
        s = _detach(spike) if self.detach_reset else spike
        if self.v_reset is None:
            return h - s * (self.v_threshold if threshold is None else threshold)
        return s * self.v_reset + (1.0 - s) * h

    def _fire(self, h: Any) -> tuple[Any, Any]:
        spike = self._spike(h)
        return spike, self._reset(h, spike)

    def __call__(self, x: Any, state: Any) -> tuple[Any, Any]:
        raise NotImplementedError


# SpikingJelly's default surrogates (immutable, so one instance serves every neuron).
_SIGMOID, _RECT = Sigmoid(), Rect()


class IF(Neuron):
    """Integrate-and-fire (SpikingJelly's ``IFNode``): ``h = v + x``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.IF()
    >>> x_seq = np.full((6, 1), 0.6, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate_function: Surrogate = _SIGMOID,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
        )

    def __call__(self, x: Any, v: Any) -> tuple[Any, Any]:
        return self._fire(v + x)


class LIF(Neuron):
    """Leaky integrate-and-fire (``LIFNode``), with ``r = v_reset`` (0 for a soft reset):
    ``h = v + (x - (v - r)) / tau``, or ``h = v - (v - r) / tau + x`` when not
    `decay_input`. `tau` must exceed 1.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.LIF(tau=2.0, v_reset=None)
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """

    HYPER = ("tau", "decay_input", *Neuron.HYPER)
    tau: float
    decay_input: bool

    def __init__(
        self,
        tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate_function: Surrogate = _SIGMOID,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(
            tau=tau,
            decay_input=decay_input,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
        )
        _above("tau", self.tau, 1.0)

    def __call__(self, x: Any, v: Any) -> tuple[Any, Any]:
        r = 0.0 if self.v_reset is None else self.v_reset
        if self.decay_input:
            return self._fire(v + (x - (v - r)) / self.tau)
        return self._fire(v - (v - r) / self.tau + x)


class ParametricLIF(Neuron):
    """LIF with a learnable time constant (``ParametricLIFNode``): ``1 / tau = sigmoid(w)``,
    ``h = v + (x - (v - r)) * sigmoid(w)`` (or ``v - (v - r) * sigmoid(w) + x``).

    `w` starts at ``-log(init_tau - 1)``, as in SpikingJelly, unless given: a float, or a
    0-d array (a ``torch.nn.Parameter`` to train on torch, a traced array under JAX). A float
    `w` is taken in `x`'s dtype at each call.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.ParametricLIF(init_tau=2.0)
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """

    HYPER = ("decay_input", *Neuron.HYPER)
    PARAMETERS = ("w",)
    decay_input: bool
    w: Any

    def __init__(
        self,
        init_tau: float = 2.0,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate_function: Surrogate = _SIGMOID,
        detach_reset: bool = False,
        *,
        w: Any = None,
    ) -> None:
        if w is None:
            init_tau = _real("init_tau", init_tau)
            _above("init_tau", init_tau, 1.0)
            w = -math.log(init_tau - 1.0)
        super().__init__(
            decay_input=decay_input,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
            w=w,
        )

    def __call__(self, x: Any, v: Any) -> tuple[Any, Any]:
        xp = array_namespace(x)
        w = xp.asarray(self.w, dtype=x.dtype) if isinstance(self.w, float) else self.w
        q = _sigmoid(xp, _kind(x), w)
        if _kind(x) != "torch" and q.dtype != x.dtype:
            q = xp.astype(q, x.dtype)  # torch keeps x's dtype against a 0-d operand; JAX widens
        r = 0.0 if self.v_reset is None else self.v_reset
        if self.decay_input:
            return self._fire(v + (x - (v - r)) * q)
        return self._fire(v - (v - r) * q + x)


def _check_nonlinear(neuron: Neuron) -> None:
    """SpikingJelly's conditions on a QIF or EIF neuron."""
    _above("tau", neuron.tau, 1.0)  # type: ignore[attr-defined]
    if neuron.v_reset is not None:
        if not neuron.v_threshold > neuron.v_reset:
            raise ValueError(
                f"`v_threshold` must exceed `v_reset`; got {neuron.v_threshold} and "
                f"{neuron.v_reset}"
            )
        if not neuron.v_rest >= neuron.v_reset:  # type: ignore[attr-defined]
            raise ValueError(
                f"`v_rest` must be at least `v_reset`; got {neuron.v_rest} and "  # type: ignore[attr-defined]
                f"{neuron.v_reset}"
            )


class QIF(Neuron):
    """Quadratic integrate-and-fire (``QIFNode``):
    ``h = v + (x + a0 (v - v_rest) (v - v_c)) / tau``. Defaults ``v_reset=-0.1`` (the initial
    voltage too), `tau` above 1, `a0` positive.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.QIF()
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """

    HYPER = ("tau", "v_c", "a0", "v_rest", *Neuron.HYPER)
    tau: float
    v_c: float
    a0: float
    v_rest: float

    def __init__(
        self,
        tau: float = 2.0,
        v_c: float = 0.8,
        a0: float = 1.0,
        v_threshold: float = 1.0,
        v_rest: float = 0.0,
        v_reset: float | None = -0.1,
        surrogate_function: Surrogate = _SIGMOID,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(
            tau=tau,
            v_c=v_c,
            a0=a0,
            v_rest=v_rest,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
        )
        _above("a0", self.a0, 0.0)
        _check_nonlinear(self)

    def __call__(self, x: Any, v: Any) -> tuple[Any, Any]:
        return self._fire(v + (x + self.a0 * (v - self.v_rest) * (v - self.v_c)) / self.tau)


class EIF(Neuron):
    """Exponential integrate-and-fire (``EIFNode``):
    ``h = v + (x + v_rest - v + delta_T exp((v - theta_rh) / delta_T)) / tau``. Defaults
    ``v_reset=-0.1``, `tau` above 1, `delta_T` positive.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.EIF()
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """

    HYPER = ("tau", "delta_T", "theta_rh", "v_rest", *Neuron.HYPER)
    tau: float
    delta_T: float
    theta_rh: float
    v_rest: float

    def __init__(
        self,
        tau: float = 2.0,
        delta_T: float = 1.0,
        theta_rh: float = 0.8,
        v_threshold: float = 1.0,
        v_rest: float = 0.0,
        v_reset: float | None = -0.1,
        surrogate_function: Surrogate = _SIGMOID,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(
            tau=tau,
            delta_T=delta_T,
            theta_rh=theta_rh,
            v_rest=v_rest,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
        )
        _above("delta_T", self.delta_T, 0.0)
        _check_nonlinear(self)

    def __call__(self, x: Any, v: Any) -> tuple[Any, Any]:
        xp = array_namespace(x)
        d = self.delta_T
        h = v + (x + self.v_rest - v + d * xp.exp((v - self.theta_rh) / d)) / self.tau
        return self._fire(h)


class Izhikevich(Neuron):
    """Izhikevich's neuron as SpikingJelly writes it (``IzhikevichNode``): state ``v`` and the
    adaptation ``w``;
    ``h = v + (x + a0 (v - v_rest) (v - v_c) - w) / tau``, then after the spike ``s``
    ``w = w + (a (h - v_rest) - w) / tau_w + b s``. `w` starts at `w_rest`.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.Izhikevich()
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    >>> sorted(state)
    ['v', 'w']
    """

    HYPER = ("tau", "v_c", "a0", "v_rest", "w_rest", "tau_w", "a", "b", *Neuron.HYPER)
    STATE = ("v", "w")
    tau: float
    v_c: float
    a0: float
    v_rest: float
    w_rest: float
    tau_w: float
    a: float
    b: float

    def __init__(
        self,
        tau: float = 2.0,
        v_c: float = 0.8,
        a0: float = 1.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        v_rest: float = -0.1,
        w_rest: float = 0.0,
        tau_w: float = 2.0,
        a: float = 0.0,
        b: float = 0.0,
        surrogate_function: Surrogate = _SIGMOID,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(
            tau=tau,
            v_c=v_c,
            a0=a0,
            v_rest=v_rest,
            w_rest=w_rest,
            tau_w=tau_w,
            a=a,
            b=b,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
        )
        _above("tau", self.tau, 1.0)
        _above("a0", self.a0, 0.0)

    def _initial(self) -> dict[str, float]:
        return {**super()._initial(), "w": self.w_rest}

    def __call__(self, x: Any, state: dict) -> tuple[Any, dict]:
        v, w = state["v"], state["w"]
        h = v + (x + self.a0 * (v - self.v_rest) * (v - self.v_c) - w) / self.tau
        spike = self._spike(h)
        w = w + (self.a * (h - self.v_rest) - w) / self.tau_w + self.b * spike
        return spike, {"v": self._reset(h, spike), "w": w}


class CubaLIF(Neuron):
    """Current-based LIF (``CUBALIFNode``, NIR's CubaLIF): state ``v`` and the synaptic
    current ``c``; ``c = c c_decay + x``, ``h = v v_decay + c``. SpikingJelly's defaults
    (``v_threshold=0.5``, a :class:`~dualstep.surrogate.Rect` surrogate), and its gradient:
    this neuron has no SpikingJelly kernel, so the spike's gradient is the surrogate's own.

    NIR's CubaLIF with ``v_leak = 0``, as :mod:`dualstep.nir` reads it, is this neuron with
    ``c_decay = 1 - dt / tau_syn``, ``v_decay = 1 - dt / tau_mem`` and the input scaled by
    ``(dt / tau_syn) (dt / tau_mem) r w_in`` (``c`` is then ``(dt / tau_mem) r I``); NIR fires
    at ``v > v_threshold``, SpikingJelly and this neuron at ``>=``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.CubaLIF()
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    >>> sorted(state)
    ['c', 'v']
    """

    HYPER = ("c_decay", "v_decay", *Neuron.HYPER)
    STATE = ("v", "c")
    c_decay: float
    v_decay: float

    def __init__(
        self,
        c_decay: float = 0.5,
        v_decay: float = 0.75,
        v_threshold: float = 0.5,
        v_reset: float | None = 0.0,
        surrogate_function: Surrogate = _RECT,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(
            c_decay=c_decay,
            v_decay=v_decay,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
        )

    def _initial(self) -> dict[str, float]:
        return {**super()._initial(), "c": 0.0}

    def _spike(self, h: Any) -> Any:
        return self.surrogate_function(h - self.v_threshold)

    def __call__(self, x: Any, state: dict) -> tuple[Any, dict]:
        c = state["c"] * self.c_decay + x
        spike, v = self._fire(state["v"] * self.v_decay + c)
        return spike, {"v": v, "c": c}


class AdaptiveLIF(Neuron):
    """LIF with an adaptive threshold (Bellec et al. 2018's LSNN neuron; SpikingJelly has
    none): state ``v`` and the adaptation ``a``. The voltage charges as :class:`LIF`'s; the
    neuron fires at ``v_threshold + beta a``, a soft reset subtracts that threshold, and
    ``a = a + (s - a) / tau_adapt`` after the spike ``s``. `tau` and `tau_adapt` exceed 1.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.AdaptiveLIF()
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().tolist()
    [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    >>> sorted(state)
    ['a', 'v']
    """

    HYPER = ("tau", "tau_adapt", "beta", "decay_input", *Neuron.HYPER)
    STATE = ("v", "a")
    tau: float
    tau_adapt: float
    beta: float
    decay_input: bool

    def __init__(
        self,
        tau: float = 2.0,
        tau_adapt: float = 20.0,
        beta: float = 0.5,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate_function: Surrogate = _SIGMOID,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(
            tau=tau,
            tau_adapt=tau_adapt,
            beta=beta,
            decay_input=decay_input,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate_function=surrogate_function,
            detach_reset=detach_reset,
        )
        _above("tau", self.tau, 1.0)
        _above("tau_adapt", self.tau_adapt, 1.0)

    def _initial(self) -> dict[str, float]:
        return {**super()._initial(), "a": 0.0}

    def __call__(self, x: Any, state: dict) -> tuple[Any, dict]:
        v, a = state["v"], state["a"]
        r = 0.0 if self.v_reset is None else self.v_reset
        h = v + (x - (v - r)) / self.tau if self.decay_input else v - (v - r) / self.tau + x
        threshold = self.v_threshold + self.beta * a
        spike = self.surrogate_function.fire(h - threshold)
        v = self._reset(h, spike, threshold)
        return spike, {"v": v, "a": a + (spike - a) / self.tau_adapt}


class LI(Neuron):
    """A leaky integrator, the non-spiking readout (``NonSpikingLIFNode``'s step):
    ``v = v + (x - v) / tau``; the output is the new voltage. `v` starts at 0.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward, neurons
    >>> neuron = neurons.LI()
    >>> x_seq = np.full((6, 1), 1.5, np.float32)  # [T, B]
    >>> y_seq, state = multi_step_forward(x_seq, neuron, state=neuron.initial_state(x_seq))
    >>> y_seq.ravel().round(3).tolist()  # the membrane: LI does not spike
    [0.75, 1.125, 1.312000036239624, 1.406000018119812, 1.4529999494552612, 1.4769999980926514]
    """

    HYPER = ("tau",)
    tau: float

    def __init__(self, tau: float = 2.0) -> None:
        super().__init__(tau=tau)
        _above("tau", self.tau, 1.0)

    def _initial(self) -> dict[str, float]:
        return {"v": 0.0}

    def __call__(self, x: Any, v: Any) -> tuple[Any, Any]:
        v = v + (x - v) / self.tau
        return v, v


NEURONS = (IF, LIF, ParametricLIF, QIF, EIF, Izhikevich, CubaLIF, AdaptiveLIF, LI)
"""The nine neuron classes."""

__all__ = [
    "EIF",
    "IF",
    "LI",
    "LIF",
    "NEURONS",
    "QIF",
    "AdaptiveLIF",
    "CubaLIF",
    "Izhikevich",
    "Neuron",
    "ParametricLIF",
]

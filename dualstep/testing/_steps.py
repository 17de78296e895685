"""Reference step functions written once against the array API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from array_api_compat import array_namespace

Step = Callable[..., Any]

_SPIKES = ("heaviside", "sigmoid")


def affine_tanh(weight: float = 0.5, bias: float = 0.1) -> Step:
    """A stateless step ``x -> tanh(weight * x + bias)``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.testing import affine_tanh
    >>> affine_tanh(1.0, 0.0)(np.zeros(2))
    array([0., 0.])
    """

    def step(x: Any) -> Any:
        return array_namespace(x).tanh(x * weight + bias)

    return step


def _fire_and_reset(
    h: Any, v_threshold: float, v_reset: float | None, spike: str, alpha: float, with_v: bool
) -> tuple[Any, Any]:
    xp = array_namespace(h)
    if spike == "heaviside":
        s = xp.astype(h - v_threshold >= 0, h.dtype)
    else:
        # A smooth spike, so the whole step is differentiable (for gradient comparisons).
        s = 1.0 / (1.0 + xp.exp(-alpha * (h - v_threshold)))
    v = h - s * v_threshold if v_reset is None else s * v_reset + (1.0 - s) * h
    return ((s, v) if with_v else s), v


def _check_spike(spike: str) -> None:
    if spike not in _SPIKES:
        raise ValueError(f"`spike` must be one of {_SPIKES}; got {spike!r}")


def if_step(
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    *,
    spike: str = "heaviside",
    alpha: float = 4.0,
    with_v: bool = False,
) -> Step:
    """An integrate-and-fire neuron step with explicit state: ``(x, v) -> (y, v)``.

    ``h = v + x``; the spike is ``h >= v_threshold`` (``spike="heaviside"``) or
    ``sigmoid(alpha * (h - v_threshold))`` (``spike="sigmoid"``, differentiable); the new
    voltage is ``s * v_reset + (1 - s) * h`` (hard reset) or ``h - s * v_threshold`` when
    `v_reset` is None (soft reset). `y` is the spike, or ``(spike, v)`` with ``with_v=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward
    >>> from dualstep.testing import if_step
    >>> multi_step_forward(np.full((3, 1), 0.5), if_step(), state=np.zeros(1))[0].ravel()
    array([0., 1., 0.])
    """
    _check_spike(spike)

    def step(x: Any, v: Any) -> tuple[Any, Any]:
        return _fire_and_reset(v + x, v_threshold, v_reset, spike, alpha, with_v)

    return step


def lif_step(
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    *,
    spike: str = "heaviside",
    alpha: float = 4.0,
    with_v: bool = False,
) -> Step:
    """A leaky integrate-and-fire neuron step with explicit state: ``(x, v) -> (y, v)``.

    ``h = v + (x - (v - v_reset)) / tau`` (``v_reset`` read as 0 when None); firing, reset and
    the output as in :func:`if_step`. With ``tau = 2`` and inputs on a dyadic grid every
    operation is exact in float32, so spikes agree bit for bit across dtypes and backends.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep import multi_step_forward
    >>> from dualstep.testing import lif_step
    >>> multi_step_forward(np.full((3, 1), 1.5), lif_step(), state=np.zeros(1))[0].ravel()
    array([0., 1., 0.])
    """
    _check_spike(spike)
    rest = 0.0 if v_reset is None else v_reset

    def step(x: Any, v: Any) -> tuple[Any, Any]:
        h = v + (x - (v - rest)) / tau
        return _fire_and_reset(h, v_threshold, v_reset, spike, alpha, with_v)

    return step

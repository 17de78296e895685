"""Surrogate gradients for spiking neurons, written once for torch, JAX and NumPy.

Each surrogate is a small callable with SpikingJelly's name, parameters and defaults
(``surrogate.ATan(alpha=2.0)``). Called on an array ``h`` it gives the spike ``h >= 0`` (1.0
at ``h == 0``, as SpikingJelly's ``heaviside``), in ``h``'s dtype, and in backward the
surrogate's gradient instead of the Heaviside's zero:

- torch: a ``torch.autograd.Function``; its gradient is computed in SpikingJelly's own order
  of operations, so it equals SpikingJelly's bit for bit;
- JAX: a ``jax.custom_vjp`` with the same gradient, which fused kernels inline on both passes;
- NumPy: the spike (NumPy has no gradients).

With ``spiking=False`` the call is SpikingJelly's smooth "primitive function" of which the
surrogate is the derivative (where SpikingJelly defines one), differentiated as any function.
The gradient formula of each surrogate is written once, against the array API
(:meth:`Surrogate.gradient`), and serves all three backends.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from dualstep import surrogate
>>> spike = surrogate.ATan()
>>> spike(jnp.array([-1.0, 0.0, 0.5])).tolist()
[0.0, 1.0, 1.0]
>>> float(jax.grad(lambda h: spike(h).sum())(jnp.array(0.0)))  # alpha / 2 at h = 0
1.0
"""

from __future__ import annotations

import functools
import math
from typing import Any

from array_api_compat import array_namespace

from ._dispatch import kind_of


def _kind(x: Any) -> str:
    kind = kind_of(x)
    if kind is None:
        raise TypeError(
            "a surrogate is called on a torch.Tensor, a jax.Array (or tracer) or a "
            f"numpy.ndarray; got {type(x).__qualname__}"
        )
    return kind


def _sigmoid(xp: Any, kind: str, z: Any) -> Any:
    """The logistic function as each framework computes it (not in the array API)."""
    if kind == "torch":
        import torch

        return torch.sigmoid(z)
    if kind == "jax":
        import jax

        return jax.nn.sigmoid(z)
    return 1.0 / (1.0 + xp.exp(-z))


def _erfc(kind: str, z: Any) -> Any:
    """The complementary error function of each framework (not in the array API)."""
    if kind == "torch":
        import torch

        return torch.erfc(z)
    if kind == "jax":
        import jax

        return jax.scipy.special.erfc(z)
    import scipy.special  # pragma: no cover - NumPy primitives of Erf only

    return scipy.special.erfc(z)  # pragma: no cover


class Surrogate:
    """A spike ``h >= 0`` with a surrogate gradient (subclasses define the gradient).

    `spiking` as in SpikingJelly: True gives the spike, False the smooth primitive function.
    Parameters are plain floats, fixed at construction and part of the surrogate's equality
    (a step closing over a surrogate is traced again only when they differ).

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import ATan, Surrogate
    >>> isinstance(ATan(), Surrogate), ATan() == ATan(alpha=2.0), ATan() == ATan(alpha=3.0)
    (True, True, False)
    >>> ATan(spiking=False)(np.array([-1.0, 0.0, 1.0])).round(4)  # the primitive function
    array([0.0981, 0.5   , 0.9019])
    """

    PARAMS: tuple[str, ...] = ("alpha",)
    alpha: float
    spiking: bool

    def __init__(self, spiking: bool = True, **params: float) -> None:
        if not isinstance(spiking, bool):
            raise TypeError(f"`spiking` must be a bool; got {spiking!r}")
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"`{name}` must be a real number; got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"`{name}` must be finite; got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "spiking", spiking)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: make a new one with {name}")

    def _params(self) -> tuple[float, ...]:
        return tuple(getattr(self, name) for name in self.PARAMS)

    def _identity(self) -> tuple:
        return (type(self), self._params(), self.spiking)

    def __repr__(self) -> str:
        params = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.PARAMS)
        return f"{type(self).__name__}({params}, spiking={self.spiking})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Surrogate) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __call__(self, x: Any) -> Any:
        kind = _kind(x)
        if not self.spiking:
            return self.primitive(x)
        if kind == "torch":
            return _TorchSpike.apply(x, self)
        if kind == "jax":
            return _jax_spike(self)(x)
        return heaviside(x)

    def gradient(self, x: Any, grad: Any) -> Any:
        """The gradient of the spike at `x` given the output's cotangent `grad`, in
        SpikingJelly's order of operations (the array namespace taken from `x`)."""
        raise NotImplementedError

    def primitive(self, x: Any) -> Any:
        """SpikingJelly's primitive function: the smooth step whose derivative the surrogate
        is (``spiking=False``)."""
        raise NotImplementedError(f"SpikingJelly defines no primitive function for {self!r}")

    def derivative(self, x: Any) -> Any:
        """The surrogate's derivative at `x` as SpikingJelly's neuron kernels compute it (their
        backward multiplies the incoming gradient by it); None where they have no formula for
        this surrogate (:meth:`fire` then falls back on :meth:`gradient`)."""
        return None

    def fire(self, h: Any) -> Any:
        """The spike of a neuron at ``h = v - v_threshold``, as SpikingJelly's neurons fire it.

        The value is that of calling the surrogate. The gradient follows SpikingJelly's rule
        for its built-in neurons (IF, LIF, ParametricLIF, QIF, EIF, Izhikevich): a float32
        ``h`` and a surrogate with a kernel formula (:meth:`derivative`) give
        ``grad * derivative(h)``; any other dtype or surrogate gives :meth:`gradient`, as a
        plain call does. The two round differently, and a neuron that matches SpikingJelly
        bit for bit must pick the one SpikingJelly picks.
        """
        if not self.spiking or not _in_kernel(self, h):
            return self(h)
        kind = _kind(h)
        if kind == "torch":
            return _TorchSpike.apply(h, self, True)
        if kind == "jax":
            return _jax_spike(self, True)(h)
        return heaviside(h)


def _in_kernel(surrogate: Surrogate, h: Any) -> bool:
    """Whether SpikingJelly's neuron kernels would take `h` (float32, a kernel formula)."""
    return (
        type(surrogate).derivative is not Surrogate.derivative
        and array_namespace(h).float32 == h.dtype
    )


def heaviside(x: Any) -> Any:
    """``x >= 0`` in `x`'s dtype: 1.0 at 0, as SpikingJelly's ``heaviside``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import heaviside
    >>> heaviside(np.array([-1.0, 0.0, 2.0], np.float32))
    array([0., 1., 1.], dtype=float32)
    """
    xp = array_namespace(x)
    return xp.astype(x >= 0, x.dtype)


def _torch_function() -> Any:
    import torch

    class Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, surrogate: Surrogate, in_kernel: bool) -> Any:
            ctx.save_for_backward(x)
            ctx.surrogate, ctx.in_kernel = surrogate, in_kernel
            return (x >= 0).to(x)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (x,) = ctx.saved_tensors
            return _backward(ctx.surrogate, ctx.in_kernel, x, grad), None, None

    return Spike


def _backward(surrogate: Surrogate, in_kernel: bool, x: Any, grad: Any) -> Any:
    """The spike's gradient: a neuron kernel's (:meth:`Surrogate.fire`) or the surrogate's."""
    return grad * surrogate.derivative(x) if in_kernel else surrogate.gradient(x, grad)


class _Lazy:
    """`_TorchSpike.apply`: the torch Function, defined at its first use (no torch import
    before then)."""

    @functools.cached_property
    def function(self) -> Any:
        return _torch_function()

    def apply(self, x: Any, surrogate: Surrogate, in_kernel: bool = False) -> Any:
        return self.function.apply(x, surrogate, in_kernel)


_TorchSpike = _Lazy()


@functools.cache
def _jax_spike(surrogate: Surrogate, in_kernel: bool = False) -> Any:
    """The JAX spike of `surrogate`, one ``custom_vjp`` per surrogate, parameters and gradient
    rule (equal surrogates share it, so the JAX compile cache sees one function)."""
    import jax

    @jax.custom_vjp
    def spike(x: Any) -> Any:
        return heaviside(x)

    def forward(x: Any) -> tuple[Any, Any]:
        return heaviside(x), x

    def backward(x: Any, grad: Any) -> tuple[Any]:
        return (_backward(surrogate, in_kernel, x, grad),)

    spike.defvjp(forward, backward)
    return spike


class Sigmoid(Surrogate):
    """Gradient ``alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x))``; primitive
    ``sigmoid(alpha x)``. SpikingJelly's default ``alpha=4.0``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import Sigmoid
    >>> spike, h = Sigmoid(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.42, 1.  , 0.42])
    """

    def __init__(self, alpha: float = 4.0, spiking: bool = True) -> None:
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        s = _sigmoid(array_namespace(x), _kind(x), x * self.alpha)
        return grad * (1.0 - s) * s * self.alpha

    def primitive(self, x: Any) -> Any:
        return _sigmoid(array_namespace(x), _kind(x), x * self.alpha)

    def derivative(self, x: Any) -> Any:
        s = _sigmoid(array_namespace(x), _kind(x), self.alpha * x)
        return (1 - s) * s * self.alpha


class ATan(Surrogate):
    """Gradient ``(alpha / 2) / (1 + (pi alpha x / 2)^2)``; primitive
    ``atan(pi alpha x / 2) / pi + 1/2``. Default ``alpha=2.0``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import ATan
    >>> spike, h = ATan(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.2884, 1.    , 0.2884])
    """

    def __init__(self, alpha: float = 2.0, spiking: bool = True) -> None:
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        a = self.alpha / 2
        ax = math.pi * a * x
        return a / (1 + ax * ax) * grad

    def primitive(self, x: Any) -> Any:
        return array_namespace(x).atan(math.pi / 2 * self.alpha * x) / math.pi + 0.5

    def derivative(self, x: Any) -> Any:
        z = x * (math.pi / 2 * self.alpha)
        return (self.alpha / 2) / (1 + z * z)


class PiecewiseQuadratic(Surrogate):
    """Gradient ``alpha - alpha^2 |x|`` for ``|x| <= 1 / alpha``, else 0. Default
    ``alpha=1.0``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import PiecewiseQuadratic
    >>> spike, h = PiecewiseQuadratic(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.5, 1. , 0.5])
    """

    def __init__(self, alpha: float = 1.0, spiking: bool = True) -> None:
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        x_abs = xp.abs(x)
        g = grad * (-(self.alpha**2) * x_abs + self.alpha)
        return xp.where(x_abs > (1 / self.alpha), xp.zeros_like(g), g)

    def primitive(self, x: Any) -> Any:
        xp = array_namespace(x)
        alpha = self.alpha
        above = xp.astype(x > (1.0 / alpha), x.dtype)
        inside = xp.astype(xp.abs(x) <= (1.0 / alpha), x.dtype)
        return above + inside * (-(alpha**2) / 2 * (x * x) * xp.sign(x) + alpha * x + 0.5)

    def derivative(self, x: Any) -> Any:
        xp = array_namespace(x)
        return xp.clip(self.alpha - self.alpha * self.alpha * xp.abs(x), min=0)


class SoftSign(Surrogate):
    """Gradient ``1 / (2 alpha (1 / alpha + |x|)^2)``; primitive
    ``(softsign(alpha x) + 1) / 2``. Default ``alpha=2.0``, which must be positive.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import SoftSign
    >>> spike, h = SoftSign(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.25, 1.  , 0.25])
    """

    def __init__(self, alpha: float = 2.0, spiking: bool = True) -> None:
        if not alpha > 0:
            raise ValueError(f"`alpha` must be positive; got {alpha!r}")
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        return grad / (2 * self.alpha * (1 / self.alpha + xp.abs(x)) ** 2)

    def primitive(self, x: Any) -> Any:
        xp = array_namespace(x)
        z = x * self.alpha
        return (z / (1 + xp.abs(z)) + 1.0) / 2.0

    def derivative(self, x: Any) -> Any:
        z = 1 / self.alpha + array_namespace(x).abs(x)
        return 1 / (2 * self.alpha * z * z)


class Erf(Surrogate):
    """Gradient ``alpha / sqrt(pi) * exp(-(alpha x)^2)``; primitive
    ``erfc(-alpha x) / 2``. Default ``alpha=2.0``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import Erf
    >>> spike, h = Erf(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.4151, 1.1284, 0.4151])
    """

    def __init__(self, alpha: float = 2.0, spiking: bool = True) -> None:
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        return grad * xp.exp(-((x * self.alpha) ** 2)) * (self.alpha / math.sqrt(math.pi))

    def primitive(self, x: Any) -> Any:
        return _erfc(_kind(x), -self.alpha * x) / 2.0

    def derivative(self, x: Any) -> Any:
        z = self.alpha * x
        return (self.alpha / math.sqrt(math.pi)) * array_namespace(x).exp(-z * z)


class SuperSpike(Surrogate):
    """Gradient ``alpha / (|x| + 1)^2`` (Zenke and Ganguli); SpikingJelly defines no
    primitive function. Default ``alpha=1.0``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import SuperSpike
    >>> spike, h = SuperSpike(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.4444, 1.    , 0.4444])
    """

    def __init__(self, alpha: float = 1.0, spiking: bool = True) -> None:
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        return self.alpha * grad / (xp.abs(x) + 1.0) ** 2

    def derivative(self, x: Any) -> Any:
        z = 1 + array_namespace(x).abs(x)
        return self.alpha / (z * z)


class PiecewiseExp(Surrogate):
    """Gradient ``alpha / 2 * exp(-alpha |x|)``; primitive ``1 - exp(-alpha x) / 2`` for
    ``x >= 0``, ``exp(alpha x) / 2`` below. Default ``alpha=1.0``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import PiecewiseExp
    >>> spike, h = PiecewiseExp(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.3033, 0.5   , 0.3033])
    """

    def __init__(self, alpha: float = 1.0, spiking: bool = True) -> None:
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        return self.alpha / 2 * xp.exp(-self.alpha * xp.abs(x)) * grad

    def primitive(self, x: Any) -> Any:
        s = heaviside(x)
        sign = s * 2.0 - 1.0
        return s - array_namespace(x).exp(sign * x * -self.alpha) / 2.0 * sign

    def derivative(self, x: Any) -> Any:
        xp = array_namespace(x)
        return (self.alpha / 2) * xp.exp(-self.alpha * xp.abs(x))


class Rect(Surrogate):
    """Gradient ``alpha`` for ``|x| < 1 / (2 alpha)``, else 0 (a rectangular window);
    primitive ``clip(alpha x + 1/2, 0, 1)``. Default ``alpha=1.0``, which must be positive;
    SpikingJelly's ``CUBALIFNode`` fires through it.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import Rect
    >>> spike, h = Rect(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0., 1., 0.])
    """

    def __init__(self, alpha: float = 1.0, spiking: bool = True) -> None:
        if not alpha > 0:
            raise ValueError(f"`alpha` must be positive; got {alpha!r}")
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        return self.alpha * xp.astype(xp.abs(x) < 0.5 / self.alpha, x.dtype) * grad

    def primitive(self, x: Any) -> Any:
        return array_namespace(x).clip(self.alpha * x + 0.5, min=0.0, max=1.0)


class PiecewiseLeakyReLU(Surrogate):
    """Gradient ``1 / (2 w)`` for ``|x| < w``, else ``c``; primitive the matching piecewise
    linear step. Defaults ``w=1.0`` (positive), ``c=0.01``.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import PiecewiseLeakyReLU
    >>> spike, h = PiecewiseLeakyReLU(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.5, 0.5, 0.5])
    """

    PARAMS = ("w", "c")
    w: float
    c: float

    def __init__(self, w: float = 1.0, c: float = 0.01, spiking: bool = True) -> None:
        if not w > 0:
            raise ValueError(f"`w` must be positive; got {w!r}")
        super().__init__(spiking, w=w, c=c)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        inside = xp.abs(x) < self.w
        slope = xp.where(inside, xp.full_like(x, 1 / (2 * self.w)), xp.full_like(x, self.c))
        return grad * slope

    def primitive(self, x: Any) -> Any:
        xp = array_namespace(x)
        w, c = self.w, self.c
        below = xp.astype(x < -w, x.dtype)
        above = xp.astype(x > w, x.dtype)
        inside = xp.ones_like(x) - below - above
        if c == 0:
            return inside * (x / (2 * w) + 1 / 2) + above
        cw = c * w
        return below * (c * x + cw) + above * (c * x + (-cw + 1)) + inside * (x / (2 * w) + 1 / 2)


class QPseudoSpike(Surrogate):
    """Gradient ``(1 + 2 |x| / (alpha - 1))^(-alpha)`` (a tail that decays as a power);
    primitive its integral. Default ``alpha=2.0``, which must exceed 1.

    Examples
    --------
    >>> import numpy as np
    >>> from dualstep.surrogate import QPseudoSpike
    >>> spike, h = QPseudoSpike(), np.array([-0.5, 0.0, 0.5])
    >>> spike(h)  # the spike on NumPy; on torch and JAX it carries the gradient below
    array([0., 1., 1.])
    >>> spike.gradient(h, np.ones(3)).round(4)
    array([0.25, 1.  , 0.25])
    """

    def __init__(self, alpha: float = 2.0, spiking: bool = True) -> None:
        if not alpha > 1:
            raise ValueError(f"`alpha` must be greater than 1; got {alpha!r}")
        super().__init__(spiking, alpha=alpha)

    def gradient(self, x: Any, grad: Any) -> Any:
        xp = array_namespace(x)
        return ((1 + 2 / (self.alpha - 1) * xp.abs(x)) ** (-self.alpha)) * grad

    def primitive(self, x: Any) -> Any:
        alpha = self.alpha
        s = heaviside(x)
        sign = s * 2.0 - 1.0
        return s - sign * (0.5 * ((1.0 + 2.0 / (alpha - 1.0) * x * sign) ** (1.0 - alpha)))


SURROGATES = (
    Sigmoid,
    ATan,
    PiecewiseQuadratic,
    SoftSign,
    Erf,
    SuperSpike,
    PiecewiseLeakyReLU,
    QPseudoSpike,
    PiecewiseExp,
    Rect,
)
"""The ten surrogate classes, in SpikingJelly's order."""

__all__ = [
    "SURROGATES",
    "ATan",
    "Erf",
    "PiecewiseExp",
    "PiecewiseLeakyReLU",
    "PiecewiseQuadratic",
    "QPseudoSpike",
    "Rect",
    "Sigmoid",
    "SoftSign",
    "SuperSpike",
    "Surrogate",
    "heaviside",
]

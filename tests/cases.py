"""The family of step functions the property tests run, written once against the array API."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from dualstep.testing import affine_tanh, if_step, lif_step


@dataclasses.dataclass(frozen=True)
class Case:
    """A step function and how to build its initial state from one step's shape."""

    name: str
    step: Any
    initial_state: Callable[[tuple, np.dtype], Any] | None = None
    smooth: bool = False  # differentiable everywhere: used for gradient comparisons


def _zeros(shape: tuple, dtype: np.dtype) -> np.ndarray:
    return np.zeros(shape, dtype)


def _counting_if(x: Any, state: dict) -> tuple[Any, dict]:
    y, v = if_step(v_reset=None)(x, state["v"])
    return y, {"v": v, "count": state["count"] + y}


def _half_plus_quarter(x: Any) -> Any:
    return x * 0.5 + 0.25


CASES = [
    Case("affine_tanh", affine_tanh(), smooth=True),
    Case("if", if_step(), _zeros),
    Case("lif", lif_step(), _zeros),
    Case("lif_soft_reset", lif_step(v_reset=None), _zeros),
    Case("two_output", if_step(with_v=True), _zeros),
    Case("dict_state", _counting_if, lambda s, d: {"v": _zeros(s, d), "count": _zeros(s, d)}),
    Case("module_list", [_half_plus_quarter, lif_step()], lambda s, d: (None, _zeros(s, d))),
    Case("smooth_lif", lif_step(spike="sigmoid"), _zeros, smooth=True),
]
CASE_IDS = [c.name for c in CASES]
SMOOTH = [c for c in CASES if c.smooth]

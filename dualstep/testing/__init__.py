"""Public helpers for validating step functions across backends.

Reference step functions written once against the array API; they run unchanged on torch, JAX
and NumPy (and anything :mod:`array_api_compat` knows).
"""

from ._steps import affine_tanh, if_step, lif_step

__all__ = ["affine_tanh", "if_step", "lif_step"]

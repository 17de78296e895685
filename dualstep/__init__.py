"""dualstep: SpikingJelly's sequence forward functions on PyTorch, JAX and NumPy behind one API."""

from ._api import (
    chunk_multi_step_forward,
    multi_step_forward,
    seq_to_ann_forward,
    t_last_multi_step_forward,
    t_last_seq_to_ann_forward,
)
from ._config import clear_jax_cache, set_jax_cache
from ._lengths import pad_sequences
from .fused import NotFusable

__version__ = "0.1.0"
"""The version of dualstep."""

__all__ = [
    "NotFusable",
    "__version__",
    "chunk_multi_step_forward",
    "clear_jax_cache",
    "multi_step_forward",
    "pad_sequences",
    "seq_to_ann_forward",
    "set_jax_cache",
    "t_last_multi_step_forward",
    "t_last_seq_to_ann_forward",
]

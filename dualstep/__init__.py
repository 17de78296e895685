"""dualstep: SpikingJelly's sequence forward functions on PyTorch, JAX and NumPy behind one API."""

from ._api import (
    chunk_multi_step_forward,
    multi_step_forward,
    seq_to_ann_forward,
    t_last_multi_step_forward,
    t_last_seq_to_ann_forward,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "chunk_multi_step_forward",
    "multi_step_forward",
    "seq_to_ann_forward",
    "t_last_multi_step_forward",
    "t_last_seq_to_ann_forward",
]

"""Hypothesis strategies for property tests of step functions (needs ``hypothesis``).

>>> from hypothesis import given
>>> from dualstep.testing import assert_backends_close, if_step
>>> from dualstep.testing.strategies import sequences
>>> @given(x=sequences(max_t=4))
... def test_if_agrees(x):
...     assert_backends_close(if_step(), x, state=0 * x[0], backends=["numpy"])
>>> test_if_agrees()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["sequences", "split_sizes"]

DTYPES = ("float32", "float64")


@st.composite
def sequences(
    draw: Any,
    *,
    max_t: int = 16,
    min_batch: int = 1,
    max_batch: int = 4,
    max_feature_dims: int = 2,
    max_features: int = 4,
    dtypes: Sequence[str] = DTYPES,
) -> np.ndarray:
    """NumPy arrays ``[T, batch_size, *features]`` with values on a dyadic grid.

    ``T`` is in ``1..max_t``, up to `max_feature_dims` feature axes of up to `max_features`
    each, the dtype one of `dtypes`. Values are multiples of 1/8 in [-2, 2]: IF and LIF
    neurons (``tau=2``) compute them exactly in float32 and float64 alike, so spike times agree
    across dtypes and backends and a tolerance only has to absorb smooth functions' rounding.
    Convert with :mod:`dualstep.interop` for another backend.

    Examples
    --------
    >>> from hypothesis import find
    >>> from dualstep.testing.strategies import sequences
    >>> x_seq = find(sequences(), lambda x: x.shape[0] >= 3)  # the simplest with T >= 3
    >>> x_seq.shape, x_seq.dtype
    ((3, 1), dtype('float32'))
    """
    t = draw(st.integers(1, max_t))
    b = draw(st.integers(min_batch, max_batch))
    features = draw(st.lists(st.integers(1, max_features), max_size=max_feature_dims))
    dtype = draw(st.sampled_from(list(dtypes)))
    grid = draw(hnp.arrays(np.int8, (t, b, *features), elements=st.integers(-16, 16)))
    return (grid / 8).astype(dtype)


def split_sizes(max_value: int) -> st.SearchStrategy[Any]:
    """`split_size` values in ``1..max_value`` as a Python int or any NumPy integer type.

    Pass ``T + 2`` or so as `max_value` to cover chunks longer than the sequence too.

    Examples
    --------
    >>> from hypothesis import find
    >>> from dualstep.testing.strategies import split_sizes
    >>> find(split_sizes(5), lambda s: s >= 3)
    3
    """
    kinds = [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint64]
    return st.builds(
        lambda kind, n: kind(n), st.sampled_from(kinds), st.integers(1, min(max_value, 127))
    )

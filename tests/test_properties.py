"""Every backend against the NumPy float64 oracle, and the functions against each other."""

from __future__ import annotations

import numpy as np
import pytest
from cases import CASE_IDS, CASES, SMOOTH
from hypothesis import given, settings
from support import assert_close

from dualstep._tree import leaves_with_path
from dualstep.testing import STATEFUL_FUNCTIONS, call_time_first
from dualstep.testing.strategies import sequences


def _state(case, x: np.ndarray, dtype) -> object:
    return None if case.initial_state is None else case.initial_state(x.shape[1:], dtype)


def _oracle(case, x: np.ndarray):
    """``(y, final state or None)`` of multi_step_forward on NumPy float64."""
    x64 = x.astype(np.float64)
    return call_time_first(
        "multi_step_forward", case.step, x64, state=_state(case, x64, np.float64)
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@given(x=sequences())
def test_multi_step_matches_oracle(backend, case, x):
    stateful = case.initial_state is not None
    want_y, want_s = _oracle(case, x)
    xb = backend.asarray(x)
    state = backend.tree(_state(case, x, x.dtype))
    got_y, got_s = call_time_first("multi_step_forward", case.step, xb, state=state)
    assert_close(backend.tree_numpy(got_y), want_y, dtype=x.dtype)
    if stateful:
        _assert_state_close(backend.tree_numpy(got_s), want_s, x.dtype)
    np.testing.assert_array_equal(backend.to_numpy(xb), x)  # input untouched


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@given(x=sequences())
def test_t_last_matches_oracle(backend, case, x):
    stateful = case.initial_state is not None
    want_y, want_s = _oracle(case, x)
    # Time last: one step is x[..., t], whose shape is x.shape[1:] moved the same way.
    state = backend.tree(_state(case, x, x.dtype))
    got_y, got_s = call_time_first(
        "t_last_multi_step_forward", case.step, backend.asarray(x), state=state
    )
    assert_close(backend.tree_numpy(got_y), want_y, dtype=x.dtype)
    if stateful:
        _assert_state_close(backend.tree_numpy(got_s), want_s, x.dtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=8)  # each example is T + 2 calls, each a new program on JAX
@given(x=sequences())
def test_chunk_matches_unchunked_for_every_split(backend, case, x):
    stateful = case.initial_state is not None
    want_y, want_s = _oracle(case, x)
    xb = backend.asarray(x)
    for split in range(1, x.shape[0] + 3):
        state = backend.tree(_state(case, x, x.dtype))
        got_y, got_s = call_time_first(
            "chunk_multi_step_forward", case.step, xb, state=state, split_size=split
        )
        assert_close(backend.tree_numpy(got_y), want_y, dtype=x.dtype)
        if stateful:
            _assert_state_close(backend.tree_numpy(got_s), want_s, x.dtype)


@given(x=sequences())
def test_seq_to_ann_equals_multi_step_for_stateless(backend, x):
    want, _ = _oracle(CASES[0], x)
    for function in ("seq_to_ann_forward", "t_last_seq_to_ann_forward"):
        got, _ = call_time_first(function, CASES[0].step, backend.asarray(x))
        assert_close(backend.to_numpy(got), want, dtype=x.dtype)


def _assert_state_close(got, want, dtype) -> None:
    """Same nesting, ``None`` entries in the same places, leaves close."""
    got_leaves = list(leaves_with_path(got, "state", sort_keys=True))
    want_leaves = list(leaves_with_path(want, "state", sort_keys=True))
    assert [(p, g is None) for p, g in got_leaves] == [(p, w is None) for p, w in want_leaves]
    for (_, g), (_, w) in zip(got_leaves, want_leaves, strict=True):
        if w is not None:
            assert_close(g, w, dtype=dtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@given(x=sequences())
def test_jax_equals_torch(torch_backend, jax_backend, case, x):
    """JAX against the reference backend directly, in the input's dtype."""
    outs = []
    for b in (torch_backend, jax_backend):
        state = b.tree(_state(case, x, x.dtype))
        outs.append(
            b.tree_numpy(
                call_time_first("multi_step_forward", case.step, b.asarray(x), state=state)
            )
        )
    stateful = case.initial_state is not None
    (ty, ts), (jy, js) = outs
    assert_close(jy, ty)
    if stateful:
        _assert_state_close(js, ts, x.dtype)


@pytest.mark.parametrize("function", STATEFUL_FUNCTIONS)
@pytest.mark.parametrize("case", SMOOTH, ids=[c.name for c in SMOOTH])
@given(x=sequences(max_t=8))
def test_jax_grad_equals_torch_autograd(torch_backend, jax_backend, case, function, x):
    import jax
    import jax.numpy as jnp
    import torch

    x = x.astype(np.float64)
    weights = np.linspace(-1.0, 1.0, x.size).reshape(x.shape)
    stateful = case.initial_state is not None
    s0 = case.initial_state(x.shape[1:], np.float64) + 0.25 if stateful else None

    def run(xs, s, w):
        y, final = call_time_first(function, case.step, xs, state=s, split_size=3)
        loss = (y * w).sum()
        return loss + (final * final).sum() if stateful else loss

    xt = torch.tensor(x, requires_grad=True)
    st = torch.tensor(s0, requires_grad=True) if stateful else None
    run(xt, st, torch.tensor(weights)).backward()
    grads = jax.grad(
        lambda xs, s: run(xs, s, jnp.asarray(weights)), argnums=(0, 1) if stateful else 0
    )(jnp.asarray(x), jnp.asarray(s0) if stateful else None)
    jx, js = grads if stateful else (grads, None)
    assert_close(np.asarray(jx), xt.grad.numpy())
    if stateful:
        assert_close(np.asarray(js), st.grad.numpy())

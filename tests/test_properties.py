"""Every backend against the NumPy float64 oracle, and the functions against each other."""

from __future__ import annotations

import numpy as np
import pytest
from cases import CASE_IDS, CASES, SMOOTH
from conftest import assert_close
from hypothesis import given, settings

import dualstep as ds
from dualstep._tree import leaves_with_path
from dualstep.testing.strategies import sequences


def _state(case, x: np.ndarray, dtype) -> object:
    return None if case.initial_state is None else case.initial_state(x.shape[1:], dtype)


def _call(fn, *args, state=None):
    return fn(*args) if state is None else fn(*args, state=state)


def _oracle(case, x: np.ndarray):
    x64 = x.astype(np.float64)
    return _call(ds.multi_step_forward, x64, case.step, state=_state(case, x64, np.float64))


def _split(out, stateful: bool):
    return out if stateful else (out, None)


def _chunk_module(step, stateful: bool):
    if stateful:
        return lambda xc, s: ds.multi_step_forward(xc, step, state=s)
    return lambda xc: ds.multi_step_forward(xc, step)


def _moveaxis(y, src: int, dst: int):
    if isinstance(y, tuple):
        return tuple(np.moveaxis(a, src, dst) for a in y)
    return np.moveaxis(y, src, dst)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@given(x=sequences())
def test_multi_step_matches_oracle(backend, case, x):
    stateful = case.initial_state is not None
    want_y, want_s = _split(_oracle(case, x), stateful)
    xb = backend.asarray(x)
    got_y, got_s = _split(
        _call(ds.multi_step_forward, xb, case.step, state=backend.tree(_state(case, x, x.dtype))),
        stateful,
    )
    assert_close(backend.tree_numpy(got_y), want_y, dtype=x.dtype)
    if stateful:
        _assert_state_close(backend.tree_numpy(got_s), want_s, x.dtype)
    np.testing.assert_array_equal(backend.to_numpy(xb), x)  # input untouched


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@given(x=sequences())
def test_t_last_matches_oracle(backend, case, x):
    stateful = case.initial_state is not None
    want_y, want_s = _split(_oracle(case, x), stateful)
    xt = backend.asarray(np.moveaxis(x, 0, -1))
    # Time last: one step is x[..., t], whose shape is x.shape[1:] moved the same way.
    state = backend.tree(_state(case, x, x.dtype))
    got_y, got_s = _split(_call(ds.t_last_multi_step_forward, xt, case.step, state=state), stateful)
    assert_close(_moveaxis(backend.tree_numpy(got_y), -1, 0), want_y, dtype=x.dtype)
    if stateful:
        _assert_state_close(backend.tree_numpy(got_s), want_s, x.dtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=8)  # each example is T + 2 calls, each a new program on JAX
@given(x=sequences())
def test_chunk_matches_unchunked_for_every_split(backend, case, x):
    stateful = case.initial_state is not None
    want_y, want_s = _split(_oracle(case, x), stateful)
    xb = backend.asarray(x)
    module = _chunk_module(case.step, stateful)
    for split in range(1, x.shape[0] + 3):
        state = backend.tree(_state(case, x, x.dtype))
        got_y, got_s = _split(
            _call(ds.chunk_multi_step_forward, split, xb, module, state=state), stateful
        )
        assert_close(backend.tree_numpy(got_y), want_y, dtype=x.dtype)
        if stateful:
            _assert_state_close(backend.tree_numpy(got_s), want_s, x.dtype)


@given(x=sequences())
def test_seq_to_ann_equals_multi_step_for_stateless(backend, x):
    step = CASES[0].step
    want = _oracle(CASES[0], x)
    got = backend.to_numpy(ds.seq_to_ann_forward(backend.asarray(x), step))
    assert_close(got, want, dtype=x.dtype)
    got_t = ds.t_last_seq_to_ann_forward(backend.asarray(np.moveaxis(x, 0, -1)), step)
    assert_close(np.moveaxis(backend.to_numpy(got_t), -1, 0), want, dtype=x.dtype)


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
            b.tree_numpy(_call(ds.multi_step_forward, b.asarray(x), case.step, state=state))
        )
    stateful = case.initial_state is not None
    ty, ts = _split(outs[0], stateful)
    jy, js = _split(outs[1], stateful)
    assert_close(jy, ty)
    if stateful:
        _assert_state_close(js, ts, x.dtype)


@pytest.mark.parametrize("function", ["multi_step", "t_last", "chunk"])
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

    def run(xs, s, w, ops):
        if function == "t_last":
            xs = ops.moveaxis(xs, 0, -1)
            y = _call(ds.t_last_multi_step_forward, xs, case.step, state=s)
        elif function == "chunk":
            y = _call(
                ds.chunk_multi_step_forward, 3, xs, _chunk_module(case.step, stateful), state=s
            )
        else:
            y = _call(ds.multi_step_forward, xs, case.step, state=s)
        y, final = _split(y, stateful)
        if function == "t_last":
            y = ops.moveaxis(y, -1, 0)
        loss = (y * w).sum()
        return loss + (final * final).sum() if stateful else loss

    xt = torch.tensor(x, requires_grad=True)
    st = torch.tensor(s0, requires_grad=True) if stateful else None
    run(xt, st, torch.tensor(weights), torch).backward()
    grads = jax.grad(
        lambda xs, s: run(xs, s, jnp.asarray(weights), jnp), argnums=(0, 1) if stateful else 0
    )(jnp.asarray(x), jnp.asarray(s0) if stateful else None)
    jx, js = grads if stateful else (grads, None)
    assert_close(np.asarray(jx), xt.grad.numpy())
    if stateful:
        assert_close(np.asarray(js), st.grad.numpy())

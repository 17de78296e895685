"""One rule on every backend and path: the cases the adversarial tests found (issue 11)."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import pytest
from support import MAKERS

import dualstep as ds
from dualstep.testing import BACKENDS, STATEFUL_FUNCTIONS, assert_backends_close, call, lif_step


class Pair(NamedTuple):
    spikes: object
    doubled: object


def _pair_step(x):
    return Pair(x * 0.5, x * 2)


def _pair_state_step(x, s):
    return Pair(x + s, x * 2), s + x


def _numpy(tree):
    if isinstance(tree, tuple):
        return tuple(_numpy(a) for a in tree)
    return np.asarray(tree.detach() if hasattr(tree, "detach") else tree)


# --- named tuples (item 8) -----------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", [False, True])
def test_named_tuple_outputs_stay_named_tuples(backend, checkpoint):
    x = np.arange(24.0).reshape(4, 3, 2)
    s0 = np.zeros((3, 2))
    xb, sb = backend.asarray(x), backend.asarray(s0)

    def chunk_stateless(c):
        return ds.multi_step_forward(c, _pair_step)

    def chunk_stateful(c, s):
        return ds.multi_step_forward(c, _pair_state_step, state=s)

    def calls():
        return {
            "multi_step": ds.multi_step_forward(xb, _pair_step),
            "multi_step state": ds.multi_step_forward(xb, _pair_state_step, state=sb)[0],
            "t_last": ds.t_last_multi_step_forward(xb, _pair_step),
            "chunk": ds.chunk_multi_step_forward(2, xb, chunk_stateless, checkpoint=checkpoint),
            "chunk state": ds.chunk_multi_step_forward(
                3, xb, chunk_stateful, state=sb, checkpoint=checkpoint
            )[0],
            "seq_to_ann": ds.seq_to_ann_forward(xb, _pair_step),
            "t_last_seq_to_ann": ds.t_last_seq_to_ann_forward(xb, _pair_step),
        }

    outs = [calls()]
    if backend.name == "torch":  # the preallocated paths too
        import torch

        with torch.no_grad():
            outs.append(calls())
    for out in outs:
        for name, y in out.items():
            assert type(y) is Pair, name
            np.testing.assert_allclose(_numpy(y.doubled), x * 2, err_msg=name)


# --- a chunk module may return another number of steps (item 5) ----------------------------


def test_chunk_outputs_of_another_length_are_concatenated(backend):
    x = np.arange(14.0).reshape(7, 2)
    want = np.concatenate([x[i : i + 3][::2] for i in range(0, 7, 3)])
    got = ds.chunk_multi_step_forward(3, backend.asarray(x), lambda c: c[::2])
    np.testing.assert_array_equal(backend.to_numpy(got), want)

    def stateful(c, s):
        return c[::2] + s, s + c.sum(0)

    y, s = ds.chunk_multi_step_forward(3, backend.asarray(x), stateful, state=backend.asarray(x[0]))
    want_y, want_s = [], x[0]
    for i in range(0, 7, 3):
        want_y.append(x[i : i + 3][::2] + want_s)
        want_s = want_s + x[i : i + 3].sum(0)
    np.testing.assert_array_equal(backend.to_numpy(y), np.concatenate(want_y))
    np.testing.assert_array_equal(backend.to_numpy(s), want_s)


def test_chunk_outputs_of_another_length_under_jax_jit():
    jax = pytest.importorskip("jax")
    x = np.arange(18.0, dtype=np.float32).reshape(9, 2)
    got = jax.jit(lambda a: ds.chunk_multi_step_forward(3, a, lambda c: c[:1] * 2))(x)
    np.testing.assert_array_equal(np.asarray(got), x[::3] * 2)


def test_zero_dimensional_chunk_outputs_cannot_be_concatenated_anywhere(backend):
    with pytest.raises((ValueError, RuntimeError), match="zero-dimensional"):
        ds.chunk_multi_step_forward(2, backend.asarray(np.ones((6, 2))), lambda c: c.sum())


# --- NumPy scalars (item 9) -----------------------------------------------------------------


def test_t_sequences_give_zero_dimensional_steps_and_array_states(backend):
    x = np.array([0.5, 1.0, 0.25])
    seen = []

    def step(xt, s):
        seen.append(type(xt))
        return xt * 2, s + xt

    array_type = type(backend.asarray(np.zeros(1)))
    for function in STATEFUL_FUNCTIONS:
        y, final = call(function, step, backend.asarray(x), state=backend.asarray(np.asarray(0.0)))
        assert isinstance(final, array_type), type(final)
        assert final.shape == () and float(final) == pytest.approx(1.75)
        np.testing.assert_array_equal(backend.to_numpy(y), x * 2)
    assert seen and not any(issubclass(t, np.generic) for t in seen)


def test_assert_backends_close_on_a_t_sequence():
    report = assert_backends_close(lif_step(), np.array([0.5, 1.5, 0.25]), state=np.asarray(0.0))
    assert report.ok


# --- state of another kind, and states a step changes (item 10) -----------------------------


def _other(name):
    """An array of every kind other than `name`, for a state."""
    out = {}
    for other in BACKENDS:
        if other != name:
            with contextlib.suppress(pytest.skip.Exception):
                out[other] = MAKERS[other]().asarray(np.zeros(2))
    return out


@pytest.mark.parametrize("function", STATEFUL_FUNCTIONS)
def test_state_of_another_kind_is_rejected_naming_the_leaf(backend, function):
    x = backend.asarray(np.ones((3, 2)))
    others = [*_other(backend.name).values(), 0.0]
    if len(others) < 3:  # CI's full environment has both (DUALSTEP_REQUIRE); a reduced one not
        pytest.skip("needs the two other backends")
    for array in others:
        with pytest.raises(TypeError, match=r"`state\['v'\]\[1\]` must be the same kind of"):
            call(function, lif_step(), x, state={"v": (backend.asarray(np.zeros(2)), array)})


@pytest.mark.parametrize("function", STATEFUL_FUNCTIONS)
@pytest.mark.parametrize(
    ("change", "was", "became"),
    [
        ("dtype", "float32 of shape (2,)", "float64 of shape (2,)"),
        ("shape", "float32 of shape (2,)", "float32 of shape (3, 2)"),
        ("none", "float32 of shape (2,)", "None"),
        ("structure", "a tuple of length 2", "a tuple of length 1"),
    ],
)
def test_a_step_that_changes_its_state_is_rejected_everywhere(
    backend, function, change, was, became
):
    x32 = np.ones((3, 2), np.float32)
    x = backend.asarray(x32)
    wide = backend.asarray(np.ones(2))

    def step(xt, s):
        v, n = s
        if change == "dtype":
            return xt, (v + wide, n)
        if change == "shape":
            return xt, (v + backend.asarray(np.ones((3, 2), np.float32)), n)
        if change == "none":
            return xt, (None, n)
        return xt, (v,)

    s0 = (backend.asarray(np.zeros(2, np.float32)), backend.asarray(np.zeros(2, np.float32)))
    path = "`state`" if change == "structure" else "`state[0]`"
    with pytest.raises(
        TypeError, match="must return it with the structure, shapes and dtypes"
    ) as e:
        call(function, step, x, state=s0)
    assert f"{path} was {was}, the module returned {became}" in str(e.value)


@pytest.mark.parametrize("change", ["shape", "dtype", "keys", "shape and back"])
@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_a_state_that_changes_at_a_later_step_is_rejected(name, change):
    """The loop tests the rule in full at the first step and on the final state, structure and
    shapes at every step between: a change at step 2 (of a nested dict state) raises too."""
    pytest.importorskip(name)
    from support import MAKERS

    backend = MAKERS[name]()
    x = backend.asarray(np.ones((5, 2), np.float32))
    wide = backend.asarray(np.ones((3, 2)))
    seen = []

    def step(xt, s):
        seen.append(1)
        v = s["lif"]["v"] + xt
        t = len(seen)
        if t == 3 or (t > 3 and change != "shape and back"):
            if change == "dtype":
                v = v + wide[0]
            elif change == "keys":
                return xt, {"lif": {"v": v, "w": v}}
            else:
                v = v + wide
        return xt, {"lif": {"v": v}}

    s0 = {"lif": {"v": backend.asarray(np.zeros(2, np.float32))}}
    with pytest.raises(
        TypeError,
        match=r"`state\['lif'\]\['v'\]` was float32 of shape \(2,\)|"
        r"`state\['lif'\]` was a dict with keys \['v'\]",
    ):
        ds.multi_step_forward(x, step, state=s0)


def test_chunk_module_returning_none_state_is_rejected_in_every_torch_mode():
    """Issue: `(y, None)` from a chunk module came back as `(y, None)` with grad and a bare
    tensor under no_grad; now it is a state change on every path."""
    torch = pytest.importorskip("torch")
    x = torch.ones(4, 2, requires_grad=True)
    for grad, checkpoint in [(True, False), (False, False), (True, True)]:
        with torch.set_grad_enabled(grad), pytest.raises(TypeError, match="returned None"):
            ds.chunk_multi_step_forward(
                2, x, lambda c, s: (c * 2, None), state=torch.zeros(2), checkpoint=checkpoint
            )


def test_torch_autocast_may_lower_a_floating_state():
    torch = pytest.importorskip("torch")
    linear = torch.nn.Linear(3, 3)
    x = torch.randn(4, 2, 3)

    def recurrent(xt, v):
        v = linear(v + xt)  # bfloat16 under autocast
        return v, v

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, v = ds.multi_step_forward(x, recurrent, state=torch.zeros(2, 3))
        want_v = torch.zeros(2, 3)
        for t in range(4):
            want_v = linear(want_v + x[t])
    assert v.dtype == want_v.dtype == torch.bfloat16
    torch.testing.assert_close(v, want_v)
    torch.testing.assert_close(y[-1], want_v)


# --- split sizes beyond any length (item 11) ------------------------------------------------


@pytest.mark.parametrize("split", [np.uint64(2**64 - 1), 2**70, np.int64(2**62)])
def test_huge_split_size_is_one_chunk(backend, split):
    x = np.arange(6.0).reshape(3, 2)
    calls = []

    def module(c):
        calls.append(c.shape[0])
        return c * 2

    ds.clear_jax_cache()  # so that JAX traces the module: one call per chunk
    got = ds.chunk_multi_step_forward(split, backend.asarray(x), module)
    np.testing.assert_array_equal(backend.to_numpy(got), x * 2)
    assert calls == [3]


def test_dataclass_and_named_tuple_states_on_every_backend(backend):
    """The tree helper walks dataclasses and named tuples on every backend; the final state
    keeps the class, the rule checks its fields (issue 18, item 6)."""
    import collections
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class State:
        v: object
        a: object

    Pair = collections.namedtuple("Pair", "v a")
    x = backend.asarray(np.linspace(0, 1, 12).reshape(6, 2).astype(np.float32))
    zeros = backend.asarray(np.zeros(2, np.float32))
    for cls in (Pair, State) if backend.name != "jax" else (Pair,):

        def step(xt, s, cls=cls):
            v = 0.5 * s.v + xt - s.a
            return v, cls(v=v, a=0.9 * s.a + 0.1 * v)

        y, s = ds.multi_step_forward(x, step, state=cls(v=zeros, a=zeros))

        def as_dict(xt, s, step=step, cls=cls):
            y, new = step(xt, cls(**s))
            return y, {"v": new.v, "a": new.a}

        y_dict, s_dict = ds.multi_step_forward(x, as_dict, state={"v": zeros, "a": zeros})
        assert type(s) is cls
        np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(y_dict))
        np.testing.assert_array_equal(backend.to_numpy(s.a), backend.to_numpy(s_dict["a"]))
        with pytest.raises(
            TypeError,
            match=r"`state.a` was float32 of shape \(2,\)|"
            r"`state\[1\]` was float32 of shape \(2,\)",
        ):
            ds.multi_step_forward(
                x, lambda xt, s, cls=cls: (xt, cls(v=s.v, a=s.a[:1])), state=cls(v=zeros, a=zeros)
            )

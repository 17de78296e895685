"""Bad input: the same exception type on every backend, a message naming the argument."""

from __future__ import annotations

import re

import numpy as np
import pytest
from support import MAKERS

import dualstep as ds
from dualstep.testing import FUNCTIONS, STATEFUL_FUNCTIONS, call


def _identity(x):
    return x


def _chunk_identity(x):
    return x


def _call(name, x, module, **kwargs):
    """`name` on `x` in its own layout, `module` given to it as it is (a chunk module too)."""
    return call(name, module, x, as_given=True, **kwargs)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(
    "bad", [[[1.0, 2.0]], 3.0, "x", None], ids=["list", "float", "str", "None"]
)
def test_unsupported_x_seq_is_type_error(name, bad):
    with pytest.raises(TypeError, match=r"`x_seq` must be a torch.Tensor.*; got builtins\."):
        _call(name, bad, _identity)


@pytest.mark.parametrize("name", STATEFUL_FUNCTIONS)
def test_tuple_x_seq_rejected_by_multi_step_functions(backend, name):
    x = backend.asarray(np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"`x_seq`.*got builtins\.tuple"):
        _call(name, (x, x), _identity)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("multi_step_forward", ()),
        ("t_last_multi_step_forward", ()),
        ("chunk_multi_step_forward", ()),
        ("seq_to_ann_forward", (3,)),
        ("t_last_seq_to_ann_forward", ()),
    ],
)
def test_too_few_dimensions_is_value_error(backend, name, shape):
    x = backend.asarray(np.ones(shape))
    with pytest.raises(
        ValueError, match=r"`x_seq` must have at least .*got shape " + re.escape(str(shape))
    ):
        _call(name, x, _identity)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("multi_step_forward", (0, 2)),
        ("t_last_multi_step_forward", (2, 0)),
        ("chunk_multi_step_forward", (0, 2)),
        ("t_last_seq_to_ann_forward", (2, 0)),
    ],
)
def test_zero_time_steps_is_value_error(backend, name, shape):
    x = backend.asarray(np.ones(shape))
    with pytest.raises(ValueError, match=r"`x_seq` must have at least one time step .*got shape"):
        _call(name, x, _identity)


def test_zero_time_steps_fine_for_seq_to_ann(backend):
    y = ds.seq_to_ann_forward(backend.asarray(np.ones((0, 2, 3))), _identity)
    assert tuple(y.shape) == (0, 2, 3)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_empty_batch_works(backend, name):
    shape = (2, 0, 3) if "t_last" not in name else (0, 3, 2)
    x = backend.asarray(np.ones(shape))
    assert tuple(_call(name, x, _identity).shape) == shape


def test_empty_batch_works_with_state(backend):
    x = backend.asarray(np.ones((4, 0, 3)))
    y, v = ds.multi_step_forward(
        x, lambda x, v: (x + v, x + v), state=backend.asarray(np.zeros((0, 3)))
    )
    assert tuple(y.shape) == (4, 0, 3) and tuple(v.shape) == (0, 3)


@pytest.mark.parametrize(
    "bad", [True, 2.0, "2", None, [2]], ids=["bool", "float", "str", "None", "list"]
)
def test_split_size_of_wrong_type_is_type_error(backend, bad):
    x = backend.asarray(np.ones((4, 2)))
    with pytest.raises(TypeError, match=r"`split_size` must be a positive int; got"):
        ds.chunk_multi_step_forward(bad, x, _identity)


@pytest.mark.parametrize("bad", [0, -1, np.int64(0)])
def test_split_size_not_positive_is_value_error(backend, bad):
    x = backend.asarray(np.ones((4, 2)))
    with pytest.raises(ValueError, match=rf"`split_size` must be a positive int; got {int(bad)}"):
        ds.chunk_multi_step_forward(bad, x, _identity)


@pytest.mark.parametrize("split", [np.int64(3), np.int32(3), np.uint8(3)])
def test_numpy_integer_split_size_accepted(backend, split):
    x = np.arange(7.0).reshape(7, 1)
    y = ds.chunk_multi_step_forward(split, backend.asarray(x), _chunk_identity)
    np.testing.assert_array_equal(backend.to_numpy(y), x)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_non_callable_module_is_type_error(backend, name):
    x = backend.asarray(np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"_module` must be a callable .*; got int"):
        _call(name, x, 42)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_list_with_non_callable_is_type_error(backend, name):
    x = backend.asarray(np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"_module\[1\]` must be callable; got str"):
        _call(name, x, [_identity, "relu"])


@pytest.mark.parametrize("name", STATEFUL_FUNCTIONS)
def test_state_length_mismatch_is_value_error(backend, name):
    x = backend.asarray(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"`state` must have one entry per module .*\(2\); got 3"):
        _call(name, x, [_identity, _identity], state=(None, None, None))


@pytest.mark.parametrize("name", STATEFUL_FUNCTIONS)
def test_state_not_a_tuple_for_module_list_is_type_error(backend, name):
    x = backend.asarray(np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"`state` must be a tuple .*; got"):
        _call(name, x, [_identity, _identity], state=backend.asarray(np.zeros(2)))


@pytest.mark.parametrize("name", STATEFUL_FUNCTIONS)
def test_stateful_module_must_return_pair(backend, name):
    x = backend.asarray(np.ones((3, 2)))
    with pytest.raises(
        TypeError, match=r"must return a `\(y, state\)` pair; got tuple of length 3"
    ):
        _call(name, x, lambda x, s: (x, s, s), state=backend.asarray(np.zeros(2)))


def test_seq_to_ann_empty_tuple_is_value_error():
    with pytest.raises(ValueError, match=r"`x_seq` must be an array or a non-empty tuple"):
        ds.seq_to_ann_forward((), _identity)


@pytest.mark.parametrize("name", ["seq_to_ann_forward", "t_last_seq_to_ann_forward"])
@pytest.mark.parametrize(
    "kinds", [("torch", "numpy"), ("jax", "numpy"), ("numpy", "torch"), ("jax", "torch")]
)
def test_tuple_mixing_array_kinds_is_type_error(name, kinds):
    first, second = (MAKERS[k]() for k in kinds)
    x = np.ones((3, 2, 2))
    with pytest.raises(TypeError, match=r"`x_seq\[1\]` must be the same kind of array"):
        _call(name, (first.asarray(x), second.asarray(x)), lambda a, b: a)


def test_t_last_tuple_time_axes_must_match(backend):
    pair = (backend.asarray(np.ones((2, 3))), backend.asarray(np.ones((2, 4))))
    with pytest.raises(ValueError, match=r"same last \(time\) dimension; got shapes"):
        ds.t_last_seq_to_ann_forward(pair, lambda a, b: a)


class Boom(Exception):
    pass


def _failing_at_call(n: int):
    """A module that raises a fresh exception object on its n-th call (0-based)."""
    calls = []
    error = Boom(f"call {n}")

    def module(*args):
        calls.append(1)
        if len(calls) - 1 == n:
            raise error
        return args[0] if len(args) == 1 else args

    return module, error


@pytest.mark.parametrize("name", FUNCTIONS)
def test_module_exception_propagates_unchanged(backend, name):
    module, error = _failing_at_call(0)
    x = backend.asarray(np.ones((4, 2)))
    with pytest.raises(Boom) as info:
        _call(name, x, module)
    assert info.value is error


# Not on JAX: lax.scan traces the step once, so a failure at a later step cannot be expressed.
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("step", [1, 3])
def test_exception_at_a_later_step_propagates(kind, step):
    backend = MAKERS[kind]()
    module, error = _failing_at_call(step)
    with pytest.raises(Boom) as info:
        ds.multi_step_forward(backend.asarray(np.ones((4, 2))), module)
    assert info.value is error


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_exception_in_any_chunk_propagates(kind, chunk):
    module, error = _failing_at_call(chunk)
    with pytest.raises(Boom) as info:
        ds.chunk_multi_step_forward(3, MAKERS[kind]().asarray(np.ones((7, 2))), module)
    assert info.value is error


def test_exception_in_last_chunk_propagates(backend):
    error = Boom("short chunk")

    def module(xc, s):
        if xc.shape[0] != 3:
            raise error
        return xc, s

    with pytest.raises(Boom) as info:
        ds.chunk_multi_step_forward(
            3, backend.asarray(np.ones((7, 2))), module, state=backend.asarray(np.zeros(2))
        )
    assert info.value is error


@pytest.mark.parametrize("name", FUNCTIONS)
def test_inputs_never_modified(backend, name):
    x = np.linspace(-1, 1, 24).reshape(4, 3, 2)
    xb, v0 = (
        backend.asarray(x),
        backend.asarray(np.full((3, 2), 0.5) if "t_last" not in name else np.full((4, 3), 0.5)),
    )

    def step(x, v):
        return x * 2 + v, v + x

    if name in STATEFUL_FUNCTIONS:
        call(name, step, xb, state=v0)
        np.testing.assert_array_equal(backend.to_numpy(v0), np.full(tuple(v0.shape), 0.5))
    _call(name, xb, lambda a: a * 3)
    np.testing.assert_array_equal(backend.to_numpy(xb), x)

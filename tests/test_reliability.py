"""Faults, concurrency, numerics and input safety across all backends."""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util

import numpy as np
import pytest
from support import MAKERS

import dualstep as ds
from dualstep.testing import BACKENDS, FUNCTIONS, call_time_first, if_step, lif_step


class Boom(Exception):
    pass


def _time_first(backend, name, module, x):
    """`name` on NumPy `x` ``[T, ...]`` made a `backend` array, time first in and out
    (the catalogue moves time for the time-last functions); the output as NumPy."""
    y, _ = call_time_first(name, module, backend.asarray(x))
    return backend.to_numpy(y)


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
def test_after_a_failed_call_the_same_step_works_normally(backend, name):
    """The failure happens while tracing on JAX (eager calls compile); nothing stays broken."""
    error = Boom("first call fails")
    failing = [True]

    def step(a):
        if failing[0]:
            raise error
        return a * 2 + 1

    x = np.linspace(-1, 1, 24).reshape(4, 3, 2)
    with pytest.raises(Boom) as info:
        _time_first(backend, name, step, x)
    assert info.value is error
    failing[0] = False
    got = _time_first(backend, name, step, x)
    np.testing.assert_array_equal(got, x * 2 + 1)


@pytest.mark.parametrize("kind", BACKENDS)
def test_failure_in_a_middle_chunk_returns_nothing_half_written(kind):
    """No-grad torch writes chunks into one preallocated result: a failure must not leak it."""
    backend = MAKERS[kind]()
    error = Boom("chunk 2")
    calls = []

    def module(c):
        calls.append(1)
        if len(calls) == 2 and fail:
            raise error
        return c + 1

    x = backend.asarray(np.zeros((7, 2)))
    for fail in (True, False):
        calls.clear()
        ctx = __import__("torch").no_grad() if kind == "torch" else contextlib.nullcontext()
        with ctx:
            if fail:
                with pytest.raises(Boom) as info:
                    ds.chunk_multi_step_forward(3, x, module)
                assert info.value is error
            else:
                y = ds.chunk_multi_step_forward(3, x, module)
    np.testing.assert_array_equal(backend.to_numpy(y), np.ones((7, 2)))
    np.testing.assert_array_equal(backend.to_numpy(x), np.zeros((7, 2)))


def test_exception_inside_torch_vmap_and_jax_vmap_is_the_same_object():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    for x in (torch.ones(2, 3), jnp.ones((2, 3))):
        error = Boom("inside vmap")

        def module(a, error=error):
            raise error

        with pytest.raises(Boom) as info:
            ds.t_last_seq_to_ann_forward(x, module)
        assert info.value is error


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch", "jax"])
def test_many_threads_with_different_steps_and_shapes(kind):
    backend = MAKERS[kind]()
    steps = {"if": if_step(), "lif": lif_step(), "lif_soft": lif_step(v_reset=None)}
    jobs = []
    rng = np.random.default_rng(0)
    for i in range(48):
        name = FUNCTIONS[i % 5]
        step_name = list(steps)[i % 3]
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 4)), int(rng.integers(1, 5)))
        x = (rng.integers(-16, 17, shape) / 8).astype(np.float32)
        jobs.append((name, step_name, x))

    def stateless(step):
        return lambda a: step(a, a * 0)[0]

    def run(job):
        name, step_name, x = job
        return _time_first(backend, name, stateless(steps[step_name]), x)

    def oracle(job):
        _, step_name, x = job
        want = ds.multi_step_forward(x.astype(np.float64), stateless(steps[step_name]))
        return want.astype(np.float32)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    for job, got in zip(jobs, results, strict=True):
        np.testing.assert_allclose(got, oracle(job), rtol=2e-6, atol=2e-6)


# --- numerics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
def test_nan_and_inf_propagate_exactly_as_the_plain_loop(backend, name):
    x = np.array([0.5, np.nan, np.inf, -np.inf, 1.5, 0.0] * 4).reshape(4, 3, 2)

    def step(a):
        return a * 2 - 1

    got = _time_first(backend, name, step, x)
    want = np.stack([step(xt) for xt in x])
    np.testing.assert_array_equal(got, want)  # NaN where the loop has NaN, same infinities


def _dtypes(kind):
    names = ["float16", "float32", "float64"]
    # bfloat16 arrays are made in NumPy through ml_dtypes, which JAX installs (torch does not).
    bf16 = kind != "numpy" and importlib.util.find_spec("ml_dtypes") is not None
    return names + (["bfloat16"] if bf16 else [])


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_float_dtypes_are_kept(kind, name, request):
    if kind != "numpy":
        pytest.importorskip(kind)
    if kind == "jax":
        request.getfixturevalue("jax_x64")
    from dualstep import interop

    convert = {"numpy": interop.to_numpy, "torch": interop.to_torch, "jax": interop.to_jax}[kind]
    for dtype in _dtypes(kind):
        x = np.linspace(-1, 1, 12).reshape(2, 3, 2)
        if dtype == "bfloat16":
            import ml_dtypes

            xa = x.astype(ml_dtypes.bfloat16)
        else:
            xa = x.astype(dtype)
        y, _ = call_time_first(name, lambda a: a * 0.5 + 1, convert(xa))
        assert str(y.dtype).removeprefix("torch.") == dtype, (dtype, y.dtype)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_and_bool_inputs_pass_through_untouched(backend, name, dtype, request):
    if backend.name == "jax":
        request.getfixturevalue("jax_x64")
    x = (np.arange(24).reshape(4, 3, 2) % 3).astype(dtype)
    got = _time_first(backend, name, lambda a: a, x)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, x)


# --- inputs never modified ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no_grad", "checkpoint"])
def test_chunk_fast_paths_leave_inputs_and_state_untouched(mode):
    torch = pytest.importorskip("torch")
    x = torch.linspace(-1, 1, 42).reshape(7, 3, 2)
    v0 = torch.full((3, 2), 0.5)
    x_before, v_before = x.clone(), v0.clone()

    def module(c, v):  # would corrupt its inputs if the library handed out its buffers
        return ds.multi_step_forward(c, lambda a, s: (a + s, s + a), state=v)

    with torch.set_grad_enabled(mode == "checkpoint"):
        xg = x.requires_grad_(mode == "checkpoint")
        y, v = ds.chunk_multi_step_forward(3, xg, module, state=v0, checkpoint=mode == "checkpoint")
        y.add_(1) if mode == "no_grad" else y.sum().backward()
        v.mul_(0) if mode == "no_grad" else None
    assert torch.equal(x.detach(), x_before) and torch.equal(v0, v_before)

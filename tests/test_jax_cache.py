"""The eager JAX compile cache: arrays a step reads through its structure are arguments.

Every test checks values against a plain Python loop, and counts traces (Python calls of the
step) to tell a reused program from a recompiled one.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import threading
import weakref
from collections import OrderedDict, namedtuple

import numpy as np
import pytest

import dualstep as ds

jax = pytest.importorskip("jax")
jnp = jax.numpy

X = jnp.asarray(np.linspace(-1.0, 2.0, 12).reshape(4, 3), jnp.float32)
S0 = jnp.zeros(3, jnp.float32)


def plain(step, x=X, s=S0):
    """The reference: the step called in a Python loop."""
    ys = []
    for t in range(x.shape[0]):
        y, s = step(x[t], s)
        ys.append(y)
    return np.stack([np.asarray(y) for y in ys]), np.asarray(s)


def run(step, x=X, s=S0):
    y, s = ds.multi_step_forward(x, step, state=s)
    return np.asarray(y), np.asarray(s)


def check(step):
    want = plain(step)
    got = run(step)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


class Traces:
    """Counts how often JAX traces the wrapped code (a Python call under a tracer)."""

    def __init__(self):
        self.n = 0

    def __call__(self, x):
        if isinstance(x, jax.core.Tracer):
            self.n += 1
        return x


TRACES = Traces()


class Net:
    def __init__(self, w, tau=2.0):
        self.w = w
        self.tau = tau

    def step(self, x, s):
        s = TRACES(s + (self.w * x - s) / self.tau)
        return jnp.tanh(s), s


def test_bound_method_sees_new_weights_without_recompiling():
    net = Net(jnp.float32(1.0))
    check(net.step)
    before = TRACES.n
    for w in (0.5, -2.0, 3.0):
        net.w = jnp.float32(w)
        check(net.step)
    assert TRACES.n == before, "changing an array attribute recompiled"


def test_python_scalar_attributes_are_static_and_seen():
    """The issue's example: `net.w` a Python float; a new value recompiles, never stale."""
    net = Net(1.0)
    first = run(net.step)
    net.w = 0.5
    second = run(net.step)
    check(net.step)
    assert not np.allclose(first[1], second[1])
    net.tau = 4.0
    check(net.step)


def test_negative_zero_and_zero_are_different_keys():
    y_pos = run(functools.partial(lambda x, s, c: (x * c, s), c=0.0))[0]
    y_neg = run(functools.partial(lambda x, s, c: (x * c, s), c=-0.0))[0]
    positive = np.asarray(X) > 0
    assert np.signbit(y_neg[positive]).all() and not np.signbit(y_pos[positive]).any()


def _weighted(x, s, w, bias=0.0):
    s = TRACES(s + w * x + bias)
    return s, s


def test_new_partial_per_call_reuses_the_program():
    check(functools.partial(_weighted, w=jnp.float32(1.0)))
    before = TRACES.n
    for w in (2.0, 3.0, -1.0):
        check(functools.partial(_weighted, w=jnp.float32(w)))
        check(functools.partial(_weighted, w=jnp.float32(w), bias=jnp.float32(0.5)))
    # the second form (an extra keyword) is one more structure, traced once
    assert TRACES.n == before + 1


def _closure(w, b):
    def step(x, s):
        s = TRACES(s * b + w * x)
        return s, s

    return step


def test_new_closure_per_call_reuses_the_program():
    check(_closure(jnp.float32(1.0), jnp.ones(3)))
    before = TRACES.n
    for w in (2.0, 0.25):
        check(_closure(jnp.float32(w), jnp.full(3, w, jnp.float32)))
    assert TRACES.n == before


def test_defaults_slots_dict_subclasses_named_tuples_and_numpy_arrays():
    Params = namedtuple("Params", "w b")

    @dataclasses.dataclass(slots=True)
    class Slotted:
        w: object

    params = Params(jnp.float32(2.0), np.float32(1.0))

    def with_default(x, s, p=params):
        return s + p.w * x + p.b, s + 1

    check(with_default)
    slotted = Slotted(jnp.ones(3))
    check(lambda x, s: (x * slotted.w, s))
    slotted.w = jnp.full(3, 3.0)
    check(lambda x, s: (x * slotted.w, s))
    weights = OrderedDict(w=jnp.float32(1.5))
    check(lambda x, s: (x * weights["w"], s))


def test_numpy_array_mutated_in_place_is_seen():
    w = np.ones(3, np.float32)
    step = functools.partial(_weighted, w=w)
    check(step)
    w *= 3.0
    check(step)


def test_equinox_module_is_cached_and_sees_new_weights():
    eqx = pytest.importorskip("equinox")

    class Cell(eqx.Module):
        w: jax.Array
        tau: float = eqx.field(static=True, default=2.0)

        def __call__(self, x, s):
            s = TRACES(s + (self.w * x - s) / self.tau)
            return jnp.tanh(s), s

    check(Cell(jnp.ones(3)))
    before = TRACES.n
    for w in (0.5, 4.0):
        cell = Cell(jnp.full(3, w, jnp.float32))
        check(cell)
        check(eqx.Partial(lambda x, s, c: c(x, s), c=cell))
    check(Cell(jnp.ones(3)).__call__)  # an Equinox bound method is a pytree too
    assert TRACES.n == before + 2


def test_flax_nnx_training_loop_sees_each_update():
    """The issue's report: eager losses stayed at 0.021038 for three optimiser steps."""
    nnx = pytest.importorskip("flax.nnx")
    optax = pytest.importorskip("optax")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x, s):
            s = 0.5 * s + self.linear(x)
            return jnp.tanh(s), s

    def losses(eager: bool) -> list[float]:
        model = Model(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
        out = []
        for _ in range(3):
            y = run(model)[0] if eager else plain(model)[0]
            out.append(float(y.mean()))

            def loss(m):
                ys, _ = ds.multi_step_forward(X, m, state=S0)
                return ys.mean()

            optimizer.update(model, nnx.grad(loss)(model))
        return out

    eager, loop = losses(True), losses(False)
    np.testing.assert_allclose(eager, loop, rtol=1e-5)
    assert len(set(np.round(eager, 6))) == 3


def test_flax_nnx_graph_node_through_split():
    nnx = pytest.importorskip("flax.nnx")

    class Graph(nnx.Module, pytree=False):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x, s):
            return self.linear(x) + s, s

    model = Graph(nnx.Rngs(1))
    check(model)
    model.linear.kernel[...] = jnp.eye(3)
    check(model)


def _alive_after_call(make):
    step, arrays = make()
    refs = [weakref.ref(step), *(weakref.ref(a) for a in arrays)]
    run(step)
    del step, arrays
    gc.collect()
    return [r() is not None for r in refs]


@pytest.mark.parametrize("kind", ["method", "partial", "closure", "equinox"])
def test_cache_holds_no_reference_to_steps_or_their_arrays(kind):
    def make():
        w = jnp.asarray(np.random.default_rng(0).normal(size=3), jnp.float32)
        if kind == "method":
            net = Net(w)
            return net, [w]  # a bound method is made per attribute access; the object is kept
        if kind == "partial":
            return functools.partial(_weighted, w=w), [w]
        if kind == "closure":
            return _closure(w, w + 1), [w]
        eqx = pytest.importorskip("equinox")

        class Cell(eqx.Module):
            w: jax.Array

            def __call__(self, x, s):
                return x * self.w, s

        return Cell(w), [w]

    if kind == "method":
        net, arrays = make()
        refs = [weakref.ref(net), *(weakref.ref(a) for a in arrays)]
        run(net.step)
        del net, arrays
        gc.collect()
        assert all(r() is None for r in refs)
        return
    assert not any(_alive_after_call(make))


def test_cycles_run_uncached_and_correct_and_say_so_once():
    class Loop:
        def __init__(self, w):
            self.w = w
            self.me = self

        def step(self, x, s):
            return x * self.me.w, s

    net = Loop(jnp.float32(2.0))
    with pytest.warns(UserWarning, match=r"cannot cache the JAX step .*Loop\.step \(the step's"):
        check(net.step)
    net.w = jnp.float32(3.0)
    check(net.step)  # no second warning (warnings are errors here)


def test_outer_tracer_in_the_step_with_a_concrete_input():
    def loss(w):
        return ds.multi_step_forward(X, functools.partial(_weighted, w=w), state=S0)[0].sum()

    def plain_loss(w):
        s, total = S0, 0.0
        for t in range(X.shape[0]):
            s = s + w * X[t]
            total = total + s.sum()
        return total

    w = jnp.float32(0.3)
    np.testing.assert_allclose(jax.grad(loss)(w), jax.grad(plain_loss)(w), rtol=1e-6)


def _custom_vjp_spike(alpha):
    """A sigmoid-surrogate spike as JAX users write one."""

    @jax.custom_vjp
    def spike(h):
        return (h >= 0).astype(h.dtype)

    def backward(h, g):
        s = jax.nn.sigmoid(alpha * h)
        return (g * alpha * s * (1.0 - s),)

    spike.defvjp(lambda h: (spike(h), h), backward)
    return spike


def _surrogate_closure(alpha, spike=None):
    # a jax.custom_vjp (or a dualstep surrogate), held in a local variable
    spike = _custom_vjp_spike(alpha) if spike is None else spike

    def step(x, v):
        v = TRACES(v + (x - v) * 0.5)
        s = spike(v - 1.0)
        return s, v * (1.0 - s)

    return step


def test_a_custom_vjp_surrogate_in_a_closure_is_cached():
    """Its attributes refer back to one another: the walk gave up ("too deep or has a
    cycle") and every eager call traced and compiled. Now it is keyed by identity."""
    step = _surrogate_closure(4.0)
    check(step)
    before = TRACES.n
    for _ in range(3):
        check(step)
    assert TRACES.n == before
    check(_surrogate_closure(4.0))  # a new surrogate object: one more program, correct
    assert TRACES.n == before + 1


def test_a_dualstep_surrogate_is_keyed_by_its_parameters():
    """`dualstep.surrogate` objects are compared by value: an equal one reuses the program,
    another alpha compiles one more."""
    from dualstep import surrogate

    check(_surrogate_closure(4.0, surrogate.Sigmoid(4.0)))
    before = TRACES.n
    check(_surrogate_closure(4.0, surrogate.Sigmoid(4.0)))
    assert TRACES.n == before
    check(_surrogate_closure(2.0, surrogate.Sigmoid(2.0)))
    assert TRACES.n == before + 1


def test_a_jitted_function_as_the_step_is_cached():
    """``jnp.tanh`` is a jitted function, whose attributes the walk could not key."""
    x = jnp.linspace(-2.0, 2.0, 12).reshape(4, 3)
    for _ in range(2):
        np.testing.assert_allclose(ds.multi_step_forward(x, jnp.tanh), jnp.tanh(x), rtol=1e-6)


def test_eager_grad_of_seq_to_ann_then_multi_step_is_cached():
    """Under ``jax.value_and_grad`` without ``jit`` the sequence is a tracer: the cached path
    was skipped and the scan traced on every call. Now each program is traced once, and the
    gradients are those of ``jax.jit`` of the same function."""
    w = jnp.asarray(np.linspace(-1.0, 1.0, 9).reshape(3, 3), jnp.float32)
    x = jnp.stack([X, 2.0 * X], axis=1)  # [T, B, N] = [4, 2, 3]
    step = _surrogate_closure(4.0)

    def loss(w, x):
        h = ds.seq_to_ann_forward(x, lambda a: a @ w)
        y, _ = ds.multi_step_forward(h, step, state=jnp.zeros((2, 3)))
        return y.sum() + (h * h).sum()

    grad = jax.value_and_grad(loss)
    want = jax.jit(grad)(w, x)
    got = grad(w, x)
    before = TRACES.n
    for _ in range(3):
        got = grad(w, x)
    assert TRACES.n == before
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


# What the cache cannot see: each is listed in the docs ("JAX") with this test.

GLOBAL_W = jnp.float32(1.0)


def _reads_global(x, s):
    return x * GLOBAL_W, s


def test_unseen_module_level_global_rebound_until_cleared():
    global GLOBAL_W
    first = run(_reads_global)[0]
    GLOBAL_W = jnp.float32(5.0)
    try:
        stale = run(_reads_global)[0]
        np.testing.assert_array_equal(stale, first)  # baked in at the first trace
        ds.clear_jax_cache()
        np.testing.assert_allclose(run(_reads_global)[0], np.asarray(X) * 5.0)
    finally:
        GLOBAL_W = jnp.float32(1.0)


class WithClassAttribute:
    scale = jnp.float32(1.0)

    def step(self, x, s):
        return x * self.scale, s


def test_unseen_class_attribute_rebound_unless_the_cache_is_off():
    obj = WithClassAttribute()
    first = run(obj.step)[0]
    WithClassAttribute.scale = jnp.float32(7.0)
    try:
        np.testing.assert_array_equal(run(obj.step)[0], first)
        previous = ds.set_jax_cache(False)
        try:
            np.testing.assert_allclose(run(obj.step)[0], np.asarray(X) * 7.0)
        finally:
            ds.set_jax_cache(previous)
    finally:
        WithClassAttribute.scale = jnp.float32(1.0)


def test_cache_off_traces_every_call():
    step = functools.partial(_weighted, w=jnp.float32(1.0))
    previous = ds.set_jax_cache(False)
    try:
        before = TRACES.n
        check(step)
        check(step)
        assert TRACES.n >= before + 2
    finally:
        ds.set_jax_cache(previous)
    with pytest.raises(TypeError, match="`enabled` must be a bool; got int"):
        ds.set_jax_cache(1)


def test_threads_with_different_weights_get_their_own_results():
    results: dict[int, tuple] = {}

    def work(i):
        for _ in range(5):
            results[i] = run(functools.partial(_weighted, w=jnp.float32(i)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in results.items():
        want = plain(functools.partial(_weighted, w=jnp.float32(i)))
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_frozen_dataclass_and_objects_that_refuse_copying():
    @dataclasses.dataclass(frozen=True)
    class Frozen:
        w: object

        def step(self, x, s):
            return x * self.w, s

    class NoCopy:
        def __init__(self, w):
            self.w = w

        def __copy__(self):
            raise RuntimeError("no copies")

        def step(self, x, s):
            return x * self.w, s

    for make in (Frozen, NoCopy):
        check(make(jnp.float32(2.0)).step)
        check(make(jnp.float32(-3.0)).step)


def test_closure_with_an_empty_cell():
    def make(scaled):
        def step(x, s):
            return (x * w if scaled else x), TRACES(s)

        if scaled:
            w = jnp.float32(3.0)
        return step

    for scaled in (False, True):
        check(make(scaled))
    before = TRACES.n
    check(make(False))  # the empty cell is part of the key: the same program again
    assert TRACES.n == before

"""JAX lowering: one scan, a compile cache for eager calls, composition with jit/vmap/grad."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import dualstep as ds
from dualstep.testing import FUNCTIONS, STATEFUL_FUNCTIONS, call_time_first, lif_step

jax = pytest.importorskip("jax")
jnp = jax.numpy
lax = jax.lax


_CALLS: dict[object, list] = {}


def _counting(step):
    """Wrap `step` so the number of Python calls (= traces under JAX) is recorded.

    The record lives in a module global: a list in the closure would be part of the step's
    structure, which the compile cache keys by value (a growing list recompiles every call).
    """
    token = len(_CALLS)
    _CALLS[token] = calls = []

    def wrapped(*args):
        _CALLS[token].append(1)
        return step(*args)

    return wrapped, calls


def _eager_call(name, step):
    """One eager call of `name`, time first; a stateless function gets the step's output."""
    if name in STATEFUL_FUNCTIONS:
        return lambda x: call_time_first(name, step, x, state=jnp.zeros(x.shape[1:]), split_size=3)

    def first_output(a):
        return step(a, a)[0]

    return lambda x: call_time_first(name, first_output, x)


# seq_to_ann_forward runs the module eagerly, without a compiled program
@pytest.mark.parametrize("name", [f for f in FUNCTIONS if f != "seq_to_ann_forward"])
def test_eager_repeat_call_does_not_retrace(name):
    step, calls = _counting(lif_step())
    call = _eager_call(name, step)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 2, 3)), jnp.float32)
    first = call(x)
    traced = len(calls)
    assert traced > 0
    second = call(x + 0.0)
    assert len(calls) == traced, "a repeat eager call with the same step and shapes retraced"
    jax.tree.map(np.testing.assert_array_equal, first, second)
    call(jnp.ones((7, 4, 3)))  # a new shape traces again
    assert len(calls) > traced


def test_multi_step_is_one_scan_over_time():
    x = jnp.ones((9, 2, 3))
    jaxpr = jax.make_jaxpr(lambda x, v: ds.multi_step_forward(x, lif_step(), state=v))(
        x, jnp.zeros((2, 3))
    )
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 9


@pytest.mark.parametrize(
    ("steps", "split", "scan_length", "remainder"),
    [(7, 3, 2, True), (9, 3, 3, False), (2, 5, None, True)],
)
def test_chunk_is_one_scan_over_full_chunks_plus_remainder(steps, split, scan_length, remainder):
    calls = []

    def chunk_module(xc, s):
        calls.append(xc.shape[0])
        return jnp.cumsum(xc, 0) + s, s + xc.sum(0)

    jaxpr = jax.make_jaxpr(
        lambda x, s: ds.chunk_multi_step_forward(split, x, chunk_module, state=s)
    )(jnp.ones((steps, 2)), jnp.zeros(2))
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert [e.params["length"] for e in scans] == ([scan_length] if scan_length else [])
    assert calls == ([split] if scan_length else []) + ([steps % split] if remainder else [])


def test_inside_jit_vmap_and_grad():
    step = lif_step(spike="sigmoid")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 2, 3)), jnp.float32)
    v0 = jnp.zeros((2, 3))
    eager = [ds.multi_step_forward(xi, step, state=v0)[0] for xi in x]
    batched = jax.jit(jax.vmap(lambda xi: ds.multi_step_forward(xi, step, state=v0)[0]))(x)
    np.testing.assert_allclose(batched, jnp.stack(eager), rtol=1e-6, atol=1e-6)

    def loss(v):
        return ds.multi_step_forward(x[0], step, state=v)[0].sum()

    def plain_loss(v):
        ys = []
        for t in range(x.shape[1]):
            y, v = step(x[0, t], v)
            ys.append(y)
        return jnp.stack(ys).sum()

    np.testing.assert_allclose(
        jax.jit(jax.grad(loss))(v0), jax.grad(plain_loss)(v0), rtol=1e-5, atol=1e-6
    )


def test_step_closing_over_outer_tracer_under_grad():
    x = jnp.ones((5, 3))

    def loss(w):
        y, _ = ds.multi_step_forward(
            x, lambda xt, v: (jnp.tanh(w * xt + v), v + 1), state=jnp.zeros(3)
        )
        return y.sum()

    def plain(w):
        return sum(jnp.tanh(w * x[t] + t).sum() for t in range(5))

    np.testing.assert_allclose(jax.grad(loss)(0.3), jax.grad(plain)(0.3), rtol=1e-5)


def _scale(k):
    """A step of its own program (`k` is static), counting its traces in `_CALLS[("scale", k)]`."""
    _CALLS[("scale", k)] = []

    def step(a, k=k):
        _CALLS[("scale", k)].append(1)
        return a * k

    return step


def test_cache_keeps_the_128_most_recently_used_programs():
    """The LRU of 128 programs (docs, "JAX"), seen through retraces only."""
    ds.clear_jax_cache()
    x = jnp.ones((1, 1))
    steps = [_scale(k) for k in range(130)]

    def traces_of(k):
        before = len(_CALLS[("scale", k)])
        np.testing.assert_array_equal(ds.multi_step_forward(x, steps[k]), x * k)
        return len(_CALLS[("scale", k)]) - before

    for k in range(128):
        assert traces_of(k) > 0  # 128 programs: the cache is full
    assert traces_of(0) == 0  # a hit, and 0 becomes the most recently used
    assert traces_of(128) > 0  # evicts 1, the least recently used
    assert traces_of(0) == 0
    assert traces_of(1) > 0  # compiled again (evicting 2)
    assert traces_of(129) > 0  # evicts 3
    assert traces_of(128) == 0 and traces_of(1) == 0


def test_unhashable_module_still_works():
    class Scale:
        __hash__ = None

        def __call__(self, a):
            return a * 2

    x = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(ds.multi_step_forward(x, Scale()), x * 2)


def test_cache_keeps_no_reference_to_user_arrays():
    x = jnp.ones((4, 2))
    v = jnp.zeros(2)
    refs = [weakref.ref(x), weakref.ref(v)]
    ds.multi_step_forward(x, lif_step(), state=v)
    del x, v
    gc.collect()
    assert all(r() is None for r in refs)


def test_all_five_under_jit_and_vmap():
    step = lif_step()
    x = jnp.asarray(np.random.default_rng(2).integers(-16, 17, size=(3, 7, 2, 4)) / 8, jnp.float32)

    def chunk_module(xc, s):
        return ds.multi_step_forward(xc, step, state=s)

    def all_five(xi):
        v0 = jnp.zeros(xi.shape[1:])
        return (
            ds.multi_step_forward(xi, step, state=v0)[0],
            jnp.moveaxis(
                ds.t_last_multi_step_forward(jnp.moveaxis(xi, 0, -1), step, state=v0)[0], -1, 0
            ),
            ds.chunk_multi_step_forward(3, xi, chunk_module, state=v0)[0],
            ds.seq_to_ann_forward(xi, jnp.tanh),
            jnp.moveaxis(ds.t_last_seq_to_ann_forward(jnp.moveaxis(xi, 0, -1), jnp.tanh), -1, 0),
        )

    batched = jax.jit(jax.vmap(all_five))(x)
    for i, xi in enumerate(np.asarray(x)):
        eager = [ds.multi_step_forward(xi, step, state=np.zeros(xi.shape[1:], np.float32))[0]] * 3
        eager += [np.tanh(xi)] * 2
        for got, want in zip(batched, eager, strict=True):
            np.testing.assert_allclose(np.asarray(got[i]), want, rtol=1e-6, atol=1e-6)


def test_seq_to_ann_row_order_t_major_eager_batch_major_under_trace():
    """Eager single-device calls flatten T-major like the other backends; under a trace the
    merge is batch-major so a batch-sharded input stays sharded (test_scale_out)."""
    x = np.arange(12.0).reshape(3, 2, 2)

    def running(a):  # depends on the order of the rows it is given
        return jnp.cumsum(a, axis=0)

    t_major = np.cumsum(x.reshape(6, 2), 0).reshape(3, 2, 2)
    b_major = np.swapaxes(np.cumsum(np.swapaxes(x, 0, 1).reshape(6, 2), 0).reshape(2, 3, 2), 0, 1)
    np.testing.assert_array_equal(ds.seq_to_ann_forward(jnp.asarray(x), running), t_major)
    jitted = jax.jit(lambda a: ds.seq_to_ann_forward(a, running))
    np.testing.assert_array_equal(jitted(jnp.asarray(x)), b_major)


# --- pytree states (issue 18, item 6) ---------------------------------------------------------


def _pytree_states():
    import dataclasses

    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class Registered:
        v: jax.Array
        a: jax.Array

    found = {"register_dataclass": Registered}
    try:
        from flax import struct

        @struct.dataclass
        class FlaxState:
            v: jax.Array
            a: jax.Array

        found["flax struct.dataclass"] = FlaxState
    except ImportError:
        pass
    try:
        import equinox as eqx

        class EqxState(eqx.Module):
            v: jax.Array
            a: jax.Array
            decay: float = eqx.field(static=True, default=0.9)

        found["equinox Module"] = EqxState
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("kind", list(_pytree_states()))
@pytest.mark.parametrize("function", STATEFUL_FUNCTIONS)
def test_registered_pytree_states_run_like_dicts(kind, function):
    """A registered dataclass, a Flax struct or an Equinox module as the state (JAX users keep
    neuron state this way; lax.scan takes it): the same results as a dict state, the final
    state of the same class, eager and under jit."""
    cls = _pytree_states()[kind]

    def as_class(x, s):
        v = 0.5 * s.v + x - s.a
        return v, cls(v=v, a=0.9 * s.a + 0.1 * v)

    def as_dict(x, s):
        v = 0.5 * s["v"] + x - s["a"]
        return v, {"v": v, "a": 0.9 * s["a"] + 0.1 * v}

    x = jnp.asarray(np.random.default_rng(0).random((7, 2, 3)), jnp.float32)
    zeros = jnp.zeros((2, 3))
    want_y, want_s = call_time_first(function, as_dict, x, state={"v": zeros, "a": zeros})
    for run in (call_time_first, jax.jit(call_time_first, static_argnums=(0, 1))):
        y, s = run(function, as_class, x, state=cls(v=zeros, a=zeros))
        assert type(s) is cls
        np.testing.assert_array_equal(np.asarray(y), np.asarray(want_y))
        np.testing.assert_array_equal(np.asarray(s.a), np.asarray(want_s["a"]))


def test_pytree_state_changes_and_unregistered_dataclasses_are_named():
    import dataclasses

    import equinox as eqx

    class Neuron(eqx.Module):
        v: jax.Array
        tau: float = eqx.field(static=True, default=2.0)

    x = jnp.ones((3, 2))
    with pytest.raises(TypeError, match=r"`state` was a Neuron with fields \['v'\] \(PyTreeDef"):
        ds.multi_step_forward(x, lambda x, s: (x, Neuron(s.v + x, tau=3.0)), state=Neuron(x[0]))

    @dataclasses.dataclass
    class Plain:
        v: jax.Array

    with pytest.raises(TypeError, match=r"it holds a Plain, a dataclass JAX cannot walk"):
        ds.multi_step_forward(x, lambda x, s: (x, s), state=Plain(x[0]))

"""`assert_implementations_close`: a model and its port, on two backends, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from dualstep.interop import module_to_jax
from dualstep.testing import assert_backends_close, assert_implementations_close

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy


def _sj_model():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(0)
    model = torch.nn.Sequential(layer.Linear(6, 5), neuron.LIFNode(tau=2.0, step_mode="s"))
    with torch.no_grad():
        model[0].weight.abs_()  # excitatory: the neurons fire
    return model.eval()


def _jax_port(params, tau=2.0, v_reset=0.0):
    w, b = params["0.weight"], params["0.bias"]

    def step(x, v):
        h = v + (x @ w.T + b - (v - 0.0)) / tau
        s = (h >= 1.0).astype(h.dtype)
        return s, s * v_reset + (1.0 - s) * h

    return step


def _input(t=12, b=3, n=6, seed=0):
    return (np.random.default_rng(seed).random((t, b, n)) * 1.5).astype(np.float32)


def test_spikingjelly_model_against_its_jax_port():
    model = _sj_model()
    port = _jax_port(module_to_jax(model))
    report = assert_implementations_close(
        model, port, _input(), candidate_state=jnp.zeros((3, 5), jnp.float32)
    )
    assert [(r.backend, r.leaf, r.ok) for r in report.rows] == [("jax vs torch", "y", True)]
    assert report.rows[0].max_abs_error == 0.0  # the same spikes


def test_a_port_that_drifts_is_reported_with_its_first_step_and_leaf():
    model = _sj_model()
    port = _jax_port(module_to_jax(model), tau=3.0)  # a wrong time constant
    with pytest.raises(AssertionError) as info:
        assert_implementations_close(
            model, port, _input(), candidate_state=jnp.zeros((3, 5), jnp.float32)
        )
    message = str(info.value)
    assert message.startswith("candidate (jax) differs from reference (torch):")
    report = assert_implementations_close(
        model, port, _input(), candidate_state=jnp.zeros((3, 5), jnp.float32), check=False
    )
    (row,) = report.rows
    assert not row.ok and isinstance(row.first_bad_step, int) and row.leaf == "y"
    # Re-run by hand: the first step where any spike differs is the one reported.
    y_ref = _run_torch(model, _input())
    y_port = np.stack(_run_jax(port, _input(), np.zeros((3, 5), np.float32)))
    differs = np.flatnonzero((y_ref != y_port).reshape(len(y_ref), -1).any(axis=1))
    assert row.first_bad_step == differs[0]
    assert f"{row.first_bad_step}" in message and "FAIL" in message


def _run_torch(model, x):
    for m in model.modules():
        if hasattr(m, "reset"):
            m.reset()
    with torch.no_grad():
        return np.stack([model(torch.from_numpy(xt)).numpy() for xt in x])


def _run_jax(step, x, v):
    v, ys = jnp.asarray(v), []
    for xt in x:
        y, v = step(jnp.asarray(xt), v)
        ys.append(np.asarray(y))
    return ys


def test_state_leaves_are_compared_when_both_sides_have_them():
    def reference(x, s):
        v = 0.5 * s["v"] + x
        return v, {"v": v, "n": s["n"] + 1.0}

    def port(x, s):  # the same, except a counter that drifts after the last output
        v = s["v"] / 2 + x
        return v, {"v": v, "n": s["n"] + 1.0 + 1e-3}

    x = _input(5, 2, 3)
    ref_state = {"v": np.zeros((2, 3), np.float32), "n": np.zeros((2, 3), np.float32)}
    cand_state = {k: jnp.asarray(v) for k, v in ref_state.items()}
    report = assert_implementations_close(
        reference, port, x, reference_state=ref_state, candidate_state=cand_state, check=False
    )
    rows = {r.leaf: r for r in report.rows}
    assert set(rows) == {"y", "state['n']", "state['v']"}
    assert rows["y"].ok and rows["state['v']"].ok
    assert rows["state['n']"].first_bad_step == "final state"
    assert [r.backend for r in report.rows] == ["jax vs numpy"] * 3


def test_structure_and_dtype_mismatches_are_rows():
    x = _input(4, 2, 3)

    def one(x):
        return x * 2

    def two(x):
        return x * 2, x

    report = assert_implementations_close(one, two, x, check=False)
    (row,) = report.rows
    assert row.first_bad_step == "structure"
    assert row.leaf == "candidate ['y[0]', 'y[1]'], reference ['y']"
    report = assert_implementations_close(one, lambda a: (a * 2).astype(np.float64), x, check=False)
    assert report.rows[0].first_bad_step == "dtype" and report.rows[0].dtype == "float64!=float32"


def test_backends_are_read_from_state_modules_or_given():
    x = _input(4, 2, 3)

    def step(a, v):
        return a + v, v

    v_np, v_jax = np.zeros((2, 3), np.float32), jnp.zeros((2, 3), jnp.float32)
    report = assert_implementations_close(
        torch.nn.Identity(), step, x, candidate_state=v_jax, compare_state=False
    )
    assert report.rows[0].backend == "jax vs torch"
    report = assert_implementations_close(
        step, step, x, reference_state=v_np, candidate_state=v_np, candidate_backend="torch"
    )
    assert report.rows[0].backend == "torch vs numpy"
    with pytest.raises(ValueError, match="`compare_state=True` needs"):
        assert_implementations_close(step, step, x, reference_state=v_np, compare_state=True)
    with pytest.raises(TypeError, match="`reference_backend` is needed"):
        assert_implementations_close(step, step, x.tolist(), candidate_backend="numpy")


def test_a_torch_only_step_checks_against_torch_in_float64():
    """The NumPy oracle cannot run a step written in torch ops; without "numpy" among the
    backends the oracle is the first backend in float64."""
    w = torch.full((3, 3), 0.25)

    def step(x):
        return x @ w.to(x.dtype)

    report = assert_backends_close(step, _input(4, 2, 3), backends=["torch"])
    assert report.ok and {r.backend for r in report.rows} == {"torch"}


def test_backends_report_names_the_diverging_leaf():
    def step(x):
        bump = 1.0 if isinstance(x, torch.Tensor) else 0.0
        return x * 2, x + bump

    with pytest.raises(AssertionError) as info:
        assert_backends_close(step, _input(4, 2, 3), backends=["numpy", "torch"])
    failing = [line.split() for line in str(info.value).splitlines() if line.endswith("FAIL")]
    assert failing and all(f[0] == "torch" and f[6] == "y[1]" for f in failing)


def _adaptive(x, v, a):
    v = 0.5 * v + x - a
    a = 0.9 * a + 0.1 * v
    return v, a


def test_a_port_with_another_state_structure_is_not_reported_wrong():
    """Reference state ``(v, a)``, candidate ``{"v", "a"}``, the same dynamics: the dict's
    sorted leaves (a, v) were compared with the tuple by position and failed."""

    def reference(x, s):
        v, a = _adaptive(x, *s)
        return v, (v, a)

    def port(x, s):
        v, a = _adaptive(x, s["v"], s["a"])
        return v, {"v": v, "a": a}

    x = _input(6, 2, 3)
    zeros = np.zeros((2, 3), np.float32)
    ref_state, cand_state = (zeros, zeros), {"v": zeros, "a": zeros}

    def compare(candidate, **options):
        return assert_implementations_close(
            reference,
            candidate,
            x,
            reference_state=ref_state,
            candidate_state=cand_state,
            **options,
        )

    report = compare(port)
    assert report.ok
    (y, skipped) = report.rows
    assert (y.leaf, y.max_abs_error) == ("y", 0.0)
    assert skipped.leaf == "state" and skipped.not_compared.startswith(
        "the states differ in structure (reference ['state[0]', 'state[1]'], candidate "
        "[\"state['a']\", \"state['v']\"])"
    )
    assert "not compared: the states differ" in str(report)
    # Mapped onto the reference's structure, the states are compared, and a wrong port fails.
    mapped = compare(port, compare_state=lambda s: (s["v"], s["a"]))
    assert [(r.leaf, r.max_abs_error) for r in mapped.rows] == [
        ("y", 0.0),
        ("state[0]", 0.0),
        ("state[1]", 0.0),
    ]

    def drifting(x, s):
        y, s = port(x, s)
        return y, {"v": s["v"], "a": s["a"] * 1.5}

    bad = compare(drifting, compare_state=lambda s: (s["v"], s["a"]), check=False)
    assert {r.leaf for r in bad.rows if not r.ok} == {"y", "state[0]", "state[1]"}
    forced = compare(port, compare_state=True, check=False)
    assert not forced.ok and forced.rows[0].first_bad_step == "structure"
    with pytest.raises(TypeError, match="`compare_state` must be a bool, a callable or None"):
        compare(port, compare_state="yes")


def _sj_multi_step_net():
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 2, 3, padding=1),
        neuron.LIFNode(tau=2.0),
        layer.Flatten(),
        layer.Linear(2 * 4 * 4, 3),
        neuron.IFNode(),
    )
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[0].weight.abs_()
        net[3].weight.abs_()
    return net


def test_a_multi_step_reference_runs_on_the_whole_sequence_and_its_memory_is_reset():
    """A SpikingJelly network in step mode 'm' takes the whole sequence (it failed with a raw
    conv shape error); its memory is reset after the comparison too (it was left holding the
    last batch's membrane, with a grad_fn)."""
    from spikingjelly.activation_based import functional

    net = _sj_multi_step_net()
    single = _sj_multi_step_net()
    functional.set_step_mode(single, "s")
    x = (np.random.default_rng(2).random((5, 2, 1, 4, 4)) * 2).astype(np.float32)
    report = assert_implementations_close(net, single, x)
    assert [(r.backend, r.leaf, r.max_abs_error) for r in report.rows] == [
        ("torch vs torch", "y", 0.0)
    ]
    with torch.no_grad():
        functional.reset_net(net)
        want = net(torch.from_numpy(x)).numpy()
    assert 0 < want.sum() < want.size  # it spikes
    functional.reset_net(net)
    for side in (net, single):
        assert all(n.v == 0.0 for n in side if hasattr(n, "v"))  # reset: back to the float

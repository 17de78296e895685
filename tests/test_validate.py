"""dualstep.testing.assert_backends_close: passes when backends agree, names where they do not."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace, is_jax_array, is_torch_array
from cases import CASE_IDS, CASES
from hypothesis import given, settings
from hypothesis import strategies as st

import dualstep as ds
from dualstep.testing import (
    BACKENDS,
    FUNCTIONS,
    STATEFUL_FUNCTIONS,
    Report,
    assert_backends_close,
    assert_implementations_close,
    call,
    call_time_first,
    chunk_module,
    if_step,
    lif_step,
)
from dualstep.testing import _validate as validate
from dualstep.testing.strategies import sequences, split_sizes

pytest.importorskip("torch")
jax = pytest.importorskip("jax")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=6)
@given(x=sequences(max_t=8), data=st.data())
def test_every_reference_case_agrees_on_every_backend(case, x, data):
    state = None if case.initial_state is None else case.initial_state(x.shape[1:], x.dtype)
    split = data.draw(split_sizes(x.shape[0] + 2))
    report = assert_backends_close(case.step, x, state=state, split_size=split, backends=BACKENDS)
    functions = 3 if state is not None else 5
    assert isinstance(report, Report) and report.ok
    assert [r.backend for r in report.rows] == [b for b in BACKENDS for _ in range(functions)]
    assert all(r.dtype == str(x.dtype) for r in report.rows)


def _sabotaged(backend_check, at_step, by=0.5):
    """An IF step that is off by `by` at step `at_step` on the backend `backend_check` accepts."""
    step = if_step()

    def bad(x, s):
        v, t = s
        y, v = step(x, v)
        if backend_check(x):
            xp = array_namespace(x)
            y = y + xp.astype(t == at_step, y.dtype) * by
        return y, (v, t + 1)

    return bad


def _state(x):
    return (np.zeros(x.shape[1:], x.dtype), np.zeros(x.shape[1:], x.dtype))


def test_report_names_backend_function_and_first_diverging_step():
    x = np.full((6, 2, 3), 0.25, np.float32)
    step = _sabotaged(is_torch_array, at_step=3)
    with pytest.raises(AssertionError) as info:
        assert_backends_close(step, x, state=_state(x), backends=BACKENDS)
    message = str(info.value)
    failing = [line.split() for line in message.splitlines() if line.endswith("FAIL")]
    assert [(f[0], f[1], f[5]) for f in failing] == [
        ("torch", "multi_step_forward", "3"),
        ("torch", "t_last_multi_step_forward", "3"),
        ("torch", "chunk_multi_step_forward", "3"),
    ]
    assert all(float(f[3]) == 0.5 for f in failing)  # max abs error at that step


def test_report_flags_a_final_state_that_differs_when_outputs_agree():
    x = np.full((4, 3), 0.25, np.float32)

    def step(x, s):
        bump = 1.0 if is_jax_array(x) else 0.0
        return x * 2, s + x + bump * array_namespace(s).astype(s == 0.75, s.dtype)

    with pytest.raises(
        AssertionError, match=r"jax +chunk_multi_step_forward .* final state +state +FAIL"
    ):
        assert_backends_close(step, x, state=np.zeros(3, np.float32), backends=BACKENDS)


def test_report_flags_a_dtype_change():
    x = np.ones((3, 2), np.float32)

    def step(x):
        xp = array_namespace(x)
        return xp.astype(x, xp.float16) if is_torch_array(x) else x

    with pytest.raises(
        AssertionError, match=r"torch +multi_step_forward +float16!=float32 .* dtype"
    ):
        assert_backends_close(step, x, functions=["multi_step_forward"], backends=BACKENDS)


def test_relative_error_stays_meaningful_near_zero():
    """Issue: a planted divergence against a near-zero reference read `max rel err 4.49e+307`."""
    x = np.zeros((4, 3), np.float32)
    step = _sabotaged(is_torch_array, at_step=2, by=0.5)
    with pytest.raises(AssertionError) as info:
        assert_backends_close(step, x, state=_state(x), backends=BACKENDS)
    failing = [line.split() for line in str(info.value).splitlines() if line.endswith("FAIL")]
    assert failing and all(float(f[4]) == 1.0 for f in failing)  # |0.5 - 0| / max(0.5, 0)


def test_tolerances_default_by_dtype_and_can_be_widened():
    x = np.full((5, 2), 0.5, np.float32)
    step = _sabotaged(is_jax_array, at_step=1, by=1e-4)
    with pytest.raises(AssertionError, match="jax"):
        assert_backends_close(step, x, state=_state(x))
    report = assert_backends_close(step, x, state=_state(x), atol=1e-3)
    assert report.ok and max(r.max_abs_error for r in report.rows) == pytest.approx(1e-4, rel=1e-2)


def test_float64_switches_jax_to_x64_only_for_the_call():
    before = jax.config.read("jax_enable_x64")
    x = np.linspace(-1, 2, 12).reshape(4, 3)
    report = assert_backends_close(lif_step(), x, state=np.zeros(3), backends=["jax"])
    assert {r.dtype for r in report.rows} == {"float64"}
    assert jax.config.read("jax_enable_x64") == before


def test_str_is_a_table_with_one_line_per_backend_and_function():
    x = np.ones((2, 1), np.float32)
    report = assert_backends_close(lambda a: a * 3, x, backends=["numpy", "torch"])
    lines = str(report).splitlines()
    assert lines[0].split()[:3] == ["backend", "function", "dtype"] and len(lines) == 11
    assert all(line.endswith("ok") for line in lines[1:])


def test_argument_errors(monkeypatch):
    x = np.ones((2, 1))
    with pytest.raises(ValueError, match=r"`backends` entries must be among .*; got 'mxnet'"):
        assert_backends_close(lambda a: a, x, backends=["mxnet"])
    with pytest.raises(ValueError, match=r"`functions` entries must be among .*; got 'scan'"):
        assert_backends_close(lambda a: a, x, functions=["scan"])
    with pytest.raises(ValueError, match=r"`seq_to_ann_forward` takes no `state`"):
        assert_backends_close(if_step(), x, state=np.zeros(1), functions=["seq_to_ann_forward"])
    monkeypatch.setattr(validate, "installed_backends", lambda: ("numpy", "torch"))
    with pytest.raises(ValueError, match=r"jax is not installed: pip install 'dualstep\[jax\]'"):
        assert_backends_close(lambda a: a, x, backends=["jax"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, -1e-30, np.float32("nan")])
@pytest.mark.parametrize("argument", ["rtol", "atol"])
def test_tolerances_must_be_finite_and_non_negative(argument, bad):
    """A NaN tolerance passed every comparison (a wrong port was "ok"), a negative one failed
    identical values; both helpers refuse them before running anything."""
    ran = []

    def step(x, v):
        ran.append(1)
        return x + v, v

    x, v = np.ones((3, 2)), np.zeros(2)
    message = rf"`{argument}` must be finite and non-negative; got "
    with pytest.raises(ValueError, match=message):
        assert_backends_close(step, x, state=v, backends=["numpy"], **{argument: bad})
    with pytest.raises(ValueError, match=message):
        assert_implementations_close(
            step, step, x, reference_state=v, candidate_state=v, **{argument: bad}
        )
    with pytest.raises(TypeError, match=rf"`{argument}` must be a real number or None; got str"):
        assert_backends_close(step, x, state=v, backends=["numpy"], **{argument: "1e-3"})
    assert not ran
    report = assert_backends_close(step, x, state=v, backends=["numpy"], **{argument: 0})
    assert report.ok and getattr(report, argument) == 0.0


# --- the catalogue of the five functions ------------------------------------------------------


def test_catalogue_calls_each_function_as_a_user_would(backend):
    """`call_time_first` of every function equals the function called by hand."""
    x = np.linspace(-1.0, 2.0, 24).reshape(4, 3, 2)
    xb, vb = backend.asarray(x), backend.asarray(np.full((3, 2), 0.25))
    step = lif_step()

    def by_hand(function):
        if function == "multi_step_forward":
            return ds.multi_step_forward(xb, step, state=vb)
        if function == "t_last_multi_step_forward":
            y, v = ds.t_last_multi_step_forward(
                backend.asarray(np.moveaxis(x, 0, -1)), step, state=vb
            )
            return backend.asarray(np.moveaxis(backend.to_numpy(y), -1, 0)), v

        def chunk(c, s):
            return ds.multi_step_forward(c, step, state=s)

        return ds.chunk_multi_step_forward(3, xb, chunk, state=vb)

    for function in STATEFUL_FUNCTIONS:
        got = call_time_first(function, step, xb, state=vb, split_size=3)
        want = by_hand(function)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))
    want = backend.to_numpy(xb) * 2
    for function in set(FUNCTIONS) - set(STATEFUL_FUNCTIONS):
        y, final = call_time_first(function, lambda a: a * 2, xb)
        assert final is None
        np.testing.assert_array_equal(backend.to_numpy(y), want)


def test_catalogue_chunk_module_and_errors():
    x = np.arange(5.0)[:, None]
    module = chunk_module(lambda a: a + 1)
    np.testing.assert_array_equal(ds.chunk_multi_step_forward(2, x, module), x + 1)
    with pytest.raises(TypeError, match="`multi_step_module` must be a callable"):
        call("chunk_multi_step_forward", 3, x, as_given=True)  # given as it is: not wrapped
    with pytest.raises(TypeError, match="`single_step_module` must be a callable"):
        call("chunk_multi_step_forward", 3, x)  # wrapped: the inner call names the step
    with pytest.raises(ValueError, match="`function` must be one of"):
        call_time_first("multi_step", lambda a: a, x)


def test_report_plot_draws_each_leaf_per_step_against_the_tolerance(tmp_path):
    """A LIF port with tau off by 10%: the report's figure has one line per output leaf, its
    error per step over the tolerance, the tolerance at 1, and the first bad step circled at
    the step the report names."""
    pytest.importorskip("matplotlib")
    from dualstep import neurons
    from dualstep.testing import assert_implementations_close

    x = np.random.default_rng(0).random((12, 4, 6)) * 1.5
    v0 = np.zeros((4, 6))

    def with_v(tau):
        lif = neurons.LIF(tau=tau)

        def step(x, v):
            spike, v = lif(x, v)
            return (spike, v), v

        return step

    kwargs = {"reference_state": v0, "candidate_state": v0, "check": False}
    report = assert_implementations_close(with_v(2.0), with_v(2.2), x, **kwargs)
    outputs = [r for r in report.rows if r.per_step]
    assert {r.leaf for r in outputs} == {"y[0]", "y[1]"} and not report.ok
    assert all(len(r.per_step) == 12 for r in outputs)
    voltage = next(r for r in outputs if r.leaf == "y[1]")
    t = voltage.first_bad_step
    assert isinstance(t, int) and voltage.per_step[t] > 1 >= max(voltage.per_step[:t], default=0)
    figure = report.plot()
    (ax,) = figure.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert "tolerance" in labels and ax.get_yscale() == "log"
    tolerance = ax.get_lines()[labels.index("tolerance")]
    assert set(tolerance.get_ydata()) == {1.0}
    circled = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert any(list(line.get_xdata()) == [t] for line in circled)
    figure.savefig(tmp_path / "port.png")
    assert (tmp_path / "port.png").stat().st_size > 10_000
    same = assert_implementations_close(with_v(2.0), with_v(2.0), x, **kwargs)
    assert same.ok and not any(line.get_marker() == "o" for line in same.plot().axes[0].get_lines())
    with pytest.raises(ValueError, match="needs a row compared over time"):
        type(report)(tuple(r for r in report.rows if not r.per_step), 1e-5, 1e-6).plot()

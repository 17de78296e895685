"""Every example runs to completion and shows what it claims (CI smoke tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dualstep.testing import BACKENDS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str) -> str:
    return _run_with(name)


def _run_with(name: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def test_train_torch_loss_goes_down():
    pytest.importorskip("torch")
    first, last = map(float, re.search(r"loss (\S+) -> (\S+)", _run("train_torch.py")).groups())
    assert last < 0.8 * first


def test_port_to_jax_loss_curves_agree_step_for_step():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    text = _run("port_to_jax.py")
    rows = [line.split() for line in text.splitlines() if re.match(r"\s*\d+\s+\d", line)]
    assert len(rows) == 30
    for _, torch_loss, jax_loss, _ in rows:
        assert abs(float(torch_loss) - float(jax_loss)) <= 1e-5
    assert float(rows[-1][1]) < 0.8 * float(rows[0][1])


def test_port_spikingjelly_spikes_identical_and_backends_agree():
    for module in ("torch", "jax", "spikingjelly"):
        pytest.importorskip(module)
    text = _run("port_spikingjelly.py")
    spikes, differ = map(int, re.search(r"(\d+) spikes, (\d+) differ", text).groups())
    assert spikes > 0 and differ == 0
    verdicts = [line.split()[-1] for line in text.splitlines() if line.startswith(BACKENDS)]
    assert verdicts == ["ok"] * 9


def test_validate_port_through_nir_names_the_step_where_conventions_part():
    pytest.importorskip("spikingjelly")
    pytest.importorskip("nirtorch")
    pytest.importorskip("jax")
    text = _run("validate_port.py")
    nir_part, sj_part = text.split("convention='spikingjelly'")
    assert re.search(r"jax vs torch +multi_step_forward .* \d+ +y +FAIL", nir_part)
    assert "agrees spike for spike" in sj_part and re.search(r" y +ok", sj_part)
    assert float(re.search(r"done in (\S+) s", text).group(1)) < 60


def test_port_conv_snn_trains_in_lockstep_with_spikingjelly():
    for module in ("torch", "jax", "spikingjelly"):
        pytest.importorskip(module)
    text = _run("port_conv_snn.py")
    assert re.search(r"the port, proven: 18 rows ok", text)
    rows = [line.split() for line in text.splitlines() if re.match(r"\s*\d+\s+\d", line)]
    assert len(rows) == 5
    for _, sj_loss, jax_loss, _ in rows:
        assert abs(float(sj_loss) - float(jax_loss)) <= 1e-5
    assert float(rows[-1][1]) < float(rows[0][1])
    losses, weights = map(
        float, re.search(r"losses (\S+), weights and statistics (\S+)", text).groups()
    )
    assert losses <= 1e-5 and weights <= 1e-5


def test_plot_port_divergence_draws_the_report(tmp_path):
    for module in ("torch", "jax", "matplotlib"):
        pytest.importorskip(module)
    text = _run_with("plot_port_divergence.py", str(tmp_path / "port.png"))
    assert re.search(r"jax vs torch +multi_step_forward .* 0 +y\[1\] +FAIL", text)
    assert (tmp_path / "port.png").stat().st_size > 10_000

"""`python -m dualstep`, the main job."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from dualstep import __main__ as main_job

ARGS = ["--T", "9", "--batch", "2", "--features", "3", "--repeat", "1"]
INSTALLED = [b for b in ("numpy", "torch", "jax") if importlib.util.find_spec(b)]


def test_main_job_runs_every_installed_backend():
    out = subprocess.run(
        [sys.executable, "-m", "dualstep", *ARGS], capture_output=True, text=True, check=True
    )
    rows = [line.split() for line in out.stdout.splitlines() if line.endswith((" ok", " FAIL"))]
    assert sorted({r[0] for r in rows}) == sorted(INSTALLED)
    assert len(rows) == 5 * len(INSTALLED)
    assert all(r[-1] == "ok" for r in rows)
    assert f"{len(rows)} agree, 0 disagree" in out.stdout


def test_disagreement_gives_non_zero_exit(monkeypatch, capsys):
    monkeypatch.setitem(main_job.TOLERANCE, "float32", -1.0)  # nothing can agree now
    assert main_job.main(ARGS) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_argument_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main_job.main(["--T", "0"])
    assert info.value.code == 2


def test_float64_check_restores_jax_config():
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    assert main_job.main([*ARGS, "--dtype", "float64"]) == 0
    assert jax.config.jax_enable_x64 == before

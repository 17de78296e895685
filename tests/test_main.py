"""`python -m dualstep`, the main job."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualstep import __main__ as main_job
from dualstep.testing import installed_backends

ARGS = ["--T", "9", "--batch", "2", "--features", "3", "--repeat", "1"]
INSTALLED = installed_backends()


def test_main_job_runs_every_installed_backend():
    out = subprocess.run(
        [sys.executable, "-m", "dualstep", *ARGS], capture_output=True, text=True, check=True
    )
    rows = [line.split() for line in out.stdout.splitlines() if line.endswith((" ok", " FAIL"))]
    assert sorted({r[0] for r in rows}) == sorted(INSTALLED)
    assert len(rows) == 8 * len(INSTALLED)  # five functions, and three with lengths=
    assert sum(r[2] == "lengths=" for r in rows) == 3 * len(INSTALLED)
    assert all(r[-1] == "ok" for r in rows)
    assert f"{len(rows)} agree, 0 disagree" in out.stdout


def test_disagreement_gives_non_zero_exit(capsys):
    # No tolerance: float32 tanh cannot equal the float64 oracle.
    assert main_job.main([*ARGS, "--rtol", "0", "--atol", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bad_argument_is_a_usage_error_of_the_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main_job.main(["--T", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: dualstep check" in err and "--T: must be a positive integer; got '0'" in err


def test_float64_check_restores_jax_config():
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    assert main_job.main([*ARGS, "--dtype", "float64"]) == 0
    assert jax.config.jax_enable_x64 == before


def test_check_json_rows(capsys):
    assert main_job.main(["check", *ARGS, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["dtype"] == "float32" and len(found["rows"]) == 8 * len(INSTALLED)
    assert sum(r["lengths"] for r in found["rows"]) == 3 * len(INSTALLED)
    assert (found["T"], found["batch"], found["features"]) == (9, 2, 3)
    assert {r["backend"] for r in found["rows"]} == set(INSTALLED)
    assert all(r["ok"] and r["max_abs_error"] <= 1e-5 for r in found["rows"])


def test_missing_backend_is_named_with_its_install_command(monkeypatch, capsys):
    monkeypatch.setattr(main_job, "installed_backends", lambda: ("numpy",))
    assert main_job.main(ARGS) == 0
    captured = capsys.readouterr()
    assert "jax is not installed: pip install 'dualstep[jax]'" in captured.err
    assert "torch is not installed: pip install 'dualstep[torch]'" in captured.err
    assert main_job.main(["info"]) == 0
    assert "jax    not installed: pip install 'dualstep[jax]'" in capsys.readouterr().out


def test_info_lists_backends_versions_and_devices(capsys):
    assert main_job.main(["info", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["dualstep"] == main_job.ds.__version__
    for name in INSTALLED:
        entry = found["backends"][name]
        assert entry["version"] == importlib.import_module(name).__version__
        assert entry["devices"] and entry["devices"][0].startswith("cpu")


def test_the_package_imports_nothing_from_the_checkout():
    """The installed command needs no source tree: the benchmark suite is run from a checkout
    with `python -m benchmarks`, not through `dualstep`."""
    with pytest.raises(SystemExit) as exit_info:
        main_job.main(["bench"])
    assert exit_info.value.code == 2  # not a subcommand: `check`'s usage error
    source = Path(main_job.__file__).read_text()
    assert "sys.path" not in source and "benchmarks" not in source


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rtol", "nan"], "argument --rtol: must be finite and non-negative; got 'nan'"),
        (["--atol", "inf"], "argument --atol: must be finite and non-negative; got 'inf'"),
        (["--rtol", "-1"], "argument --rtol: must be finite and non-negative; got '-1'"),
        (["--T", "abc"], "argument --T: must be a positive integer; got 'abc'"),
        (["--batch", "1.5"], "argument --batch: must be a positive integer; got '1.5'"),
        (["--backends", "numpy,jxa"], "argument --backends: must be a comma-separated list"),
        (["--backends", ""], "argument --backends: must be a comma-separated list"),
        (["chek"], "invalid choice: 'chek' (choose from"),
        (["nir", "x.nir", "--seed", "x"], "argument --seed: must be a non-negative integer"),
        (["nir", "x.nir", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["--features", "10000000000000"], "needs about"),
    ],
)
def test_bad_arguments_name_the_option_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main_job.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sizes_beyond_memory_are_refused_before_allocating(capsys):
    with pytest.raises(SystemExit) as info:
        main_job.main(["--T", "100000000"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("dualstep check: error: --T 100000000 x --batch 32 x --features 256 ")
    assert "GiB; this machine has" in err and err.count("\n") == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main_job.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"dualstep {main_job.ds.__version__}\n"


def test_check_backends_runs_only_those(capsys):
    assert main_job.main([*ARGS, "--backends", "numpy", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["backends"] == ["numpy"] and {r["backend"] for r in found["rows"]} == {"numpy"}
    assert len(found["rows"]) == 8


def test_timings_wait_for_every_array_of_a_result():
    """A stateful call returns ``(y_seq, final_state)``: each leaf must be waited for, not
    only an array at the top (JAX timings of the stateful functions read 10x too fast)."""
    pytest.importorskip("jax")
    waited = []

    class Pending:
        def __init__(self, name):
            self.name = name

        def block_until_ready(self):
            waited.append(self.name)
            return self

    main_job._median_seconds(lambda: (Pending("y"), {"v": Pending("v"), "i": Pending("i")}), 2)
    assert sorted(waited) == sorted(["y", "v", "i"] * 3)


def test_a_backend_that_fails_to_import_is_reported_and_the_rest_run(tmp_path):
    """`installed_backends()` looked at find_spec only: a jax whose import raises crashed
    `info` and `check`. Now `info` names it with its error and `check` runs the others."""
    fake = tmp_path / "jax"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('libtpu exploded')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = functools.partial(subprocess.run, capture_output=True, text=True, env=env)
    info = run([sys.executable, "-m", "dualstep", "info", "--json"])
    assert info.returncode == 0, info.stderr[-2000:]
    assert json.loads(info.stdout)["backends"]["jax"] == {"error": "ImportError: libtpu exploded"}
    check = run([sys.executable, "-m", "dualstep", *ARGS, "--json"])
    assert check.returncode == 0, check.stderr[-2000:]
    assert "jax is installed but fails to import (ImportError: libtpu exploded)" in check.stderr
    assert "jax" not in {r["backend"] for r in json.loads(check.stdout)["rows"]}

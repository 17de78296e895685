"""The README's and the documentation's code blocks run as written; the site builds strictly
and its API reference shows every public name."""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest
from support import EXPORT_WARNINGS, PUBLIC_MODULES

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The pages in the order of mkdocs.yml's nav, which must list every page of docs/.
NAV = re.findall(r"^  - [^:]+: (\S+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M)
SOURCES = [ROOT / "README.md"] + [ROOT / "docs" / page for page in NAV]
BLOCKS = [
    (f"{path.stem}-{i}", path, code)
    for path in SOURCES
    for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M))
]


# What each block's run must leave behind beyond its own assertions, by block: a block added
# or removed must be named here.
CHECKS: dict = {}


def _after(*names):
    def register(check):
        CHECKS.update(dict.fromkeys(names, check))
        return check

    return register


@_after("README-0")
def _torch_drop_in(ns):
    assert tuple(ns["y_seq"].shape) == (16, 8, 10)
    assert tuple(ns["y_long"].shape) == (16, 8, 32)


@_after("README-1")
def _jax_first_call(ns):
    assert tuple(ns["spikes"].shape) == (16, 8, 32) and tuple(ns["v_T"].shape) == (8, 32)
    assert 0.0 <= float(ns["rate"]) <= 1.0


@_after("index-0")
def _trained(ns):
    assert ns["accuracy"] > 0.9 and ns["loss"].item() < ns["first_loss"] / 2


@_after("steps-0")
def _every_backend(ns):
    assert set(ns["spikes"]) == {"numpy", "torch", "jax"}


@_after("neurons-0")
def _surrogate(ns):  # its own assertions ran; the gradient is not zero
    assert float(abs(ns["g_t"]).max()) > 0


@_after("neurons-1", "long-sequences-0")
def _spiking_with_grad(ns):  # its own assertions ran on a run that spikes, with gradients
    assert float(ns["spikes"].detach().sum()) > 0


@_after("long-sequences-1", "deploying-0", "deploying-1")
def _spiking(ns):  # its own assertions ran on a run that spikes
    assert float(ns["spikes"].sum()) > 0


@_after("jax-0")
def _transforms(ns):
    assert ns["per_example"].shape == (8,)


@_after("porting-0")
def _port_linear(ns):  # output, two modules, the neuron's state, two gradients
    assert ns["report"].ok and len(ns["report"].rows) == 6


@_after("porting-1")
def _port_conv(ns):  # every module has its row
    assert ns["report"].ok and len(ns["report"].rows) == 18
    assert set(ns["final"]) == {"1", "2", "6"}  # batch norm's statistics, the neurons


@_after("porting-2")
def _arrays(ns):
    assert ns["report"].ok and len(ns["report"].rows) == 9
    assert set(ns["params"]) == {"weight", "bias"} and ns["state"]["count"] is None


@_after("nir-0")
def _nir(ns):  # one row: the output
    assert ns["report"].ok and len(ns["report"].rows) == 1


@_after("fused-0")
def _fused(ns):
    assert tuple(ns["y_seq"].shape) == (8, 4, 16)


def test_every_page_is_in_the_nav_and_every_block_is_named():
    assert sorted(NAV) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(name for name, _, _ in BLOCKS) == sorted(CHECKS)


def test_getting_started_gives_the_readmes_two_commands():
    """The README shows them plainly (not through a snippet); Getting started repeats them."""
    commands = re.compile(r"^```bash\n# set up, then run the main job.*?^```$", re.S | re.M)
    readme = commands.findall((ROOT / "README.md").read_text())
    assert len(readme) == 1 and "bash scripts/test.sh" in readme[0]
    assert commands.findall((ROOT / "docs" / "index.md").read_text()) == readme


def test_readme_stays_short():
    """What dualstep is, the two commands, one torch and one JAX example, links: the rest is
    in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize(("name", "path", "block"), BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.filterwarnings(*EXPORT_WARNINGS)  # the deploying examples export through torch
def test_example_runs(name, path, block):
    for module in re.findall(r"^(?:from|import) (\w+)", block, re.M):
        pytest.importorskip(module)
    if "to_jax" in block:  # interop's examples convert to JAX without importing it
        pytest.importorskip("jax")
    if "fused=True" in block:
        pytest.importorskip("triton")
    namespace: dict = {}
    exec(compile(block, str(path), "exec"), namespace)
    CHECKS[name](namespace)


def _public_names():
    pytest.importorskip("hypothesis")  # dualstep.testing.strategies
    pytest.importorskip("nir")  # dualstep.nir
    return [f"{m}.{n}" for m in PUBLIC_MODULES for n in importlib.import_module(m).__all__]


def test_api_table_names_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text().split("\n## ", 1)[0]
    missing = [
        n
        for n in _public_names()
        if n not in text and n.rsplit(".", 1)[1] not in re.findall(r"`(?:[\w.]+\.)?(\w+)", text)
    ]
    assert not missing


def test_site_builds_strictly_and_documents_every_public_name(tmp_path):
    """`mkdocs build --strict` (what CI builds): the generated reference has a section,
    from its docstring, for every public name."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "api" / "index.html").read_text()
    anchors = set(re.findall(r'id="(dualstep[\w.]*)"', api))
    assert not [n for n in _public_names() if n not in anchors]
    for page in ("porting", "long-sequences", "performance"):  # the figures are on the site
        html = (tmp_path / page / "index.html").read_text()
        images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', html)
        assert images and all((tmp_path / page / image).resolve().is_file() for image in images)

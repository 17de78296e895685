"""The README's and the documentation's code blocks run as written; the site builds strictly
and its API reference shows every public name."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
from support import EXPORT_WARNINGS

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The pages in the order of mkdocs.yml's nav, which must list every page of docs/.
NAV = re.findall(r"^  - [^:]+: (\S+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M)
SOURCES = [ROOT / "README.md"] + [ROOT / "docs" / page for page in NAV]
BLOCKS = [
    (f"{path.stem}-{i}", path, code)
    for path in SOURCES
    for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M))
]
# Every block, by page: a block added or removed must be named here.
IDS = ["README-0", "README-1", "index-0", "steps-0", "neurons-0", "neurons-1", "jax-0"]
IDS += ["porting-0", "porting-1", "nir-0", "long-sequences-0", "fused-0"]
IDS += ["deploying-0", "deploying-1"]


def test_every_page_is_in_the_nav_and_every_block_is_named():
    assert sorted(NAV) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [name for name, _, _ in BLOCKS] == IDS


def test_readme_stays_short():
    """What dualstep is, the two commands, one torch and one JAX example, links: the rest is
    in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize(("path", "block"), [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
@pytest.mark.filterwarnings(*EXPORT_WARNINGS)  # the deploying examples export through torch
def test_example_runs(path, block):
    for module in re.findall(r"^(?:from|import) (\w+)", block, re.M):
        pytest.importorskip(module)
    if "to_jax" in block:  # interop's examples convert to JAX without importing it
        pytest.importorskip("jax")
    if "fused=True" in block:
        pytest.importorskip("triton")
    namespace: dict = {}
    exec(compile(block, str(path), "exec"), namespace)
    # lengths and deploying (the ONNX session, the restored JAX program): their own
    # assertions ran on a spiking run
    if {"recordings", "session", "restored"} & set(namespace):
        assert float(namespace["spikes"].sum()) > 0
    elif "grads" in namespace:  # port: the comparison ran; every module has its row
        assert namespace["report"].ok and len(namespace["report"].rows) == 18
        assert set(namespace["final"]) == {"1", "2", "6"}  # batch norm's statistics, neurons
    elif "nir_file" in namespace:  # NIR: its own assertions ran; one row, the output
        assert len(namespace["report"].rows) == 1
    elif "report" in namespace:  # porting
        assert namespace["report"].ok and len(namespace["report"].rows) == 9
        assert set(namespace["params"]) == {"weight", "bias"}
        assert namespace["state"]["count"] is None
    elif "optimizer" in namespace:  # training: its own assertions ran on the trained model
        assert namespace["accuracy"] > 0.9
    elif "adaptive_lif" in namespace:  # writing a step: every backend ran
        assert set(namespace["spikes"]) == {"numpy", "torch", "jax"}
    elif "g_jax" in namespace:  # neurons: its own assertions ran on a spiking run
        assert float(namespace["spikes"].detach().sum()) > 0
    elif "g_j" in namespace:  # surrogate: its own assertions ran; the gradient is not zero
        assert float(abs(namespace["g_t"]).max()) > 0
    elif "g_eager" in namespace:  # JAX transforms: their own assertions ran
        assert namespace["per_example"].shape == (8,)
    elif "y_loop" in namespace:  # fused: its own assertion ran
        assert tuple(namespace["y_seq"].shape) == (8, 4, 16)
    elif "y_long" in namespace:  # torch
        assert tuple(namespace["y_seq"].shape) == (16, 8, 10)
        assert tuple(namespace["y_long"].shape) == (16, 8, 32)
    else:
        assert tuple(namespace["spikes"].shape) == (16, 8, 32)
        assert tuple(namespace["v_T"].shape) == (8, 32)
        assert 0.0 <= float(namespace["rate"]) <= 1.0


def _public_names():
    import dualstep
    import dualstep.export
    import dualstep.interop
    import dualstep.neurons
    import dualstep.port
    import dualstep.surrogate
    import dualstep.testing

    modules = {"dualstep": dualstep, "dualstep.interop": dualstep.interop}
    modules["dualstep.testing"] = dualstep.testing
    modules["dualstep.surrogate"] = dualstep.surrogate
    modules["dualstep.neurons"] = dualstep.neurons
    modules["dualstep.port"] = dualstep.port
    modules["dualstep.export"] = dualstep.export
    names = [f"{m}.{n}" for m, module in modules.items() for n in module.__all__]
    pytest.importorskip("hypothesis")
    import dualstep.testing.strategies as strategies

    names += [f"dualstep.testing.strategies.{n}" for n in strategies.__all__]
    pytest.importorskip("nir")
    import dualstep.nir

    return names + [f"dualstep.nir.{n}" for n in dualstep.nir.__all__]


def test_api_table_names_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text().split("\n## ", 1)[0]
    missing = [
        n
        for n in _public_names()
        if n not in text and n.rsplit(".", 1)[1] not in re.findall(r"`(?:[\w.]+\.)?(\w+)", text)
    ]
    assert not missing


def test_site_builds_strictly_and_documents_every_public_name(tmp_path):
    """`mkdocs build --strict` (as .ci/run runs it): the generated reference has a section,
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

"""The README's examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_torch_and_jax_examples():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("block", BLOCKS, ids=["torch", "jax"])
def test_readme_example_runs(block):
    for module in re.findall(r"^(?:from|import) (\w+)", block, re.M):
        pytest.importorskip(module)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    out = namespace.get("y_seq", namespace.get("spikes"))
    assert tuple(out.shape) == (16, 8, 10) if "y_long" in namespace else (16, 8, 32)

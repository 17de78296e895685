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
    if "y_long" in namespace:  # torch
        assert tuple(namespace["y_seq"].shape) == (16, 8, 10)
        assert tuple(namespace["y_long"].shape) == (16, 8, 32)
    else:
        assert tuple(namespace["spikes"].shape) == (16, 8, 32)
        assert tuple(namespace["v_T"].shape) == (8, 32)
        assert 0.0 <= float(namespace["rate"]) <= 1.0

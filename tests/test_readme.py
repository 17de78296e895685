"""The README's examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest
from support import EXPORT_WARNINGS

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_torch_jax_and_porting_examples():
    assert len(BLOCKS) == 10


IDS = ["torch", "jax", "surrogate", "neurons", "port", "porting", "lengths", "fused"]
IDS += ["deploy-torch", "deploy-jax"]


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
@pytest.mark.filterwarnings(*EXPORT_WARNINGS)  # the deploying examples export through torch
def test_readme_example_runs(block):
    for module in re.findall(r"^(?:from|import) (\w+)", block, re.M):
        pytest.importorskip(module)
    if "to_jax" in block:  # interop's examples convert to JAX without importing it
        pytest.importorskip("jax")
    if "fused=True" in block:
        pytest.importorskip("triton")
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    # lengths and deploying (the ONNX session, the restored JAX program): their own
    # assertions ran on a spiking run
    if {"recordings", "session", "restored"} & set(namespace):
        assert float(namespace["spikes"].sum()) > 0
    elif "grads" in namespace:  # port: the comparison ran; every module has its row
        assert namespace["report"].ok and len(namespace["report"].rows) == 18
        assert set(namespace["final"]) == {"1", "2", "6"}  # batch norm's statistics, neurons
    elif "report" in namespace:  # porting
        assert namespace["report"].ok and len(namespace["report"].rows) == 9
        assert set(namespace["params"]) == {"weight", "bias"}
        assert namespace["state"]["count"] is None
    elif "g_jax" in namespace:  # neurons: its own assertions ran on a spiking run
        assert float(namespace["spikes"].detach().sum()) > 0
    elif "g_j" in namespace:  # surrogate: its own assertions ran; the gradient is not zero
        assert float(abs(namespace["g_t"]).max()) > 0
    elif "y_loop" in namespace:  # fused: its own assertion ran
        assert tuple(namespace["y_seq"].shape) == (8, 4, 16)
    elif "y_long" in namespace:  # torch
        assert tuple(namespace["y_seq"].shape) == (16, 8, 10)
        assert tuple(namespace["y_long"].shape) == (16, 8, 32)
    else:
        assert tuple(namespace["spikes"].shape) == (16, 8, 32)
        assert tuple(namespace["v_T"].shape) == (8, 32)
        assert 0.0 <= float(namespace["rate"]) <= 1.0


def test_api_reference_names_every_public_name():
    import dualstep
    import dualstep.export
    import dualstep.interop
    import dualstep.neurons
    import dualstep.port
    import dualstep.surrogate
    import dualstep.testing

    text = README.read_text().split("## API reference", 1)[1].split("\n## ", 1)[0]
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
    missing = [
        n
        for n in names
        if n not in text and n.rsplit(".", 1)[1] not in re.findall(r"`(?:[\w.]+\.)?(\w+)", text)
    ]
    assert not missing

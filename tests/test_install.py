"""The installation itself: nothing skipped silently in CI, no framework imported eagerly."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

REQUIRED = [m for m in os.environ.get("DUALSTEP_REQUIRE", "").split(",") if m]


@pytest.mark.parametrize("module", REQUIRED or ["numpy"])
def test_required_backend_imports(module):
    """CI sets DUALSTEP_REQUIRE to what it installs: a failed install fails, never skips."""
    importlib.import_module(module)


def test_ci_declares_its_backends():
    # scripts/test_reduced.sh runs the suite with NumPy alone on purpose.
    if os.environ.get("CI") and not os.environ.get("DUALSTEP_REDUCED"):
        assert {"torch", "jax", "spikingjelly"} <= set(REQUIRED), (
            "CI must run the tests with DUALSTEP_REQUIRE=torch,jax,spikingjelly"
        )


def test_import_dualstep_imports_no_framework():
    code = (
        "import sys, numpy as np, dualstep, dualstep.testing\n"
        "dualstep.multi_step_forward(np.ones((2, 1)), lambda x: x)\n"
        "print(sorted(m for m in ('torch', 'jax', 'jaxlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names():
    import dualstep

    assert dualstep.__all__ == sorted(dualstep.__all__)
    for name in (
        "multi_step_forward",
        "t_last_multi_step_forward",
        "chunk_multi_step_forward",
        "seq_to_ann_forward",
        "t_last_seq_to_ann_forward",
    ):
        assert callable(getattr(dualstep, name))


@pytest.mark.parametrize(("framework", "convert"), [("jax", "to_jax"), ("torch", "to_torch")])
def test_conversion_without_its_framework_names_the_extra(framework, convert):
    """Without the framework installed (blocked here in a subprocess), the conversion says
    which extra to install instead of a bare ModuleNotFoundError."""
    code = (
        f"import sys; sys.modules[{framework!r}] = None\n"
        "import numpy as np\n"
        "from dualstep import interop\n"
        "try:\n"
        f"    interop.{convert}(np.ones(2, np.float32))\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        f"ModuleNotFoundError converting to or from {framework} needs {framework}: "
        f"pip install 'dualstep[{framework}]'"
    )

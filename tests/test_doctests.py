"""The examples in the package's docstrings run as written (doctest), module by module; a
module whose framework is not installed is skipped, so reduced installs run the suite too."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect

import pytest
from support import PUBLIC_MODULES

# Each module with examples, and what its examples (or its imports) need besides NumPy.
MODULES = {
    "dualstep._api": (),
    "dualstep._config": (),
    "dualstep.testing._functions": (),
    "dualstep.testing._steps": (),
    "dualstep.testing._surrogate": ("jax",),
    "dualstep.surrogate": ("jax",),
    "dualstep.neurons": (),
    "dualstep.port": ("torch", "jax"),
    "dualstep._lengths": (),
    "dualstep.export": ("torch", "jax"),
    "dualstep.fused": (),
    "dualstep.testing._validate": (),
    "dualstep.interop": ("torch", "jax"),
    "dualstep.nir": ("nir",),
    "dualstep.testing.strategies": ("hypothesis",),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_docstring_examples(name):
    for needed in MODULES[name]:
        pytest.importorskip(needed)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


def test_every_module_with_examples_is_listed():
    import pkgutil

    import dualstep

    found = []
    for info in pkgutil.walk_packages(dualstep.__path__, "dualstep."):
        spec = importlib.util.find_spec(info.name)
        source = spec.loader.get_source(info.name) if spec and spec.loader else None
        if source and ">>> " in source:
            found.append(info.name)
    assert sorted(found) == sorted(MODULES)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_function_and_class_has_an_example(name):
    """Each has a numpydoc Examples section (which the test above runs)."""
    module = pytest.importorskip(name)  # the strategies need hypothesis, the NIR reader nir
    public = [getattr(module, attr) for attr in module.__all__]
    missing = [
        obj.__name__
        for obj in public
        if (inspect.isfunction(obj) or inspect.isclass(obj))
        and "\nExamples\n--------\n" not in (inspect.getdoc(obj) or "")
    ]
    assert not missing

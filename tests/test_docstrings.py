"""Every docstring example in the package runs and prints what it says (doctest), module by module."""
import doctest
import importlib
import pkgutil

import pytest

import prunekit

MODULES = sorted(info.name for info in pkgutil.walk_packages(prunekit.__path__, "prunekit.")
                 if not info.name.endswith("__main__"))  # importing __main__ runs the command line


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional extra that is not installed (e.g. lightning)
        pytest.skip(f"{name}: {e}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"

"""The one helper behind the packages' lazy public names (pml_recallk, .benchmark, .datasets, .experiments)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from pml_recallk._lazy import lazy_names


def _package(sources: dict[str, str]) -> types.ModuleType:
    package = types.ModuleType("example")
    package.__all__ = sorted(sources)
    package.__getattr__, package.__dir__ = lazy_names(package.__dict__, sources)
    return package


def test_a_name_is_imported_on_first_use_and_then_kept():
    package = _package({"dumps": "json", "decoder": "json.decoder"})
    assert "dumps" not in vars(package)
    import json

    assert package.dumps is json.dumps and vars(package)["dumps"] is json.dumps
    assert package.decoder is sys.modules["json.decoder"]  # a module named by its own name is the module
    assert dir(package) == ["decoder", "dumps"]


def test_an_unknown_name_is_the_attribute_error_python_gives():
    with pytest.raises(AttributeError, match="module 'example' has no attribute 'loads'"):
        _package({"dumps": "json"}).loads  # noqa: B018


@pytest.mark.parametrize("package", ["pml_recallk", "pml_recallk.experiments", "pml_recallk.benchmark"])
def test_importing_a_package_imports_none_of_its_modules_until_a_name_is_used(package):
    code = (
        f"import sys, {package}; "
        "print(sorted(m for m in sys.modules if m.startswith('pml_recallk.') and m != 'pml_recallk._lazy'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # noqa: S307 - our own printed list
    assert [m for m in loaded if m != package] == [], loaded

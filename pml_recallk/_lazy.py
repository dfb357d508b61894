"""Lazy public names for a package: ``import pml_recallk`` (or one of its packages) imports nothing heavy until a
name that needs it is used (torchvision, timm, matplotlib, faiss).

Example:
    >>> import types
    >>> package = types.ModuleType("example")
    >>> package.__getattr__, package.__dir__ = lazy_names(package.__dict__, {"sqrt": "math", "json": "json"})
    >>> package.sqrt(4.0), package.json.__name__, "sqrt" in vars(package)  # imported on first use, then kept
    (2.0, 'json', True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    namespace: MutableMapping[str, Any], sources: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``(__getattr__, __dir__)`` of a package whose names ``sources`` imports on first use.

    Args:
        namespace: the package's ``globals()``; a name, once imported, is kept there (Python then finds it
            without calling ``__getattr__`` again).
        sources: each public name → the module that defines it, absolute or relative to the package
            (``".sweep"``). When the module's own name ends in the public name (``"functional":
            "pml_recallk.functional"``), the name is the module itself.

    ``__dir__`` lists the package's ``__all__``.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = import_module(sources[name], package)
        value = module if module.__name__.endswith("." + name) or module.__name__ == name else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(namespace["__all__"])

    return __getattr__, __dir__

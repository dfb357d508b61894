"""Datasets: the five benchmarks of the paper read from local folders, the embedded glyph data, and a user's own
images (a folder of class folders, or a CSV listing).

Each data set has a short name (the one the configuration and the command line use) and a class; the class
carries its evaluation protocol as the attribute ``recall_k_values``, the k of the Recall@k that papers report
for it (docs/method.md §5), and ``splits``, the splits it can load.

Example:
    >>> from pml_recallk.datasets import dataset_class, recall_k_values
    >>> recall_k_values("sop")
    (1, 10, 100, 1000)
    >>> dataset_class("CUB").__name__, dataset_class("cub").splits
    ('CUB200', ('train', 'test'))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

_PUBLIC = {
    "CUB200": ".cub200",
    "Cars196": ".cars196",
    "StanfordOnlineProducts": ".stanford_online_products",
    "INaturalist2018": ".inaturalist",
    "VehicleID": ".vehicle_id",
    "Glyphs": ".glyphs",
    "HanGlyphs": ".han_glyphs",
    "ImageFolder": ".generic",
    "CsvImages": ".generic",
    "ConfigurableDataset": ".common",
    "class_disjoint_split": ".common",
    "load_image": ".images",
}


class _DatasetClasses(Mapping):
    """Short name → data set class, each class imported when first looked up (so that importing one data set does
    not need the dependencies of the others, e.g. matplotlib or scipy)."""

    def __init__(self, class_names: dict[str, str]):
        self._class_names = class_names

    def __getitem__(self, name: str) -> type:
        return __getattr__(self._class_names[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._class_names)

    def __len__(self) -> int:
        return len(self._class_names)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in self._class_names.items()) + "}"


DATASET_CLASSES: Mapping[str, type] = _DatasetClasses(
    {
        "glyphs": "Glyphs",
        "han_glyphs": "HanGlyphs",
        "cub": "CUB200",
        "cars196": "Cars196",
        "sop": "StanfordOnlineProducts",
        "inaturalist": "INaturalist2018",
        "vehicleid": "VehicleID",
        "image_folder": "ImageFolder",
        "csv": "CsvImages",
    }
)
"""The short name of every data set and its class: the one list of data sets.

Each class is a :class:`~.common.ConfigurableDataset`: it declares its splits, Recall@k preset, channels, whether it
needs ``data.root``, its own ``[data]`` keys and how it is built from the ``[data]`` table, so that adding a data set
is its own file and one line here (its class name, imported when first used)."""

__all__ = sorted([*_PUBLIC, "DATASET_CLASSES", "dataset_class", "recall_k_values"])


def dataset_class(name: str) -> type:
    """The class of the data set called ``name`` (a key of :data:`DATASET_CLASSES`, any case)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string such as 'cub', got {name!r} ({type(name).__name__})")
    key = name.lower()
    if key not in DATASET_CLASSES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASET_CLASSES)}")
    return DATASET_CLASSES[key]


def recall_k_values(name: str) -> tuple[int, ...]:
    """The k of the Recall@k reported for the data set called ``name``: its class's ``recall_k_values``."""
    return tuple(dataset_class(name).recall_k_values)


def __getattr__(name: str):
    # Lazy, so that importing one dataset does not need the dependencies of the others (e.g. matplotlib).
    if name not in _PUBLIC:
        raise AttributeError(f"module 'pml_recallk.datasets' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

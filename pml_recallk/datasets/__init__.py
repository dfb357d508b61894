"""Datasets: the five benchmarks of the paper read from local folders, and the embedded glyph data."""

from importlib import import_module

_PUBLIC = {
    "CUB200": ".cub200",
    "Cars196": ".cars196",
    "StanfordOnlineProducts": ".stanford_online_products",
    "INaturalist2018": ".inaturalist",
    "VehicleID": ".vehicle_id",
    "Glyphs": ".glyphs",
    "class_disjoint_split": ".common",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    # Lazy, so that importing one dataset does not need the dependencies of the others (e.g. matplotlib).
    if name not in _PUBLIC:
        raise AttributeError(f"module 'pml_recallk.datasets' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

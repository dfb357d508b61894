"""Evaluation: ``RecallAtKAccuracyCalculator`` (PML's AccuracyCalculator with Recall@k) and ``ChunkedKNN``."""

import warnings
from typing import Any

from .accuracy_calculator import _DATASET_K_VALUES_DEPRECATED, RecallAtKAccuracyCalculator, _dataset_k_values
from .knn import ChunkedKNN

__all__ = ["ChunkedKNN", "RecallAtKAccuracyCalculator"]


def __getattr__(name: str) -> Any:
    if name == "DATASET_K_VALUES":  # deprecated: the k now live with the dataset classes
        warnings.warn(_DATASET_K_VALUES_DEPRECATED, DeprecationWarning, stacklevel=2)
        return _dataset_k_values()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

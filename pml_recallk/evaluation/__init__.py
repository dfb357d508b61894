"""Evaluation: ``RecallAtKAccuracyCalculator`` (PML's AccuracyCalculator with Recall@k), ``ChunkedKNN`` (exact
kNN a chunk of queries at a time) and ``SklearnKMeans`` (NMI/AMI without faiss)."""

import warnings
from typing import Any

from .accuracy_calculator import _DATASET_K_VALUES_DEPRECATED, RecallAtKAccuracyCalculator, _dataset_k_values
from .clustering import SklearnKMeans
from .knn import ChunkedKNN

__all__ = ["ChunkedKNN", "RecallAtKAccuracyCalculator", "SklearnKMeans"]


def __getattr__(name: str) -> Any:
    if name == "DATASET_K_VALUES":  # deprecated: the k now live with the dataset classes
        warnings.warn(_DATASET_K_VALUES_DEPRECATED, DeprecationWarning, stacklevel=2)
        return _dataset_k_values()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

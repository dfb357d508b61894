"""Evaluation: ``RecallAtKAccuracyCalculator`` (PML's AccuracyCalculator with Recall@k) and ``ChunkedKNN``."""

from .accuracy_calculator import DATASET_K_VALUES, RecallAtKAccuracyCalculator
from .knn import ChunkedKNN

__all__ = ["DATASET_K_VALUES", "ChunkedKNN", "RecallAtKAccuracyCalculator"]

"""Evaluation: ``RecallAtKAccuracyCalculator`` (PML's AccuracyCalculator with Recall@k), ``ChunkedKNN`` (exact
kNN a chunk of queries at a time) and ``SklearnKMeans`` (NMI/AMI without faiss)."""

from .accuracy_calculator import RecallAtKAccuracyCalculator
from .clustering import SklearnKMeans
from .knn import ChunkedKNN

__all__ = ["ChunkedKNN", "RecallAtKAccuracyCalculator", "SklearnKMeans"]

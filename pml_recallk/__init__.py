"""Recall@k surrogate loss, similarity mixup and very-large-batch training for pytorch-metric-learning.

Everything public is importable from the top level::

    from pml_recallk import RecallKSurrogateLoss, SimilarityMixup, MemoryEfficientTrainer

Imports are lazy, so ``import pml_recallk`` does not pull in torchvision, timm or faiss until a name that
needs them is used.
"""

from ._lazy import lazy_names

__version__ = "0.3.0"

_PUBLIC = {
    "RecallKSurrogateLoss": "pml_recallk.losses",
    "SimilarityMixup": "pml_recallk.losses",
    "CrossBatchMemory": "pml_recallk.losses",
    "RankTemperatureSchedule": "pml_recallk.losses",
    "cached_backward": "pml_recallk.trainers",
    "MemoryEfficientTrainer": "pml_recallk.trainers",
    "RecallAtKAccuracyCalculator": "pml_recallk.evaluation",
    "functional": "pml_recallk.functional",
    "datasets": "pml_recallk.datasets",
    "models": "pml_recallk.models",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


__getattr__, __dir__ = lazy_names(globals(), _PUBLIC)

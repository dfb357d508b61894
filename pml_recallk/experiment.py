"""Deprecated: the experiment moved to :mod:`pml_recallk.experiments` (this alias goes in 0.3).

``run_experiment`` and ``evaluate_checkpoint`` are in :mod:`pml_recallk.experiments.train`, the ``build_*``
functions in :mod:`pml_recallk.experiments.builders`, ``load_checkpoint`` in
:mod:`pml_recallk.experiments.checkpoints`.
"""

import warnings

from ._io import save_torch_atomic as save_atomic  # noqa: F401
from .experiments.builders import (  # noqa: F401
    TransformedDataset,
    build_accuracy_calculator,
    build_datasets,
    build_model,
    build_tester,
    input_channels,
)
from .experiments.checkpoints import CHECKPOINT_FORMAT, load_checkpoint  # noqa: F401
from .experiments.train import embed_and_evaluate, evaluate_checkpoint, run_experiment  # noqa: F401

__all__ = [
    "CHECKPOINT_FORMAT",
    "build_accuracy_calculator",
    "build_datasets",
    "build_model",
    "build_tester",
    "embed_and_evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "run_experiment",
    "save_atomic",
]

warnings.warn(
    "pml_recallk.experiment is deprecated; import from pml_recallk.experiments", DeprecationWarning, stacklevel=2
)

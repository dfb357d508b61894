"""Deprecated: the experiment moved to :mod:`pml_recallk.experiments` (this alias goes in 0.3).

``run_experiment`` and ``evaluate_checkpoint`` are in :mod:`pml_recallk.experiments.train`, the ``build_*``
functions in :mod:`pml_recallk.experiments.builders`, ``load_checkpoint`` in
:mod:`pml_recallk.experiments.checkpoints`.
"""

import warnings

import torch as _torch

from ._io import save_torch_atomic as save_atomic  # noqa: F401
from .experiments import builders as _builders
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
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_tester",
    "embed_and_evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "run_experiment",
    "save_atomic",
]


def build_loss(config):
    """The loss of ``config`` (now ``experiments.builders.build_loss(config, num_classes)``, with its miner)."""
    return _builders.build_loss(config, num_classes=0)[0]


def build_optimizer(config, model):
    """The network's optimiser (now ``experiments.builders.build_optimizers``, which adds the loss's)."""
    return _builders.build_optimizers(config, model, _torch.nn.Module())["trunk_optimizer"]


warnings.warn(
    "pml_recallk.experiment is deprecated; import from pml_recallk.experiments", DeprecationWarning, stacklevel=2
)

"""The names an experiment config chooses from: data sets, models and losses, one list of each.

* :data:`DATASETS`: config name → class in :mod:`pml_recallk.datasets` (the library's list). The class says its
  splits (``splits``) and its Recall@k preset (``recall_k_values``, the k reported for it, docs/method.md §5).
* :data:`MODEL_NAMES`: those of :func:`pml_recallk.models.build_model`.
* :data:`LOSSES`: config name (``loss.name``) → how to build the loss, its miner and its hyper-parameters, each
  written once, here, with its source. ``rsk`` takes its hyper-parameters from the config's ``[loss]`` table.

Example:
    >>> from pml_recallk.experiments.registry import DATASETS, LOSSES
    >>> "glyphs" in DATASETS and "multi_similarity" in LOSSES
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from ..datasets import DATASET_CLASSES, dataset_class
from ..losses import RecallKSurrogateLoss
from ..models.registry import MODEL_NAMES

__all__ = [
    "DATASETS",
    "GRAYSCALE_DATASETS",
    "LOSSES",
    "MODEL_NAMES",
    "LossEntry",
    "dataset_class",
    "folder_dataset",
    "register_loss",
]

# The one list of data sets is the library's (pml_recallk.datasets.DATASET_CLASSES): name → class.
DATASETS = DATASET_CLASSES
# Rendered characters: one-channel images ("L"), so the small CNN is built with one input channel for them.
GRAYSCALE_DATASETS = frozenset({"glyphs", "han_glyphs"})


def folder_dataset(name: str) -> bool:
    """Whether data set ``name`` is read from a local folder of its standard layout (``data.root``)."""
    return name not in GRAYSCALE_DATASETS


# ------------------------------------------------------------------------------------------------- losses

Built = tuple[Any, Any]  # (loss module, miner module or None)


@dataclass(frozen=True)
class LossEntry:
    """One loss of :data:`LOSSES`.

    Attributes:
        build: ``build(config, num_classes) -> (loss, miner or None)``, called after seeding, so that a loss with
            parameters (proxies) is initialised from the run's seed; ``num_classes`` counts the training classes.
        settings: the hyper-parameters in words, with their source (shown in reports and ``--list``).
        loss_lr_factor: a loss with parameters gets its own Adam at ``train.lr`` times this (PML's
            ``metric_loss_optimizer``).
    """

    build: Callable[[Mapping[str, Any], int], Built]
    settings: str
    loss_lr_factor: float = 1.0


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


def _pml_entry(
    loss: str, kwargs: dict[str, Any], note: str, miner: str = "", miner_kwargs: dict | None = None, **entry: Any
) -> LossEntry:
    """A PML loss (and miner) with fixed keyword arguments; its settings text is made from those arguments."""
    miner_kwargs = miner_kwargs or {}

    def build(config: Mapping[str, Any], num_classes: int) -> Built:
        positional = (num_classes, config["model"]["embedding_size"]) if loss == "ProxyAnchorLoss" else ()
        built_miner = getattr(pml_miners, miner)(**miner_kwargs) if miner else None
        return getattr(pml_losses, loss)(*positional, **kwargs), built_miner

    text = f"{loss}({_kwargs_text(kwargs)})"
    if miner:
        text += f" + {miner}({_kwargs_text(miner_kwargs)})"
    return LossEntry(build, f"{text}: {note}", **entry)


def _rsk(config: Mapping[str, Any], num_classes: int) -> Built:
    loss = config["loss"]
    k_temperature = loss["k_temperature"]
    criterion = RecallKSurrogateLoss(
        k_values=tuple(loss["k_values"]),
        rank_temperature=loss["rank_temperature"],
        k_temperature=tuple(k_temperature) if isinstance(k_temperature, list) else k_temperature,
        k_margin=loss["k_margin"],
        count_query_in_rank=loss["count_query_in_rank"],
        query_chunk_size=loss["query_chunk_size"] or None,
    )
    return criterion, None


# PML 2.9's SmoothAPLoss is left out: it groups positives by position (contiguous blocks of batch/classes), not by
# label, which is wrong for MPerClassSampler batches of m = 4 unless there are exactly 4 classes per batch
# (tests/benchmark/test_losses.py checks that this is still so).
LOSSES: dict[str, LossEntry] = {
    "rsk": LossEntry(
        _rsk,
        "RecallKSurrogateLoss with the config's [loss] table (defaults: the paper's k = (1, 2, 4, 8, 16), "
        "τ_rank = 0.01, τ_k = 1; the query excluded from its own rank, docs/method.md §2)",
    ),
    "contrastive": _pml_entry(
        "ContrastiveLoss",
        {"pos_margin": 0.0, "neg_margin": 1.0},
        "Euclidean distance of L2-normalised embeddings (PML's defaults), all pairs of the batch",
    ),
    "multi_similarity": _pml_entry(
        "MultiSimilarityLoss",
        {"alpha": 2.0, "beta": 50.0, "base": 0.5},
        "cosine similarity; α, β, λ and the miner's ε as the MS paper recommends (Wang et al., CVPR 2019)",
        miner="MultiSimilarityMiner",
        miner_kwargs={"epsilon": 0.1},
    ),
    "triplet": _pml_entry(
        "TripletMarginLoss",
        {"margin": 0.1},
        "Euclidean distance of L2-normalised embeddings; one margin for loss and miner, so that every mined "
        "triplet is penalised (between PML's loss default 0.05 and miner default 0.2)",
        miner="TripletMarginMiner",
        miner_kwargs={"margin": 0.1, "type_of_triplets": "semihard"},
    ),
    "proxy_anchor": _pml_entry(
        "ProxyAnchorLoss",
        {"margin": 0.1, "alpha": 32.0},
        "the paper's margin and α (Kim et al., CVPR 2020; PML's defaults), one proxy per training class, the "
        "proxies trained by their own Adam at 100 × the network's learning rate (the paper's)",
        loss_lr_factor=100.0,
    ),
    "fastap": _pml_entry(
        "FastAPLoss",
        {"num_bins": 10},
        "squared Euclidean distance of L2-normalised embeddings, the paper's 10 bins (Cakir et al., CVPR 2019)",
    ),
}


def register_loss(name: str, entry: LossEntry, overwrite: bool = False) -> None:
    """Add a loss to :data:`LOSSES`, so that configs (``loss.name``) and sweeps can name it.

    Example:
        >>> from pytorch_metric_learning import losses
        >>> register_loss("circle", LossEntry(lambda config, classes: (losses.CircleLoss(), None), "CircleLoss()"))
        >>> "circle" in LOSSES
        True
        >>> del LOSSES["circle"]
    """
    if not isinstance(entry, LossEntry):
        raise TypeError(f"entry must be a LossEntry, got {type(entry).__name__}")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"loss name must be a Python identifier, got {name!r}")
    if name in LOSSES and not overwrite:
        raise ValueError(f"a loss named {name!r} is already registered; pass overwrite=True to replace it")
    LOSSES[name] = entry

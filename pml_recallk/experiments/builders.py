"""Config → data, model, loss, optimisers, tester and trainer: the one wiring that ``pml-recallk train`` and the
benchmark share.

Every function takes a validated config (:func:`~pml_recallk.experiments.config.resolve_config`) and builds one
piece with PML's and this package's classes; nothing here trains or writes files.

Example:
    >>> from pml_recallk.experiments import builders, resolve_config
    >>> config = resolve_config(overrides=["model.embedding_size=16"])
    >>> loss, miner = builders.build_loss(config, num_classes=10)
    >>> type(loss).__name__, miner is None
    ('RecallKSurrogateLoss', True)
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from torch.utils.data import Dataset, Subset

from .. import losses as losses_module
from ..datasets import class_disjoint_split
from ..datasets.common import ClassSubset
from ..evaluation import RecallAtKAccuracyCalculator
from ..evaluation.tester import QueryGalleryTester
from ..losses.recall_k_surrogate_loss import contains_recall_k_surrogate
from ..models import build_model as build_named_model
from ..models import transforms
from ..samplers import DistributedMPerClassSampler, SeededItems
from ..trainers import MemoryEfficientTrainer
from ..trainers.collapse import CollapseMonitor
from . import distributed
from .checkpoints import Parts, load_init_weights, seed_everything
from .config import ConfigError
from .metrics import MAP_AT_R
from .registry import MODELS, build_loss_and_miner, dataset_class, loss_entry

__all__ = [
    "MAP_AT_R",
    "Setup",
    "TransformedDataset",
    "batch_size_of",
    "build_accuracy_calculator",
    "build_datasets",
    "build_initial_model",
    "build_loss",
    "build_model",
    "build_optimizers",
    "build_parts",
    "build_scheduler",
    "build_setup",
    "build_tester",
    "build_trainer",
    "data_channels",
    "device_of",
    "input_channels",
    "iterations_of",
    "loader_workers",
    "mixed_precision_dtype",
    "place_model",
]


# --------------------------------------------------------------------------------------------------- data


class TransformedDataset(Dataset):
    """``dataset`` with ``transform`` applied to each image; keeps the ``labels`` attribute.

    The train and validation parts come from one loaded split, so the transform (augmented for training, plain
    for evaluation) is applied here rather than by the loader.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any]):
        self.dataset = dataset
        self.transform = transform
        self.labels = np.asarray(dataset.labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return self.transform(image), label

    @property
    def query_gallery(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(is_query, is_gallery)`` of the underlying data (a CSV listing's columns), or None."""
        return _query_gallery(self.dataset)


def _query_gallery(dataset: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(dataset, Subset):
        flags = _query_gallery(dataset.dataset)
        return None if flags is None else tuple(f[np.asarray(dataset.indices)] for f in flags)
    is_query = getattr(dataset, "is_query", None)
    return None if is_query is None else (np.asarray(is_query, bool), np.asarray(dataset.is_gallery, bool))


def _loader_error(error: Exception) -> ConfigError:
    """A loader's own check (a missing folder, listing or image, a malformed line) as the command's one line."""
    return ConfigError(str(error).splitlines()[0] if str(error) else repr(error))


def data_channels(config: Mapping[str, Any]) -> int:
    """The channels (1 or 3) of the config's data: ``data.channels``, else what the data set says
    (:meth:`~pml_recallk.datasets.ConfigurableDataset.data_channels`; a generic set decodes its images, cached)."""
    data = config["data"]
    if data["channels"]:
        return data["channels"]
    try:
        return dataset_class(data["dataset"]).data_channels(data)
    except (FileNotFoundError, ValueError) as error:
        raise _loader_error(error) from None


def with_data_channels(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A copy of ``config`` whose ``data.channels`` says the data's channels when only the data can tell (a generic
    set's 0 resolved by :func:`data_channels`), so that a run's saved config says what its model was built for.
    A data set whose class fixes its channels (the glyphs: 1) keeps 0: the config already says it."""
    result = copy.deepcopy({table: dict(values) for table, values in config.items()})
    if not result["data"]["channels"] and not dataset_class(result["data"]["dataset"]).channels:
        result["data"]["channels"] = data_channels(config)
    return result


def input_channels(config: Mapping[str, Any]) -> int:
    """Image channels the model of ``config`` is built for: the model's own (3 for an ImageNet backbone), else the
    data's (:func:`data_channels`: 1 for the glyphs, from the images for a generic set).

    A model keeps the channels of the config it was trained with, even when evaluated on other data (the
    transforms convert the images to match).
    """
    fixed = MODELS[config["model"]["name"]].channels
    return fixed if fixed is not None else data_channels(config)


def _load_split(config: Mapping[str, Any], split: str) -> Dataset:
    data = config["data"]
    try:
        dataset = dataset_class(data["dataset"]).from_config(data, split)
        if data["check_images"] and callable(getattr(dataset, "check_images", None)):
            dataset.check_images()  # every image decoded once per data root (cached): a damaged file fails now
    except (FileNotFoundError, ValueError) as error:
        raise _loader_error(error) from None
    if data["max_classes"]:
        labels = np.asarray(dataset.labels)
        keep = np.unique(labels)[: data["max_classes"]]
        dataset = ClassSubset(dataset, np.flatnonzero(np.isin(labels, keep)))
    return dataset


def _available_splits(config: Mapping[str, Any]) -> tuple[str, ...]:
    try:
        return tuple(dataset_class(config["data"]["dataset"]).available_splits(config["data"]))
    except (FileNotFoundError, ValueError) as error:
        raise _loader_error(error) from None


def _check_split_names(config: Mapping[str, Any], names: list[str]) -> None:
    """Each name must be ``train``, ``val`` or a split of the data set (the error lists them all)."""
    own = _available_splits(config)
    available = ("train", "val", *(s for s in own if s not in ("train", "val")))
    for name in names:
        if name not in available and name not in own:
            raise ConfigError(
                f"{config['data']['dataset']} has no split {name!r}; its splits are {', '.join(available)}"
            )


def build_datasets(
    config: Mapping[str, Any], splits: list[str] | None = None, channels: int | None = None
) -> dict[str, Dataset]:
    """The datasets of an experiment, transformed and ready for PML's trainer and tester.

    Returns ``{"train": ..., "val": ..., <each of data.test_splits>: ...}``; ``splits`` picks other names
    (``"train"``, ``"val"`` or any split of the data set). When the data set has a ``val`` split of its own (an
    image folder's ``val/``, a CSV's ``val`` rows), that is the validation part and train is all of
    ``data.train_split``; otherwise train and val are class-disjoint parts of ``data.train_split``
    (``data.val_fraction`` of its classes, drawn with ``data.split_seed``). Train gets the augmenting
    ``train_transform``, the others ``test_transform``, with images converted to ``channels`` (default
    :func:`input_channels`). Every split is loaded (and its images decoded once, cached) here.

    Example:
        >>> from pml_recallk.experiments import resolve_config
        >>> config = resolve_config("image_folder", overrides=["data.root=photos"])  # doctest: +SKIP
        >>> parts = build_datasets(config)  # doctest: +SKIP
        >>> sorted(parts), parts["train"][0][0].shape  # doctest: +SKIP
        (['test', 'train', 'val'], torch.Size([3, 64, 64]))
    """
    data = config["data"]
    wanted = ["train", "val", *data["test_splits"]] if splits is None else list(splits)
    _check_split_names(config, [data["train_split"], *wanted])
    channels = input_channels(config) if channels is None else channels
    train_tf = transforms.train_transform(
        data["image_size"],
        channels=channels,
        flip=data["flip"],
        scale=tuple(data["crop_scale"]),
        **_normalization(config, channels),
    )
    test_tf = evaluation_transform(config, channels)
    result: dict[str, Dataset] = {}
    if ("train" in wanted or "val" in wanted) and "val" in _available_splits(config):
        result["train"] = TransformedDataset(_load_split(config, data["train_split"]), train_tf)
        result["val"] = TransformedDataset(_load_split(config, "val"), test_tf)
    elif "train" in wanted or "val" in wanted:
        training_split = _load_split(config, data["train_split"])
        try:
            train, val = class_disjoint_split(
                training_split, val_fraction=data["val_fraction"], seed=data["split_seed"]
            )
        except ValueError as error:  # too few classes for a training and a validation part
            raise ConfigError(f"data.val_fraction / data.max_classes: {error}") from None
        result["train"] = TransformedDataset(train, train_tf)
        result["val"] = TransformedDataset(val, test_tf)
    for name in wanted:
        if name not in result:
            result[name] = TransformedDataset(_load_split(config, name), test_tf)
    return {name: result[name] for name in wanted}


def _normalization(config: Mapping[str, Any], channels: int) -> dict[str, tuple[float, ...] | None]:
    """``{"mean": ..., "std": ...}`` of ``data.normalize_*`` (None each: the default for ``channels``)."""
    data = config["data"]
    if not data["normalize_mean"]:
        return {"mean": None, "std": None}
    if len(data["normalize_mean"]) != channels:
        raise ConfigError(
            f"data.normalize_mean {data['normalize_mean']} and data.normalize_std {data['normalize_std']} hold "
            f"{len(data['normalize_mean'])} values but the model reads {channels}-channel images; give {channels}"
        )
    return {"mean": tuple(data["normalize_mean"]), "std": tuple(data["normalize_std"])}


def evaluation_transform(config: Mapping[str, Any], channels: int) -> Callable[[Any], torch.Tensor]:
    """The plain (not augmenting) image → tensor transform of ``config`` for a ``channels``-channel model."""
    return transforms.test_transform(
        config["data"]["image_size"], channels=channels, **_normalization(config, channels)
    )


def loader_workers(config: Mapping[str, Any]) -> int:
    """``data.num_workers``, capped at the CPUs this process may use: torch's DataLoader warns above that (the
    benchmark recipes ask for 8, the paper's machines had them). A cap is noted once, in one line on stderr."""
    wanted = config["data"]["num_workers"]
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if wanted <= available:
        return wanted
    _note_worker_cap(wanted, available)
    return available


@functools.cache
def _note_worker_cap(wanted: int, available: int) -> None:
    logging.getLogger(__name__).warning(
        "data.num_workers = %d lowered to %d, the CPUs of this machine", wanted, available
    )


def batch_size_of(config: Mapping[str, Any], num_classes: int) -> int:
    """``data.batch_size``, 0 meaning every training class × ``samples_per_class``; refused if too large."""
    m = config["data"]["samples_per_class"]
    batch = config["data"]["batch_size"] or num_classes * m
    if batch // m > num_classes:
        raise ConfigError(
            f"data.batch_size {batch} asks for {batch // m} classes per batch but the training part has "
            f"{num_classes} classes; lower data.batch_size"
        )
    memory = config["memory"]
    if memory["enabled"] and memory["size"] < batch:
        raise ConfigError(
            f"memory.size ({memory['size']}) is smaller than the batch ({batch} images: data.batch_size "
            f"{config['data']['batch_size']}): every step enqueues a whole batch; set memory.size to at least {batch}"
        )
    return batch


def iterations_of(config: Mapping[str, Any], num_images: int, batch_size: int) -> int:
    """``train.iterations_per_epoch``, 0 meaning one pass over the ``num_images`` training images."""
    return config["train"]["iterations_per_epoch"] or max(1, num_images // batch_size)


# ------------------------------------------------------------------------------------------ model and loss


def device_of(config: Mapping[str, Any]) -> torch.device:
    """``train.device``; ``auto`` is CUDA when torch sees it, else the CPU. A missing device is a ConfigError."""
    name = config["train"]["device"]
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but torch sees no CUDA device; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is 'mps' but torch sees no MPS device; use --device cpu")
    return torch.device(name)


def place_model(
    model: torch.nn.Module, config: Mapping[str, Any], device: torch.device | None = None
) -> torch.nn.Module:
    """``model`` moved to ``device`` (default :func:`device_of` ``config``), its convolution weights in the
    channels-last layout when ``train.channels_last`` (a convolution then computes in that layout whatever its
    input's; other parameters keep theirs). Returns ``model``."""
    memory_format = torch.channels_last if config["train"]["channels_last"] else torch.preserve_format
    return model.to(device or device_of(config), memory_format=memory_format)


def build_model(config: Mapping[str, Any], channels: int | None = None) -> torch.nn.Module:
    """The embedding network of ``config["model"]`` (only the keys that network takes are passed).

    ``channels`` (default :func:`input_channels`) is the small CNN's ``in_channels``. ``model.init_checkpoint``
    is loaded by :func:`pml_recallk.experiments.checkpoints.load_init_weights`, not here.
    """
    model = config["model"]
    entry = MODELS[model["name"]]
    kwargs: dict[str, Any] = {"embedding_size": model["embedding_size"]}
    kwargs.update({key: model[key] or None if key == "pretrained_path" else model[key] for key in entry.arguments})
    if entry.channels is None:
        kwargs["in_channels"] = channels or input_channels(config)
    kwargs.update({key: config["train"][key] for key in entry.train_arguments})
    try:
        return build_named_model(model["name"], **kwargs)
    except FileNotFoundError as error:
        raise ConfigError(f"model.pretrained_path: {error}") from None


def build_loss(config: Mapping[str, Any], num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """``(loss, miner or None)``: the loss ``loss.name`` of the registry, in SimilarityMixup if ``mixup.enabled``,
    in CrossBatchMemory if ``memory.enabled`` (which then takes the miner: it mines batch × memory pairs)."""
    try:
        loss, miner = build_loss_and_miner(config, num_classes)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"[loss] {config['loss']['name']}: {str(error).splitlines()[0]}") from None
    mixup, memory = config["mixup"], config["memory"]
    if mixup["enabled"]:
        loss = losses_module.SimilarityMixup(
            loss,
            mode=mixup["mode"],
            alpha_range=tuple(mixup["alpha_range"]),
            max_pairs_per_class=mixup["max_pairs_per_class"] or None,
        )
    if memory["enabled"]:
        try:
            # By name, on use: CrossBatchMemory is newer than the rest of the losses package.
            loss = losses_module.CrossBatchMemory(
                loss=loss, embedding_size=config["model"]["embedding_size"], memory_size=memory["size"], miner=miner
            )
        except ValueError as error:
            raise ConfigError(f"[memory]: {error}") from None
        miner = None
    return loss, miner


def build_optimizers(
    config: Mapping[str, Any], model: torch.nn.Module, loss: torch.nn.Module
) -> dict[str, torch.optim.Optimizer]:
    """``{"trunk_optimizer": ...}``: Adam, AdamW or SGD (momentum 0.9) over the trainable parameters, with
    ``train.lr`` and ``weight_decay``; a loss with parameters (proxies) also gets ``metric_loss_optimizer``, an
    Adam at ``train.loss_lr``, or (0, the default) ``train.lr`` times its registry entry's ``loss_lr_factor``."""
    train = config["train"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[train["optimizer"]]
    extra = {"momentum": 0.9} if train["optimizer"] == "sgd" else {}
    optimizers = {
        "trunk_optimizer": optimizer_class(params, lr=train["lr"], weight_decay=train["weight_decay"], **extra)
    }
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        loss_lr = train["loss_lr"] or train["lr"] * loss_entry(config["loss"]["name"]).loss_lr_factor
        optimizers["metric_loss_optimizer"] = torch.optim.Adam(loss_params, lr=loss_lr)
    return optimizers


def build_scheduler(config: Mapping[str, Any], optimizer: torch.optim.Optimizer):
    """MultiStepLR at ``train.lr_milestones`` with ``train.lr_gamma``, or None without milestones."""
    train = config["train"]
    if not train["lr_milestones"]:
        return None
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, train["lr_milestones"], gamma=train["lr_gamma"])


# --------------------------------------------------------------------------------------------- evaluation


def build_accuracy_calculator(config: Mapping[str, Any]) -> RecallAtKAccuracyCalculator:
    """:class:`~pml_recallk.RecallAtKAccuracyCalculator` reporting ``recall_at_<k>`` for ``eval.k_values``, and
    MAP@R when ``eval.map_at_r``."""
    k_values = tuple(config["eval"]["k_values"])
    # Only what is asked for: PML's other default metrics (MAP over the whole ranking, k-means NMI/AMI) cost more.
    include = tuple(f"recall_at_{k}" for k in k_values) + ((MAP_AT_R,) if config["eval"]["map_at_r"] else ())
    return RecallAtKAccuracyCalculator(k_values=k_values, include=include)


def build_tester(
    config: Mapping[str, Any], device: torch.device | str, end_of_testing_hook=None
) -> GlobalEmbeddingSpaceTester:
    """:class:`QueryGalleryTester` with ``eval.batch_size``, :func:`loader_workers` and
    :func:`build_accuracy_calculator`; each split is evaluated against itself, every item a query with the rest
    of its split as the database, or, for a split with query and gallery flags, its queries against its gallery."""
    return QueryGalleryTester(
        batch_size=config["eval"]["batch_size"],
        dataloader_num_workers=loader_workers(config),
        data_device=torch.device(device),
        accuracy_calculator=build_accuracy_calculator(config),
        end_of_testing_hook=end_of_testing_hook,
    )


# ------------------------------------------------------------------------------------------------ trainer


def mixed_precision_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``train.mixed_precision`` as a dtype: ``auto`` is float16 on CUDA (with a GradScaler), else bfloat16."""
    if name == "off":
        return None
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, name)


def make_sampler(
    config: Mapping[str, Any], labels: np.ndarray, batch_size: int, iterations: int
) -> DistributedMPerClassSampler:
    """``iterations`` global batches of ``batch_size`` images, ``data.samples_per_class`` per class, drawn from
    ``train.seed`` and the epoch (``set_epoch``); under torchrun each rank yields its slice. Each image comes with
    its own augmentation seed (for :class:`~pml_recallk.samplers.SeededItems`), so the batches and their
    augmentation are the same for any number of processes (docs/distributed.md)."""
    m, seed = config["data"]["samples_per_class"], config["train"]["seed"]
    try:
        return DistributedMPerClassSampler(labels, m, batch_size, iterations, seed=seed, item_seeds=True)
    except ValueError as error:
        raise ConfigError(f"data.batch_size / data.samples_per_class: {error}") from None


class _Trainer(MemoryEfficientTrainer):
    """MemoryEfficientTrainer for a trunk that is the whole embedding network (the models here end in their own
    head): PML's schema check would print ``models is missing "embedder"`` on every run."""

    def modify_schema(self) -> None:
        self.schema["models"].important = []


def build_trainer(
    config: Mapping[str, Any],
    parts: Parts,
    dataset: Dataset,
    device: torch.device,
    batch_size: int,
    iterations: int,
    end_of_iteration_hook: Callable | None = None,
    end_of_epoch_hook: Callable | None = None,
) -> MemoryEfficientTrainer:
    """:class:`~pml_recallk.MemoryEfficientTrainer` for every loss and batch: chunks of ``train.chunk_size``
    images (0: the whole batch in one chunk), the miner as PML's ``tuple_miner``, ``grad_clip``, the lr schedule.

    ``batch_size`` is the global batch; under torchrun this rank's trainer loads its share of it. The hooks may
    be set later (PML calls ``trainer.end_of_iteration_hook`` and ``trainer.end_of_epoch_hook``): a run sets them
    once its folder and records exist.
    """
    train = config["train"]
    model = parts.model
    clippers = {}
    if train["grad_clip"] > 0:
        clippers["trunk_grad_clipper"] = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
    scheduler = parts.scheduler
    return _Trainer(
        models={"trunk": model},
        optimizers=dict(parts.optimizers),
        batch_size=distributed.split_batch(batch_size),
        loss_funcs={"metric_loss": parts.loss},
        mining_funcs={"tuple_miner": parts.miner} if parts.miner is not None else {},
        dataset=SeededItems(dataset),
        sampler=make_sampler(config, dataset.labels, batch_size, iterations),
        iterations_per_epoch=iterations,
        data_device=device,
        lr_schedulers={"trunk_scheduler_by_epoch": scheduler} if scheduler is not None else None,
        gradient_clippers=clippers or None,
        dataloader_num_workers=loader_workers(config),
        end_of_iteration_hook=end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
        chunk_size=train["chunk_size"] or distributed.split_batch(batch_size),
        amp=mixed_precision_dtype(train["mixed_precision"], device),
        batchnorm="freeze" if train["freeze_batchnorm"] else "chunk_statistics",
        # RS@k at its ceiling of 1 has no gradient: warn when it stalls there (trainers/collapse.py).
        loss_monitor=CollapseMonitor().loss_hook() if contains_recall_k_surrogate(parts.loss) else None,
        stop_on_nan=train["stop_on_nan"],
    )


# ------------------------------------------------------------------------------------------------- a run


def build_parts(config: Mapping[str, Any], model: torch.nn.Module, num_classes: int, device) -> Parts:
    """The :class:`~.checkpoints.Parts` of ``config`` for ``model``: its loss (on ``device``), optimisers and
    schedule."""
    loss, miner = build_loss(config, num_classes)
    loss = loss.to(device)
    optimizers = build_optimizers(config, model, loss)
    return Parts(model, loss, miner, optimizers, build_scheduler(config, optimizers["trunk_optimizer"]))


@dataclass(frozen=True)
class Setup:
    """Everything a run of ``pml-recallk train`` needs, built and checked from its config before its folder is made.

    ``datasets`` holds ``train``, ``val`` and the test splits; ``init`` says where the model's weights came from
    (``model.init_checkpoint``; None for a fresh model); ``batch_size`` is the global batch, ``iterations`` per
    epoch; ``tester`` evaluates the untrained and the best model; ``validator`` is a second tester, whose
    ``end_of_testing_hook`` the run points at its records; ``trainer`` trains the ``parts`` (its hooks also set by
    the run); ``warmup_layer`` is the layer that trains alone during ``train.warmup_epochs`` (None without them).
    """

    config: Mapping[str, Any]
    datasets: Mapping[str, Dataset]
    device: torch.device
    init: dict[str, Any] | None
    num_classes: int
    batch_size: int
    iterations: int
    parts: Parts
    tester: GlobalEmbeddingSpaceTester
    validator: GlobalEmbeddingSpaceTester
    trainer: MemoryEfficientTrainer
    warmup_layer: torch.nn.Module | None

    @property
    def test_names(self) -> list[str]:
        return list(self.config["data"]["test_splits"])


def build_initial_model(
    config: Mapping[str, Any], datasets: Mapping[str, Dataset] | None, device: torch.device
) -> tuple[torch.nn.Module, Mapping[str, Dataset], dict[str, Any] | None]:
    """``(model, datasets, init)``: the data (built unless given) and the model as seeded by ``(train.seed, 0)``,
    with the weights of ``model.init_checkpoint`` if set (``init`` says which, else None)."""
    seed_everything(config["train"]["seed"], 0)
    datasets = datasets if datasets is not None else build_datasets(config)
    model = build_model(config)
    init = None
    if config["model"]["init_checkpoint"]:
        init = load_init_weights(model, config["model"]["init_checkpoint"])
    return place_model(model, config, device), datasets, init


def build_setup(config: Mapping[str, Any], datasets: Mapping[str, Dataset] | None = None) -> Setup:
    """The :class:`Setup` of ``config``: data (unless given), model, loss, optimisers, testers and trainer, each
    from its own table of the config; every refusal (data, batch, sampler, loss, warm-up) comes from here.
    ``Setup.config`` is a copy of ``config`` that says how many channels the model was built for."""
    config = with_data_channels(config)
    device = device_of(config)
    model, datasets, init = build_initial_model(config, datasets, device)
    train_set = datasets["train"]
    num_classes = len(np.unique(train_set.labels))
    batch_size = batch_size_of(config, num_classes)
    iterations = iterations_of(config, len(train_set), batch_size)
    parts = build_parts(config, model, num_classes, device)
    # A model without an embedding layer is refused with warm-up epochs, before the output folder is made.
    warmup_layer = _embedding_layer(model) if config["train"]["warmup_epochs"] else None
    return Setup(
        config=config,
        datasets=datasets,
        device=device,
        init=init,
        num_classes=num_classes,
        batch_size=batch_size,
        iterations=iterations,
        parts=parts,
        tester=build_tester(config, device),
        validator=build_tester(config, device),
        trainer=build_trainer(config, parts, train_set, device, batch_size, iterations),
        warmup_layer=warmup_layer,
    )


def _embedding_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The layer that trains alone during ``train.warmup_epochs``: what the model's ``embedding_layer()`` returns."""
    layer = getattr(model, "embedding_layer", None)
    if not callable(layer):
        raise ConfigError(
            f"train.warmup_epochs trains only the model's embedding layer, but {type(model).__name__} names none "
            "(it has no embedding_layer() method); set train.warmup_epochs=0"
        )
    return layer()

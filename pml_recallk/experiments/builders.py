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

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from torch.utils.data import Dataset

from .. import losses as losses_module
from ..datasets import class_disjoint_split
from ..datasets.common import ClassSubset
from ..evaluation import RecallAtKAccuracyCalculator
from ..models import build_model as build_named_model
from ..models import transforms
from ..trainers import MemoryEfficientTrainer
from .config import ConfigError
from .registry import GRAYSCALE_DATASETS, LOSSES, dataset_class

__all__ = [
    "MAP_AT_R",
    "TransformedDataset",
    "batch_size_of",
    "build_accuracy_calculator",
    "build_datasets",
    "build_loss",
    "build_model",
    "build_optimizers",
    "build_scheduler",
    "build_tester",
    "build_trainer",
    "device_of",
    "input_channels",
    "iterations_of",
    "mixed_precision_dtype",
    "seed_everything",
]

MAP_AT_R = "mean_average_precision_at_r"


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


def input_channels(config: Mapping[str, Any]) -> int:
    """Image channels the model of ``config`` is built for: 1 for the small CNN on rendered glyphs, else 3.

    A model keeps the channels of the config it was trained with, even when evaluated on another data set
    (the transforms convert the images to match).
    """
    return 1 if config["data"]["dataset"] in GRAYSCALE_DATASETS and config["model"]["name"] == "small_cnn" else 3


def _dataset_arguments(data: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments of the data set's class, from the ``[data]`` table."""
    if data["dataset"] == "glyphs":
        return (), {
            "font_dirs": data["glyphs_font_dirs"] or None,
            "image_size": data["image_size"],
            "cache_dir": data["glyphs_cache_dir"] or None,
            "one_face_per_family": data["glyphs_one_face_per_family"],
        }
    if data["dataset"] == "han_glyphs":
        kwargs = {
            "font_dir": data["han_font_dir"] or None,
            "image_size": data["image_size"],
            "seed": data["split_seed"],
            "cache_dir": data["glyphs_cache_dir"] or None,
        }
        if data["images_per_class"]:
            kwargs["images_per_class"] = data["images_per_class"]
        return (), kwargs
    return (data["root"],), {}


def _load_split(config: Mapping[str, Any], split: str) -> Dataset:
    data = config["data"]
    args, kwargs = _dataset_arguments(data)
    try:
        dataset = dataset_class(data["dataset"])(*args, split=split, **kwargs)
    except (FileNotFoundError, ValueError) as error:
        # The loaders' own checks: a missing folder, listing or image, a malformed line, a size they cannot render.
        raise ConfigError(str(error).splitlines()[0] if str(error) else repr(error)) from None
    if data["max_classes"]:
        labels = np.asarray(dataset.labels)
        keep = np.unique(labels)[: data["max_classes"]]
        dataset = ClassSubset(dataset, np.flatnonzero(np.isin(labels, keep)))
    return dataset


def _check_split_names(config: Mapping[str, Any], names: list[str]) -> None:
    """Each name must be ``train``, ``val`` or a split of the data set (the error lists them all)."""
    own = tuple(dataset_class(config["data"]["dataset"]).splits)
    available = ("train", "val", *(s for s in own if s != "train"))
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
    (``"train"``, ``"val"`` or any split of the data set). Train and val are class-disjoint parts of
    ``data.train_split`` (``data.val_fraction`` of its classes, drawn with ``data.split_seed``); train gets the
    augmenting ``train_transform``, the others ``test_transform``, with images converted to ``channels``
    (default :func:`input_channels`). Every split is loaded (and its files checked by the loader) here.
    """
    data = config["data"]
    wanted = ["train", "val", *data["test_splits"]] if splits is None else list(splits)
    _check_split_names(config, [data["train_split"], *wanted])
    channels = input_channels(config) if channels is None else channels
    train_tf = transforms.train_transform(
        data["image_size"], channels=channels, flip=data["flip"], scale=tuple(data["crop_scale"])
    )
    test_tf = transforms.test_transform(data["image_size"], channels=channels)
    result: dict[str, Dataset] = {}
    if "train" in wanted or "val" in wanted:
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


def batch_size_of(config: Mapping[str, Any], num_classes: int) -> int:
    """``data.batch_size``, 0 meaning every training class × ``samples_per_class``; refused if too large."""
    m = config["data"]["samples_per_class"]
    batch = config["data"]["batch_size"] or num_classes * m
    if batch // m > num_classes:
        raise ConfigError(
            f"data.batch_size {batch} asks for {batch // m} classes per batch but the training part has "
            f"{num_classes} classes; lower data.batch_size"
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


def seed_everything(seed: int, epoch: int) -> None:
    """Seed Python, NumPy (which MPerClassSampler draws from) and torch from ``(seed, epoch)``.

    Epoch 0 seeds the model's initialisation; epoch e ≥ 1 the sampling and augmentation of epoch e, so an epoch
    does not depend on what ran before it in the process.
    """
    derived = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)  # noqa: NPY002 - MPerClassSampler draws from np.random (c_f.NUMPY_RANDOM)
    torch.manual_seed(derived)


def build_model(config: Mapping[str, Any], channels: int | None = None) -> torch.nn.Module:
    """The embedding network of ``config["model"]`` (only the keys that network takes are passed).

    ``channels`` (default :func:`input_channels`) is the small CNN's ``in_channels``. ``model.init_checkpoint``
    is loaded by :func:`pml_recallk.experiments.checkpoints.load_init_weights`, not here.
    """
    model = config["model"]
    kwargs: dict[str, Any] = {"embedding_size": model["embedding_size"]}
    if model["name"] == "small_cnn":
        kwargs.update(in_channels=channels or input_channels(config), width=model["width"], norm=model["norm"])
    else:
        kwargs["pretrained_path"] = model["pretrained_path"] or None
        if model["name"] == "resnet50" or model["name"].startswith("mobilenet_v2"):
            kwargs["freeze_batchnorm"] = config["train"]["freeze_batchnorm"]
    try:
        return build_named_model(model["name"], **kwargs)
    except FileNotFoundError as error:
        raise ConfigError(f"model.pretrained_path: {error}") from None


def build_loss(config: Mapping[str, Any], num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """``(loss, miner or None)``: the loss ``loss.name`` of the registry, in SimilarityMixup if ``mixup.enabled``,
    in CrossBatchMemory if ``memory.enabled`` (which then takes the miner: it mines batch × memory pairs)."""
    loss, miner = LOSSES[config["loss"]["name"]].build(config, num_classes)
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
        loss_lr = train["loss_lr"] or train["lr"] * LOSSES[config["loss"]["name"]].loss_lr_factor
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
    """PML's ``GlobalEmbeddingSpaceTester`` with ``eval.batch_size``, ``data.num_workers`` and
    :func:`build_accuracy_calculator`; each split is evaluated against itself, every item a query with the rest
    of its split as the database."""
    return GlobalEmbeddingSpaceTester(
        batch_size=config["eval"]["batch_size"],
        dataloader_num_workers=config["data"]["num_workers"],
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


def make_sampler(config: Mapping[str, Any], labels: np.ndarray, batch_size: int, iterations: int) -> MPerClassSampler:
    """PML's ``MPerClassSampler``: ``data.samples_per_class`` images per class, ``iterations`` batches."""
    m = config["data"]["samples_per_class"]
    return MPerClassSampler(labels, m=m, batch_size=batch_size, length_before_new_iter=iterations * batch_size)


class _Trainer(MemoryEfficientTrainer):
    """MemoryEfficientTrainer for a trunk that is the whole embedding network (the models here end in their own
    head): PML's schema check would print ``models is missing "embedder"`` on every run."""

    def modify_schema(self) -> None:
        self.schema["models"].important = []


def build_trainer(
    config: Mapping[str, Any],
    parts: Mapping[str, Any],
    dataset: Dataset,
    device: torch.device,
    batch_size: int,
    iterations: int,
    end_of_iteration_hook: Callable,
    end_of_epoch_hook: Callable,
) -> MemoryEfficientTrainer:
    """:class:`~pml_recallk.MemoryEfficientTrainer` for every loss and batch: chunks of ``train.chunk_size``
    images (0: the whole batch in one chunk), the miner as PML's ``tuple_miner``, ``grad_clip``, the lr schedule.

    ``parts`` holds ``model``, ``loss``, ``miner``, ``optimizers`` and ``scheduler`` (None for none).
    """
    train = config["train"]
    model = parts["model"]
    clippers = {}
    if train["grad_clip"] > 0:
        clippers["trunk_grad_clipper"] = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
    scheduler = parts["scheduler"]
    return _Trainer(
        models={"trunk": model},
        optimizers=dict(parts["optimizers"]),
        batch_size=batch_size,
        loss_funcs={"metric_loss": parts["loss"]},
        mining_funcs={"tuple_miner": parts["miner"]} if parts["miner"] is not None else {},
        dataset=dataset,
        sampler=make_sampler(config, dataset.labels, batch_size, iterations),
        iterations_per_epoch=iterations,
        data_device=device,
        lr_schedulers={"trunk_scheduler_by_epoch": scheduler} if scheduler is not None else None,
        gradient_clippers=clippers or None,
        dataloader_num_workers=config["data"]["num_workers"],
        end_of_iteration_hook=end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
        chunk_size=train["chunk_size"] or batch_size,
        amp=mixed_precision_dtype(train["mixed_precision"], device),
        batchnorm="freeze" if train["freeze_batchnorm"] else "chunk_statistics",
    )

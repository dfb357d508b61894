"""One experiment from a config: data, model, loss, trainer and tester; training with checkpoints; evaluation.

:func:`run_experiment` is what ``pml-recallk train`` runs and what the benchmark runner calls:

1. load the training split, hold out ``data.val_fraction`` of its classes as a validation split
   (:func:`~pml_recallk.datasets.class_disjoint_split`), and load the test split(s);
2. evaluate the untrained model on the test and validation splits;
3. train with :class:`~pml_recallk.MemoryEfficientTrainer` on class-balanced batches (PML's
   ``MPerClassSampler``), validating every ``eval.every_n_epochs`` epochs and after the last through PML's
   ``HookContainer`` (record-keeper CSV/SQLite under ``<output>/logs``, tensorboard under
   ``<output>/tensorboard``), which picks the best epoch by validation ``recall_at_1``: the test set is never
   used to choose anything;
4. write ``<output>/checkpoints/last.pt`` atomically after every epoch, and ``best.pt`` when validation improves;
5. evaluate the best model on the test split(s), write ``results.json``, ``loss_curve.png`` and
   ``recall_curves.png``.

Resuming (``resume=True``) continues from ``last.pt``. Every epoch starts by re-seeding Python, NumPy and torch
from ``(train.seed, epoch)`` and building a new sampler, so an epoch does not depend on what ran before it in the
same process: a resumed run ends with the same weights and numbers as an uninterrupted one (on CPU, where the
kernels are deterministic).

Example:
    >>> from pml_recallk.config import resolve_config
    >>> config = resolve_config(overrides=["train.epochs=1"])
    >>> results = run_experiment(config, "runs/quick")  # doctest: +SKIP
    >>> results["trained"]["recall_at_1"] > results["untrained"]["recall_at_1"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import ConfigError, config_differences, dumps_toml

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

CHECKPOINT_FORMAT = "pml-recallk-checkpoint-v1"
PRIMARY_METRIC = "recall_at_1"

# Dataset class of each data set in pml_recallk.datasets; its `splits` attribute lists the splits.
_LOADERS = {
    "glyphs": "Glyphs",
    "cub": "CUB200",
    "cars196": "Cars196",
    "sop": "StanfordOnlineProducts",
    "inaturalist": "INaturalist2018",
    "vehicleid": "VehicleID",
}

# Keys that may change when a run is resumed: where and how fast it runs, and how long it trains.
_RESUMABLE_CHANGES = {
    "data.root",
    "data.glyphs_cache_dir",
    "data.num_workers",
    "train.device",
    "train.epochs",
    "eval.batch_size",
}

Log = Callable[[str], None]


def _log_to_stderr(message: str) -> None:
    print(f"pml-recallk: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- data


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
    """Image channels the model of ``config`` is built for: 1 for the small CNN on grayscale glyphs, else 3.

    A model keeps the channels of the config it was trained with, even when evaluated on another data set
    (the transforms convert the images to match).
    """
    return 1 if config["data"]["dataset"] == "glyphs" and config["model"]["name"] == "small_cnn" else 3


def _load_split(config: Mapping[str, Any], split: str) -> Dataset:
    from . import datasets

    data = config["data"]
    try:
        if data["dataset"] == "glyphs":
            return datasets.Glyphs(
                split=split,
                font_dirs=data["glyphs_font_dirs"] or None,
                image_size=data["image_size"],
                cache_dir=data["glyphs_cache_dir"] or None,
            )
        return getattr(datasets, _LOADERS[data["dataset"]])(data["root"], split=split)
    except (FileNotFoundError, ValueError) as error:
        # The loaders' own checks: a missing folder or listing, a malformed line, a size they cannot render.
        raise ConfigError(str(error)) from None


def _available_splits(config: Mapping[str, Any]) -> tuple[str, ...]:
    from . import datasets

    return tuple(getattr(datasets, _LOADERS[config["data"]["dataset"]]).splits)


def _first_classes(dataset: Dataset, max_classes: int) -> Dataset:
    from .datasets.common import ClassSubset

    labels = np.asarray(dataset.labels)
    keep = np.unique(labels)[:max_classes]
    return ClassSubset(dataset, np.flatnonzero(np.isin(labels, keep)))


def _check_split_names(config: Mapping[str, Any], names: list[str]) -> None:
    available = _available_splits(config)
    for name in names:
        if name not in available:
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
    (default :func:`input_channels`).
    """
    from .datasets import class_disjoint_split
    from .models import transforms

    data = config["data"]
    wanted = ["train", "val", *data["test_splits"]] if splits is None else list(splits)
    _check_split_names(config, [data["train_split"], *(s for s in wanted if s not in ("train", "val"))])
    channels = input_channels(config) if channels is None else channels
    train_tf = transforms.train_transform(
        data["image_size"], channels=channels, flip=data["flip"], scale=tuple(data["crop_scale"])
    )
    test_tf = transforms.test_transform(data["image_size"], channels=channels)

    def load(split: str) -> Dataset:
        dataset = _load_split(config, split)
        return _first_classes(dataset, data["max_classes"]) if data["max_classes"] else dataset

    result: dict[str, Dataset] = {}
    if "train" in wanted or "val" in wanted:
        train, val = class_disjoint_split(
            load(data["train_split"]), val_fraction=data["val_fraction"], seed=data["split_seed"]
        )
        result["train"] = TransformedDataset(train, train_tf)
        result["val"] = TransformedDataset(val, test_tf)
    for name in wanted:
        if name not in result:
            result[name] = TransformedDataset(load(name), test_tf)
    return {name: result[name] for name in wanted}


# ------------------------------------------------------------------------------------ model and loss


def build_model(config: Mapping[str, Any], channels: int | None = None) -> torch.nn.Module:
    """The embedding network of ``config["model"]`` (only the keys that network takes are passed).

    ``channels`` (default :func:`input_channels`) is the small CNN's ``in_channels``.
    """
    from . import models

    model = config["model"]
    kwargs: dict[str, Any] = {"embedding_size": model["embedding_size"]}
    if model["name"] == "small_cnn":
        kwargs.update(in_channels=channels or input_channels(config), width=model["width"], norm=model["norm"])
    else:
        kwargs["pretrained_path"] = model["pretrained_path"] or None
        if model["name"] == "resnet50":
            kwargs["freeze_batchnorm"] = config["train"]["freeze_batchnorm"]
    try:
        return models.build_model(model["name"], **kwargs)
    except FileNotFoundError as error:
        raise ConfigError(f"model.pretrained_path: {error}") from None


def build_loss(config: Mapping[str, Any]) -> torch.nn.Module:
    """:class:`~pml_recallk.RecallKSurrogateLoss` from ``config["loss"]``, in SimilarityMixup if ``mixup.enabled``."""
    from .losses import RecallKSurrogateLoss

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
    mixup = config["mixup"]
    if mixup["enabled"]:
        from .losses import SimilarityMixup

        criterion = SimilarityMixup(
            criterion,
            mode=mixup["mode"],
            alpha_range=tuple(mixup["alpha_range"]),
            max_pairs_per_class=mixup["max_pairs_per_class"] or None,
        )
    return criterion


def build_optimizer(config: Mapping[str, Any], model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) over the trainable parameters, with ``train.lr`` and ``weight_decay``."""
    train = config["train"]
    params = [p for p in model.parameters() if p.requires_grad]
    if train["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=train["lr"], weight_decay=train["weight_decay"])
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
    return torch.optim.SGD(params, lr=train["lr"], momentum=0.9, weight_decay=train["weight_decay"])


def build_accuracy_calculator(config: Mapping[str, Any]):
    """:class:`~pml_recallk.RecallAtKAccuracyCalculator` reporting ``recall_at_<k>`` for ``eval.k_values``."""
    from .evaluation import RecallAtKAccuracyCalculator

    k_values = tuple(config["eval"]["k_values"])
    # Only Recall@k: PML's other default metrics (MAP over the whole ranking, k-means NMI/AMI) cost far more.
    return RecallAtKAccuracyCalculator(k_values=k_values, include=tuple(f"recall_at_{k}" for k in k_values))


def _device(config: Mapping[str, Any]) -> torch.device:
    name = config["train"]["device"]
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but torch sees no CUDA device; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is 'mps' but torch sees no MPS device; use --device cpu")
    return torch.device(name)


# -------------------------------------------------------------------------------------------- evaluation


def build_tester(
    config: Mapping[str, Any], device: torch.device | str, end_of_testing_hook=None, accuracy_calculator=None
):
    """PML's ``GlobalEmbeddingSpaceTester`` with ``eval.batch_size``, ``data.num_workers`` and
    ``accuracy_calculator`` (default :func:`build_accuracy_calculator`); each split is evaluated against itself,
    every item a query with the rest of its split as the database."""
    from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester

    return GlobalEmbeddingSpaceTester(
        batch_size=config["eval"]["batch_size"],
        dataloader_num_workers=config["data"]["num_workers"],
        data_device=torch.device(device),
        accuracy_calculator=accuracy_calculator or build_accuracy_calculator(config),
        end_of_testing_hook=end_of_testing_hook,
    )


def _metrics_of(tester, split: str) -> dict[str, float]:
    """``{"recall_at_1": ..., ...}`` of one split from ``tester.all_accuracies`` (PML suffixes ``_level0``)."""
    metrics = tester.accuracy_calculator.get_curr_metrics()
    accuracies = tester.all_accuracies[split]
    return {m: float(accuracies[tester.accuracies_keyname(m, label_hierarchy_level=0)]) for m in metrics}


def embed_and_evaluate(
    config: Mapping[str, Any], model: torch.nn.Module, datasets: Mapping[str, Dataset], epoch: int = 0, tester=None
) -> dict[str, dict[str, float]]:
    """Recall@k of ``model`` on each dataset, every item a query against the rest of its own split.

    Uses PML's ``GlobalEmbeddingSpaceTester`` with :func:`build_accuracy_calculator`. Returns
    ``{split: {"recall_at_1": ..., ...}}``.
    """
    tester = tester or build_tester(config, next(model.parameters()).device)
    tester.test(dict(datasets), epoch, model)
    return {split: _metrics_of(tester, split) for split in datasets}


# ------------------------------------------------------------------------------------------- checkpoints


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the previous file or the new one, never a truncated one.
    """
    _replace_atomically(Path(path), lambda f: torch.save(obj, f))


def _replace_atomically(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`run_experiment` (a run folder means its ``checkpoints/best.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: tell the user which one
        raise ConfigError(f"cannot read checkpoint {str(path)!r}: {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a pml-recallk checkpoint (no format {CHECKPOINT_FORMAT!r})")
    return state


def _rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    numpy_state = np.random.get_state()  # noqa: NPY002 - PML's samplers draw from the legacy global generator
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *map(float, numpy_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int, epoch: int) -> None:
    """Seed Python, NumPy (which MPerClassSampler draws from) and torch from ``(seed, epoch)``."""
    derived = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)  # noqa: NPY002 - MPerClassSampler draws from np.random (c_f.NUMPY_RANDOM)
    torch.manual_seed(derived)


# ----------------------------------------------------------------------------------------------- training


def _make_sampler(config: Mapping[str, Any], labels: np.ndarray, batch_size: int, iterations: int):
    from pytorch_metric_learning.samplers import MPerClassSampler

    return MPerClassSampler(
        labels, m=config["data"]["samples_per_class"], batch_size=batch_size,
        length_before_new_iter=iterations * batch_size,
    )  # fmt: skip


def _amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """``train.amp`` as a dtype: true means float16 on CUDA (with a GradScaler) and bfloat16 elsewhere."""
    if amp is False:
        return None
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, amp)


def _make_trainer(
    config, model, loss, optimizer, scheduler, dataset, device, batch_size, iterations, on_iteration, on_epoch
):
    from .trainers import MemoryEfficientTrainer

    data, train = config["data"], config["train"]
    clippers = {}
    if train["grad_clip"] > 0:
        clippers["trunk_grad_clipper"] = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
    return MemoryEfficientTrainer(
        models={"trunk": model},
        optimizers={"trunk_optimizer": optimizer},
        batch_size=batch_size,
        loss_funcs={"metric_loss": loss},
        dataset=dataset,
        sampler=_make_sampler(config, dataset.labels, batch_size, iterations),
        iterations_per_epoch=iterations,
        data_device=device,
        lr_schedulers={"trunk_scheduler_by_epoch": scheduler} if scheduler is not None else None,
        gradient_clippers=clippers or None,
        dataloader_num_workers=data["num_workers"],
        end_of_iteration_hook=on_iteration,
        end_of_epoch_hook=on_epoch,
        chunk_size=train["chunk_size"] or batch_size,
        amp=_amp_dtype(train["amp"], device),
        batchnorm="freeze" if train["freeze_batchnorm"] else "no_double_update",
    )


def _check_output_dir(output_dir: Path, resume: bool, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from (None for a fresh run); refuse to overwrite a run or resume a different one."""
    last = output_dir / "checkpoints" / "last.pt"
    if not resume:
        if last.exists():
            raise ConfigError(
                f"{output_dir} already holds a run; pass --resume to continue it or choose another --output-dir"
            )
        return None
    if not last.exists():
        return None
    state = load_checkpoint(last)
    differences = [d for d in config_differences(state["config"], config) if d.split(":")[0] not in _RESUMABLE_CHANGES]
    if differences:
        raise ConfigError(f"cannot resume {output_dir} with a different config: {'; '.join(differences)}")
    return state


def run_experiment(
    config: Mapping[str, Any],
    output_dir: str | Path,
    resume: bool = False,
    log: Log = _log_to_stderr,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate as described in the module docstring; return what ``results.json`` holds.

    Args:
        config: a validated config (:func:`pml_recallk.config.resolve_config`).
        output_dir: where checkpoints, logs, plots and ``results.json`` go (created if missing).
        resume: continue the run in ``output_dir`` from ``checkpoints/last.pt`` (a fresh start if there is
            none). Only data paths, workers, device, evaluation batch size and ``train.epochs`` may differ from
            the saved config.
        log: receives one-line progress messages.
        stop_after_epoch: simulate a crash: end the process with ``os._exit(3)`` right after the checkpoint of
            this epoch is written (for tests of ``resume``).

    Returns:
        ``{"untrained": metrics, "trained": metrics, "best_epoch": int, "best_val": metrics, "epochs_run": int,
        "stopped_early": bool, "seconds": float, "test_splits": [...], "device": str, "config": config}``, where
        ``metrics`` is ``{"recall_at_1": ..., ...}`` on the test split, or ``{split: {"recall_at_1": ...}}``
        when ``data.test_splits`` names several (VehicleID). ``seconds`` counts the wall time of every process
        that worked on the run.
    """
    from pytorch_metric_learning.utils import logging_presets

    started = time.perf_counter()
    output_dir = Path(output_dir)
    state = _check_output_dir(output_dir, resume, config)
    config = {table: dict(values) for table, values in config.items()}
    data_cfg, train_cfg, eval_cfg = config["data"], config["train"], config["eval"]
    device = _device(config)
    _seed_everything(train_cfg["seed"], 0)
    log(f"loading {data_cfg['dataset']} ...")
    datasets = build_datasets(config)
    test_names = list(data_cfg["test_splits"])
    train_set = datasets["train"]
    num_classes = len(np.unique(train_set.labels))
    batch_size = data_cfg["batch_size"] or num_classes * data_cfg["samples_per_class"]
    if batch_size // data_cfg["samples_per_class"] > num_classes:
        raise ConfigError(
            f"data.batch_size {batch_size} asks for {batch_size // data_cfg['samples_per_class']} classes per batch "
            f"but the training part has {num_classes} classes; lower data.batch_size"
        )
    iterations = train_cfg["iterations_per_epoch"] or max(1, len(train_set) // batch_size)
    log(
        f"{len(train_set)} training images ({num_classes} classes), {len(datasets['val'])} validation images, "
        + ", ".join(f"{len(datasets[n])} {n} images" for n in test_names)
        + f"; {iterations} iterations of {batch_size} per epoch on {device}"
    )
    # Only now that the data is known to load is the output folder made.
    checkpoints = output_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints.glob(".*.tmp"):  # left by a crash in the middle of save_atomic
        stale.unlink()
    (output_dir / "config.toml").write_text(dumps_toml(config, comments=True))
    log(f"writing to {output_dir}")

    model = build_model(config).to(device)
    loss = build_loss(config).to(device)
    optimizer = build_optimizer(config, model)
    scheduler = (
        torch.optim.lr_scheduler.MultiStepLR(optimizer, train_cfg["lr_milestones"], gamma=train_cfg["lr_gamma"])
        if train_cfg["lr_milestones"]
        else None
    )

    record_keeper, _, tensorboard_writer = logging_presets.get_record_keeper(
        str(output_dir / "logs"), str(output_dir / "tensorboard")
    )
    if record_keeper is None:
        raise ConfigError("training needs record-keeper and tensorboard: pip install 'pml-recallk[cli]'")
    # HookContainer records validation results and picks the best epoch; our checkpoints hold the models.
    hooks = logging_presets.get_hook_container(
        record_keeper, primary_metric=PRIMARY_METRIC, validation_split_name="val", save_models=False, log_freq=1
    )
    val_tester = build_tester(config, device, end_of_testing_hook=hooks.end_of_testing_hook)
    validate_and_record = hooks.end_of_epoch_hook(
        val_tester, {"val": datasets["val"]}, str(checkpoints), patience=eval_cfg["patience"] or None
    )

    if state is None:
        history: dict[str, Any] = {
            "loss": [], "val": [], "best_epoch": None, "epochs_run": 0, "stopped_early": False, "seconds": 0.0
        }  # fmt: skip
        log("evaluating the untrained model ...")
        untrained = embed_and_evaluate(config, model, {"val": datasets["val"], **{n: datasets[n] for n in test_names}})
        history["untrained_val"] = untrained.pop("val")
        history["untrained"] = untrained
        start_epoch = 1
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["lr_scheduler"])
        loss.load_state_dict(state["loss"])
        _set_rng_state(state["rng"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        log(f"resuming {output_dir} after epoch {state['epoch']}")
    elapsed_before = history["seconds"]

    def on_iteration(trainer) -> None:
        history["loss"].append([trainer.get_global_iteration(), float(trainer.losses["total_loss"])])
        hooks.end_of_iteration_hook(trainer)

    def on_epoch(trainer) -> bool:
        epoch = trainer.epoch
        keep_going = True
        if epoch % eval_cfg["every_n_epochs"] == 0 or epoch == train_cfg["epochs"]:
            keep_going = validate_and_record(trainer) is not False
            metrics = _metrics_of(val_tester, "val")
            history["val"].append({"epoch": epoch, **metrics})
            best_epoch, _ = hooks.get_best_epoch_and_accuracy(val_tester, "val")
            log(f"epoch {epoch}: validation " + _format_metrics(metrics) + f" (best epoch {best_epoch})")
            if best_epoch == epoch:
                history["best_epoch"] = epoch
                save_atomic(
                    {"format": CHECKPOINT_FORMAT, "epoch": epoch, "config": config, "model": model.state_dict(),
                     "val": metrics},
                    checkpoints / "best.pt",
                )  # fmt: skip
        history["stopped_early"] = not keep_going
        history["epochs_run"] = epoch
        history["seconds"] = elapsed_before + time.perf_counter() - started
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "config": config,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
                "loss": loss.state_dict(),
                "rng": _rng_state(),
                "history": history,
            },
            checkpoints / "last.pt",
        )
        if stop_after_epoch == epoch:
            os._exit(3)
        return keep_going

    trainer = None
    for epoch in range(start_epoch, train_cfg["epochs"] + 1):
        if history["stopped_early"]:
            break
        # Each epoch depends only on (seed, epoch) and the saved state, whatever ran before it in this process.
        _seed_everything(train_cfg["seed"], epoch)
        if trainer is None:
            trainer = _make_trainer(
                config, model, loss, optimizer, scheduler, train_set, device, batch_size, iterations,
                on_iteration, on_epoch,
            )  # fmt: skip
        else:
            trainer.sampler = _make_sampler(config, train_set.labels, batch_size, iterations)
        trainer.train(start_epoch=epoch, num_epochs=epoch)
    record_keeper.save_records()
    if tensorboard_writer is not None:
        tensorboard_writer.close()

    best = load_checkpoint(checkpoints / "best.pt")
    model.load_state_dict(best["model"])
    log(f"evaluating the best model (epoch {best['epoch']}) on {', '.join(test_names)} ...")
    trained = embed_and_evaluate(config, model, {n: datasets[n] for n in test_names}, epoch=best["epoch"])
    history["seconds"] = elapsed_before + time.perf_counter() - started

    def one_or_all(metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
        return metrics[test_names[0]] if len(test_names) == 1 else metrics

    results = {
        "untrained": one_or_all(history["untrained"]),
        "trained": one_or_all(trained),
        "best_epoch": best["epoch"],
        "best_val": best["val"],
        "epochs_run": history["epochs_run"],
        "stopped_early": history["stopped_early"],
        "seconds": round(history["seconds"], 2),
        "test_splits": test_names,
        "device": str(device),
        "config": config,
    }
    # Atomic too: a runner that finds results.json may take the run as finished.
    _replace_atomically(output_dir / "results.json", lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    _plot(history, output_dir)
    return results


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"R@{name.rsplit('_', 1)[-1]} {value:.4f}" for name, value in _sorted_by_k(metrics))


def _sorted_by_k(metrics: Mapping[str, float]) -> list[tuple[str, float]]:
    return sorted(metrics.items(), key=lambda item: int(item[0].rsplit("_", 1)[-1]))


def _plot(history: Mapping[str, Any], output_dir: Path) -> None:
    """``loss_curve.png`` (loss per iteration) and ``recall_curves.png`` (validation Recall@k per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history["loss"]:
        iterations, losses = zip(*history["loss"])
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(np.asarray(iterations) + 1, losses, lw=1)
        ax.set(xlabel="iteration", ylabel="RS@k loss", title="Training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(output_dir / "loss_curve.png", dpi=120)
        plt.close(fig)

    rows = [{"epoch": 0, **history["untrained_val"]}, *history["val"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, _ in _sorted_by_k(history["untrained_val"]):
        ax.plot([r["epoch"] for r in rows], [r[name] for r in rows], marker="o", label=f"R@{name.rsplit('_', 1)[-1]}")
    if history["best_epoch"] is not None:
        ax.axvline(history["best_epoch"], color="grey", ls="--", lw=1, label="best epoch")
    ax.set(xlabel="epoch (0 = untrained)", ylabel="Recall@k", title="Validation Recall@k", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "recall_curves.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ evaluate a checkpoint


def evaluate_checkpoint(
    checkpoint: str | Path,
    config: Mapping[str, Any] | None = None,
    splits: list[str] | None = None,
    log: Log = _log_to_stderr,
) -> dict[str, dict[str, float]]:
    """Recall@k of the model saved in ``checkpoint`` (``best.pt``/``last.pt``, or a run folder).

    Args:
        checkpoint: a file written by :func:`run_experiment`, or its run folder (→ ``checkpoints/best.pt``).
        config: the config to evaluate with (data set, root, eval settings); defaults to the one saved in the
            checkpoint. Its model settings must be those of the checkpoint.
        splits: which splits, e.g. ``["test"]`` or ``["val"]``; default: every test split of the data set.

    Returns:
        ``{split: {"recall_at_1": ..., ...}}``.
    """
    state = load_checkpoint(checkpoint)
    config = state["config"] if config is None else config
    different_model = [d for d in config_differences(state["config"], config) if d.startswith("model.")]
    if different_model:
        raise ConfigError(f"the checkpoint's model differs from the config: {'; '.join(different_model)}")
    device = _device(config)
    channels = input_channels(state["config"])
    model = build_model(config, channels)
    model.load_state_dict(state["model"])
    model.to(device)
    splits = splits or list(config["data"]["test_splits"])
    datasets = build_datasets(config, splits, channels)
    log(f"evaluating {checkpoint} (epoch {state['epoch']}) on {config['data']['dataset']} {', '.join(splits)} ...")
    return embed_and_evaluate(config, model, datasets, epoch=state["epoch"])

"""The loss benchmark: several losses × seeds on one data set, one protocol, one table and two plots.

``pml-recallk benchmark`` (or ``python benchmarks/run.py``) trains every loss configuration of a sweep with every
seed under the same protocol, and writes ``results.md``/``results.csv`` (mean ± std over seeds of Recall@k and
MAP@R on the test split), ``recall_at_k.png`` (Recall@k bars per loss) and ``recall_at_1_vs_time.png``.

The protocol, the same for every loss:

- data: the training split minus ``data.val_fraction`` of its classes (the validation split, used only to pick the
  best epoch), and the test split, whose classes are disjoint from both;
- model, optimiser, learning-rate schedule and augmentation: those of the experiment config
  (:mod:`pml_recallk.config`; the small CNN and Adam on the glyph data); a loss with parameters of its own
  (ProxyAnchor's proxies) gets a second Adam at ``train.lr × loss_lr_factor``, as PML's trainers take it
  (``metric_loss_optimizer``);
- sampler: PML's ``MPerClassSampler`` with ``data.samples_per_class`` images per class;
- budget: ``budget_images`` images seen, split into ``train.epochs`` epochs; a larger batch makes fewer steps;
- batch: ``batch_size`` through PML's ``MetricLossOnly``, or, for the "large" configurations, ``large_batch_size``
  (0: every training class × ``samples_per_class``, the most the sampler can put in one batch) through
  :class:`~pml_recallk.MemoryEfficientTrainer` in chunks of ``chunk_size`` images;
- evaluation: PML's ``GlobalEmbeddingSpaceTester`` with :class:`~pml_recallk.RecallAtKAccuracyCalculator`
  (``recall_at_<k>`` for ``eval.k_values`` and ``mean_average_precision_at_r``, leave-one-out within a split) after
  every epoch on the validation split, through PML's ``HookContainer`` (record-keeper logs under each run's
  ``logs/``); the model of the best validation Recall@1 is evaluated once on the test split.

Each (loss, seed) writes ``runs/<loss>/seed_<seed>/result.json`` atomically when it finishes. Rerunning the same
command skips finished runs and restarts an interrupted one, so an interrupted sweep continues where it stopped.
A finished run made with different settings is an error rather than silently mixed into the table.

Example (a two-minute sweep on the glyphs that ship with matplotlib)::

    pml-recallk benchmark --losses rsk,contrastive --seeds 0 1 --budget-images 4096 --output-dir runs/bench
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .config import DATASETS, ConfigError, dumps_toml, load_toml, resolve_config

__all__ = [
    "LOSSES",
    "BenchmarkLoss",
    "Sweep",
    "build_sweep_datasets",
    "load_results",
    "main",
    "register_loss",
    "run_one",
    "run_sweep",
    "summarize",
    "write_report",
]

RESULT_FORMAT = "pml-recallk-benchmark-v1"
PRIMARY_METRIC = "recall_at_1"
MAP_AT_R = "mean_average_precision_at_r"
UNTRAINED = "untrained"

# Config keys that say where and how fast a run goes, not what it computes: they may differ on resume.
_RUNTIME_KEYS = {("data", "num_workers"), ("data", "glyphs_cache_dir"), ("data", "root"), ("train", "device")}
_RUNTIME_KEYS |= {("eval", "batch_size")}

Log = Callable[[str], None]


def _log_to_stderr(message: str) -> None:
    print(f"pml-recallk benchmark: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ losses


@dataclass(frozen=True)
class BenchmarkLoss:
    """One configuration of the comparison.

    Attributes:
        build: ``build(num_classes, embedding_size) -> (loss, miner or None)``, called after seeding, so that a
            loss with parameters (proxies) is initialised from the run's seed. ``num_classes`` is the number of
            training classes.
        settings: the hyper-parameters in words, with their source (shown in the report).
        batch: ``"small"`` (the sweep's ``batch_size``, PML's ``MetricLossOnly``) or ``"large"`` (its
            ``large_batch_size``, :class:`~pml_recallk.MemoryEfficientTrainer`).
        loss_lr_factor: if the loss has parameters, they get their own Adam at ``train.lr`` times this.
    """

    build: Callable[[int, int], tuple[nn.Module, nn.Module | None]]
    settings: str
    batch: str = "small"
    loss_lr_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.batch not in ("small", "large"):
            raise ValueError(f"batch must be 'small' or 'large', got {self.batch!r}")


def _rsk(num_classes: int, embedding_size: int):
    from .losses import RecallKSurrogateLoss

    return RecallKSurrogateLoss(), None


def _rsk_simix(num_classes: int, embedding_size: int):
    from .losses import RecallKSurrogateLoss, SimilarityMixup

    return SimilarityMixup(RecallKSurrogateLoss(), mode="official"), None


def _contrastive(num_classes: int, embedding_size: int):
    from pytorch_metric_learning import losses

    return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), None


def _multi_similarity(num_classes: int, embedding_size: int):
    from pytorch_metric_learning import losses, miners

    return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)


def _triplet(num_classes: int, embedding_size: int):
    from pytorch_metric_learning import losses, miners

    return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")


def _proxy_anchor(num_classes: int, embedding_size: int):
    from pytorch_metric_learning import losses

    return losses.ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32.0), None


def _fastap(num_classes: int, embedding_size: int):
    from pytorch_metric_learning import losses

    return losses.FastAPLoss(num_bins=10), None


_RSK_SETTINGS = "k = (1, 2, 4, 8, 16), τ_rank = 0.01, τ_k = 1 (the paper's); query excluded from its own rank"

# PML 2.9's SmoothAPLoss is left out: it groups positives by position (contiguous blocks of batch/classes), not by
# label, which is wrong for MPerClassSampler batches of m = 4 unless there are exactly 4 classes per batch.
LOSSES: dict[str, BenchmarkLoss] = {
    "rsk": BenchmarkLoss(_rsk, f"RecallKSurrogateLoss: {_RSK_SETTINGS}"),
    "rsk_large": BenchmarkLoss(
        _rsk, f"RecallKSurrogateLoss at the large batch, through MemoryEfficientTrainer: {_RSK_SETTINGS}", "large"
    ),
    "rsk_simix": BenchmarkLoss(
        _rsk_simix, f"SimilarityMixup(mode='official', α ~ U(0, 1)) around RecallKSurrogateLoss: {_RSK_SETTINGS}"
    ),
    "contrastive": BenchmarkLoss(
        _contrastive,
        "ContrastiveLoss(pos_margin=0, neg_margin=1), Euclidean distance of L2-normalised embeddings "
        "(PML's defaults), all pairs of the batch",
    ),
    "multi_similarity": BenchmarkLoss(
        _multi_similarity,
        "MultiSimilarityLoss(alpha=2, beta=50, base=0.5) + MultiSimilarityMiner(epsilon=0.1), "
        "cosine similarity (PML's defaults; α, β and ε as in the MS paper)",
    ),
    "triplet": BenchmarkLoss(
        _triplet,
        "TripletMarginLoss(margin=0.1) + TripletMarginMiner(margin=0.1, type_of_triplets='semihard'), "
        "Euclidean distance of L2-normalised embeddings (margin between PML's loss default 0.05 and miner default "
        "0.2, the same for both so that every mined triplet is penalised)",
    ),
    "proxy_anchor": BenchmarkLoss(
        _proxy_anchor,
        "ProxyAnchorLoss(margin=0.1, alpha=32) (PML's defaults = the paper's), one proxy per training "
        "class, proxies trained by their own Adam at 100 × the network's learning rate (the paper's)",
        loss_lr_factor=100.0,
    ),
    "fastap": BenchmarkLoss(
        _fastap,
        "FastAPLoss(num_bins=10), squared Euclidean distance of L2-normalised embeddings (PML's defaults "
        "= the paper's 10 bins)",
    ),
}
DEFAULT_LOSSES = tuple(LOSSES)


def register_loss(name: str, entry: BenchmarkLoss, overwrite: bool = False) -> None:
    """Add a loss configuration to :data:`LOSSES`, so that sweeps can name it (see ``docs/benchmark.md``).

    Example:
        >>> from pytorch_metric_learning import losses
        >>> register_loss("circle", BenchmarkLoss(lambda c, d: (losses.CircleLoss(), None), "CircleLoss()"))
        >>> "circle" in LOSSES
        True
        >>> del LOSSES["circle"]
    """
    if not isinstance(entry, BenchmarkLoss):
        raise TypeError(f"entry must be a BenchmarkLoss, got {type(entry).__name__}")
    if not name.isidentifier() or name == UNTRAINED:
        raise ValueError(f"loss name must be a Python identifier other than {UNTRAINED!r}, got {name!r}")
    if name in LOSSES and not overwrite:
        raise ValueError(f"a loss named {name!r} is already registered; pass overwrite=True to replace it")
    LOSSES[name] = entry


# ------------------------------------------------------------------------------------------------- sweep


@dataclass
class Sweep:
    """What to run: losses × seeds on the data and model of ``config``.

    Attributes:
        config: an experiment config (:func:`pml_recallk.config.resolve_config`); its ``data.batch_size`` and
            ``train.iterations_per_epoch`` are replaced per run (``batch_size`` / ``large_batch_size`` and the
            budget). ``train.epochs`` is the number of validation points.
        losses: names in :data:`LOSSES`.
        seeds: one run per loss per seed (model initialisation, sampling, augmentation, SiMix draws).
        budget_images: images seen by each run (rounded to whole steps per epoch, at least one).
        batch_size: batch of the ``"small"`` configurations.
        large_batch_size: batch of the ``"large"`` ones; 0 means every training class × ``samples_per_class``.
        chunk_size: images per forward pass of :class:`~pml_recallk.MemoryEfficientTrainer` (0: ``batch_size``).
        glyphs: extra keyword arguments of :class:`~pml_recallk.datasets.Glyphs` that the experiment config
            has no key for (e.g. ``one_face_per_family``), used when the data set is the glyph data.
        name: shown in the report.
    """

    config: dict[str, dict[str, Any]]
    losses: list[str] = field(default_factory=lambda: list(DEFAULT_LOSSES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget_images: int = 30720
    batch_size: int = 128
    large_batch_size: int = 0
    chunk_size: int = 0
    glyphs: dict[str, Any] = field(default_factory=dict)
    name: str = "benchmark"

    def __post_init__(self) -> None:
        unknown = [name for name in self.losses if name not in LOSSES]
        if unknown:
            raise ConfigError(f"unknown loss {unknown[0]!r}; the benchmark knows {', '.join(LOSSES)}")
        if not self.losses or len(set(self.losses)) != len(self.losses):
            raise ConfigError(f"losses must be a non-empty list of distinct names, got {self.losses}")
        if not isinstance(self.glyphs, dict):
            raise ConfigError(f"sweep.glyphs must be a table of Glyphs arguments, got {self.glyphs!r}")
        seeds_are_ints = isinstance(self.seeds, list) and all(type(s) is int and s >= 0 for s in self.seeds)
        if not seeds_are_ints or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of distinct non-negative integers, got {self.seeds}")
        m = self.config["data"]["samples_per_class"]
        for key in ("budget_images", "batch_size", "large_batch_size", "chunk_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"sweep.{key} must be a non-negative integer, got {value!r}")
        if self.budget_images < 1:
            raise ConfigError("sweep.budget_images must be at least 1")
        for key in ("batch_size", "large_batch_size"):
            value = getattr(self, key)
            if key == "large_batch_size" and value == 0:
                continue  # every training class × m
            if value % m != 0 or value < 2 * m:
                raise ConfigError(
                    f"sweep.{key} ({value}) must be a multiple of data.samples_per_class ({m}) holding at least two "
                    "classes" + (" (or 0: every training class)" if key == "large_batch_size" else "")
                )

    def batch_of(self, loss: str, num_classes: int) -> int:
        """The batch size of configuration ``loss`` when the training split has ``num_classes`` classes."""
        m = self.config["data"]["samples_per_class"]
        if LOSSES[loss].batch == "small":
            batch = self.batch_size
        else:
            batch = self.large_batch_size or m * num_classes
        if batch > m * num_classes:
            raise ConfigError(
                f"batch {batch} of {loss!r} needs {batch // m} classes per batch but the training split has "
                f"{num_classes}; lower sweep.batch_size / sweep.large_batch_size"
            )
        return batch

    def iterations(self, batch: int) -> int:
        """Steps per epoch so that ``train.epochs`` epochs see about ``budget_images`` images."""
        return max(1, round(self.budget_images / (self.config["train"]["epochs"] * batch)))


_SWEEP_KEYS = {"name", "losses", "seeds", "budget_images", "batch_size", "large_batch_size", "chunk_size", "glyphs"}
_SWEEP_FILE_ONLY = {"output_dir"}


def _sweep_from_tables(
    tables: Mapping[str, Any], dataset: str | None, overrides: Sequence[str], source: str
) -> tuple[Sweep, str | None]:
    """A :class:`Sweep` from a sweep file's tables (``[sweep]`` + experiment tables) and ``--set`` overrides."""
    tables = dict(tables)
    sweep_table = dict(tables.pop("sweep", {}))
    unknown = set(sweep_table) - _SWEEP_KEYS - _SWEEP_FILE_ONLY
    if unknown:
        raise ConfigError(
            f"{source}: unknown key sweep.{sorted(unknown)[0]}; [sweep] takes {', '.join(sorted(_SWEEP_KEYS))}"
        )
    # The file's experiment tables act as --set overrides that come before the command line's: over the data
    # set's recipe and its model variant (e.g. the ViT learning rates when model.name is a ViT).
    file_overrides = []
    for table, values in tables.items():
        if not isinstance(values, Mapping) or any(isinstance(v, Mapping) for v in values.values()):
            raise ConfigError(f"{source}: [{table}] must be a table of keys such as [train] with epochs = 6")
        # JSON writes strings, numbers, booleans and lists of them as TOML values.
        file_overrides += [f"{table}.{key}={json.dumps(value)}" for key, value in values.items()]
    config = resolve_config(dataset, None, [*file_overrides, *overrides])
    output_dir = sweep_table.pop("output_dir", None)
    try:
        sweep = Sweep(config=config, **sweep_table)
    except TypeError as error:
        raise ConfigError(f"{source}: [sweep]: {error}") from None
    return sweep, output_dir


def load_sweep(
    path: str | Path | None = None, dataset: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Sweep, str | None]:
    """Read a sweep file (``[sweep]`` table + experiment tables, see ``benchmarks/configs/sweep_*.toml``).

    Returns the sweep and the file's ``sweep.output_dir`` (None if it has none). Without a file: every loss,
    seeds 0–2, the defaults of :class:`Sweep` on the default glyph experiment.
    """
    tables = load_toml(path) if path is not None else {}
    return _sweep_from_tables(tables, dataset, overrides, str(path) if path else "the default sweep")


# -------------------------------------------------------------------------------------------------- data


def build_sweep_datasets(sweep: Sweep) -> dict[str, Dataset]:
    """``{"train", "val", "test"}`` of the sweep, as :func:`pml_recallk.experiment.build_datasets` makes them.

    With ``sweep.glyphs`` options (e.g. ``one_face_per_family``), the glyph splits are loaded with them (and
    ``data.glyphs_font_dirs``); the class-disjoint validation split, the transforms and ``data.max_classes`` are
    the experiment's.
    """
    from . import experiment

    config = sweep.config
    test_split = config["data"]["test_splits"][0]
    if config["data"]["dataset"] != "glyphs" or not sweep.glyphs:
        datasets = experiment.build_datasets(config, ["train", "val", test_split])
        return {"train": datasets["train"], "val": datasets["val"], "test": datasets[test_split]}

    from .datasets import Glyphs, class_disjoint_split
    from .datasets.common import ClassSubset
    from .models import transforms

    data = config["data"]
    channels = experiment.input_channels(config)

    glyph_options = {"cache_dir": data["glyphs_cache_dir"] or None}
    if data["glyphs_font_dirs"]:
        glyph_options["font_dirs"] = data["glyphs_font_dirs"]
    glyph_options.update(sweep.glyphs)

    def load(split: str) -> Dataset:
        try:
            dataset = Glyphs(split=split, image_size=data["image_size"], **glyph_options)
        except TypeError as error:
            raise ConfigError(f"sweep.glyphs: {error}") from None
        if data["max_classes"]:
            labels = np.asarray(dataset.labels)
            dataset = ClassSubset(dataset, np.flatnonzero(np.isin(labels, np.unique(labels)[: data["max_classes"]])))
        return dataset

    train, val = class_disjoint_split(load(data["train_split"]), data["val_fraction"], seed=data["split_seed"])
    train_tf = transforms.train_transform(
        data["image_size"], channels=channels, flip=data["flip"], scale=tuple(data["crop_scale"])
    )
    test_tf = transforms.test_transform(data["image_size"], channels=channels)
    return {
        "train": experiment.TransformedDataset(train, train_tf),
        "val": experiment.TransformedDataset(val, test_tf),
        "test": experiment.TransformedDataset(load(test_split), test_tf),
    }


def _describe(datasets: Mapping[str, Dataset]) -> dict[str, dict[str, int]]:
    return {
        split: {"images": len(dataset), "classes": len(np.unique(np.asarray(dataset.labels)))}
        for split, dataset in datasets.items()
    }


# ---------------------------------------------------------------------------------------------- one run


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - PML's MPerClassSampler draws from the legacy global generator
    torch.manual_seed(seed)


def _device(config: Mapping[str, Any]) -> torch.device:
    name = config["train"]["device"]
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _accuracy_calculator(config: Mapping[str, Any]):
    from .evaluation import RecallAtKAccuracyCalculator

    k_values = tuple(config["eval"]["k_values"])
    return RecallAtKAccuracyCalculator(
        k_values=k_values, include=tuple(f"recall_at_{k}" for k in k_values) + (MAP_AT_R,)
    )


def _tester(config: Mapping[str, Any], device: torch.device, end_of_testing_hook=None):
    from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester

    return GlobalEmbeddingSpaceTester(
        batch_size=config["eval"]["batch_size"],
        dataloader_num_workers=config["data"]["num_workers"],
        data_device=device,
        accuracy_calculator=_accuracy_calculator(config),
        end_of_testing_hook=end_of_testing_hook,
    )


def _run_spec(sweep: Sweep, loss: str, seed: int, datasets: Mapping[str, Dataset]) -> dict[str, Any]:
    """Everything that determines the numbers of one run (compared on resume)."""
    config = copy.deepcopy(sweep.config)
    sizes = _describe(datasets)
    spec: dict[str, Any] = {"loss": loss, "seed": seed, "data": sizes, "glyphs": copy.deepcopy(sweep.glyphs)}
    if loss != UNTRAINED:
        batch = sweep.batch_of(loss, sizes["train"]["classes"])
        iterations = sweep.iterations(batch)
        config["data"]["batch_size"] = batch
        config["train"]["iterations_per_epoch"] = iterations
        entry = LOSSES[loss]
        spec.update(
            settings=entry.settings,
            batch_size=batch,
            trainer="MemoryEfficientTrainer" if entry.batch == "large" else "MetricLossOnly",
            chunk_size=(sweep.chunk_size or sweep.batch_size) if entry.batch == "large" else None,
            loss_lr_factor=entry.loss_lr_factor,
            steps=iterations * config["train"]["epochs"],
            images_seen=iterations * config["train"]["epochs"] * batch,
        )
    # Per run, the batch and steps come from the sweep (recorded above), not from these two keys.
    for table, key in (*_RUNTIME_KEYS, ("data", "batch_size"), ("train", "iterations_per_epoch")):
        config[table].pop(key, None)
    spec["config"] = config
    return spec


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]


def _write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON to a temporary file in the same folder, fsync, then rename: never a truncated result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def run_one(
    sweep: Sweep,
    loss: str,
    seed: int,
    datasets: Mapping[str, Dataset],
    run_dir: str | Path,
    log: Log = _log_to_stderr,
    command: str | None = None,
) -> dict[str, Any]:
    """Train configuration ``loss`` with ``seed`` and evaluate it; write and return ``run_dir/result.json``.

    ``loss`` may also be ``"untrained"``: the network as initialised by ``seed``, evaluated on the test split.
    Returns ``{"format", "spec", "test": {metric: value}, "best_epoch", "val_history", "train_seconds",
    "seconds", "finished", "device", "threads", "load_average", "command"}``; ``train_seconds`` is the wall time
    of the training steps (validation excluded), ``load_average`` the machine's 1-minute load average at the
    start and end of the run, ``command`` the command line of the sweep (for its report).
    """
    from pytorch_metric_learning.samplers import MPerClassSampler
    from pytorch_metric_learning.trainers import MetricLossOnly
    from pytorch_metric_learning.utils import logging_presets

    from .experiment import build_model, build_optimizer, embed_and_evaluate
    from .trainers import MemoryEfficientTrainer

    started = time.perf_counter()
    load_at_start = _load_average()
    run_dir = Path(run_dir)
    spec = _run_spec(sweep, loss, seed, datasets)
    config = copy.deepcopy(sweep.config)
    device = _device(config)
    _seed_everything(seed)
    model = build_model(config).to(device)
    result: dict[str, Any] = {"format": RESULT_FORMAT, "spec": spec}

    if loss == UNTRAINED:
        test = embed_and_evaluate(config, model, {"test": datasets["test"]}, tester=_tester(config, device))["test"]
        result.update(test=test, best_epoch=0, val_history=[], train_seconds=0.0)
    else:
        entry = LOSSES[loss]
        batch, iterations = spec["batch_size"], spec["steps"] // config["train"]["epochs"]
        config["data"]["batch_size"] = batch
        train_set = datasets["train"]
        num_classes = len(np.unique(np.asarray(train_set.labels)))
        loss_fn, miner = entry.build(num_classes, config["model"]["embedding_size"])
        loss_fn = loss_fn.to(device)
        optimizers = {"trunk_optimizer": build_optimizer(config, model)}
        loss_parameters = [p for p in loss_fn.parameters() if p.requires_grad]
        if loss_parameters:
            optimizers["metric_loss_optimizer"] = torch.optim.Adam(
                loss_parameters, lr=config["train"]["lr"] * entry.loss_lr_factor
            )

        record_keeper, _, tensorboard_writer = logging_presets.get_record_keeper(
            str(run_dir / "logs"), str(run_dir / "tensorboard")
        )
        if record_keeper is None:
            raise ConfigError("the benchmark needs record-keeper and tensorboard: pip install 'pml-recallk[hooks]'")
        hooks = logging_presets.get_hook_container(
            record_keeper, primary_metric=PRIMARY_METRIC, validation_split_name="val", save_models=False
        )
        val_tester = _tester(config, device, end_of_testing_hook=hooks.end_of_testing_hook)
        validate = hooks.end_of_epoch_hook(val_tester, {"val": datasets["val"]}, str(run_dir / "models"))
        best = {"epoch": 0, "state": copy.deepcopy(model.state_dict())}
        history: list[dict[str, Any]] = []
        eval_seconds = 0.0

        def on_epoch(trainer) -> bool:
            nonlocal eval_seconds
            tic = time.perf_counter()
            keep_going = validate(trainer)
            metrics = {
                name: float(value)
                for name, value in val_tester.all_accuracies["val"].items()
                if name.endswith("_level0")
            }
            metrics = {name.removesuffix("_level0"): value for name, value in metrics.items()}
            history.append({"epoch": trainer.epoch, **metrics})
            best_epoch, _ = hooks.get_best_epoch_and_accuracy(val_tester, "val")
            if best_epoch == trainer.epoch:
                best.update(epoch=trainer.epoch, state=copy.deepcopy(model.state_dict()))
            eval_seconds += time.perf_counter() - tic
            return keep_going is not False

        lr_schedulers = {}
        if config["train"]["lr_milestones"]:
            lr_schedulers["trunk_scheduler_by_epoch"] = torch.optim.lr_scheduler.MultiStepLR(
                optimizers["trunk_optimizer"], config["train"]["lr_milestones"], gamma=config["train"]["lr_gamma"]
            )
        trainer_kwargs: dict[str, Any] = {
            "models": {"trunk": model},
            "optimizers": optimizers,
            "lr_schedulers": lr_schedulers,
            "batch_size": batch,
            "loss_funcs": {"metric_loss": loss_fn},
            "mining_funcs": {"tuple_miner": miner} if miner is not None else {},
            "dataset": train_set,
            "sampler": MPerClassSampler(
                train_set.labels,
                m=config["data"]["samples_per_class"],
                batch_size=batch,
                length_before_new_iter=iterations * batch,
            ),
            "iterations_per_epoch": iterations,
            "data_device": device,
            "dataloader_num_workers": config["data"]["num_workers"],
            "end_of_iteration_hook": hooks.end_of_iteration_hook,
            "end_of_epoch_hook": on_epoch,
        }
        if entry.batch == "large":
            # BatchNorm normalises each chunk by its own statistics, as it does the small batches of the others.
            trainer = MemoryEfficientTrainer(
                **trainer_kwargs, chunk_size=spec["chunk_size"], batchnorm="no_double_update"
            )
        else:
            trainer = MetricLossOnly(**trainer_kwargs)
        log(f"{loss} seed {seed}: batch {batch}, {spec['steps']} steps ({spec['images_seen']} images)")
        tic = time.perf_counter()
        trainer.train(num_epochs=config["train"]["epochs"])
        train_seconds = time.perf_counter() - tic - eval_seconds
        record_keeper.save_records()
        if tensorboard_writer is not None:
            tensorboard_writer.close()

        model.load_state_dict(best["state"])
        # The test split through the same hook container, so its numbers are in the run's logs too.
        test_tester = _tester(config, device, end_of_testing_hook=hooks.end_of_testing_hook)
        test = embed_and_evaluate(config, model, {"test": datasets["test"]}, epoch=best["epoch"], tester=test_tester)
        record_keeper.save_records()
        result.update(
            test=test["test"], best_epoch=best["epoch"], val_history=history, train_seconds=round(train_seconds, 3)
        )

    result.update(
        seconds=round(time.perf_counter() - started, 3),
        finished=datetime.datetime.now().isoformat(timespec="seconds"),
        device=str(device),
        threads=torch.get_num_threads(),
        load_average=[load_at_start, _load_average()],
        command=command,
    )
    _write_json_atomic(result, run_dir / "result.json")
    return result


# -------------------------------------------------------------------------------------------------- sweep


def _run_dir(output_dir: Path, loss: str, seed: int) -> Path:
    return output_dir / "runs" / loss / f"seed_{seed}"


def run_sweep(
    sweep: Sweep,
    output_dir: str | Path,
    datasets: Mapping[str, Dataset] | None = None,
    log: Log = _log_to_stderr,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Run every (loss, seed) of ``sweep`` not yet finished in ``output_dir``, then write the report.

    Args:
        sweep: what to run.
        output_dir: where ``runs/<loss>/seed_<seed>/`` and the report go. Rerunning continues a sweep.
        datasets: ``{"train", "val", "test"}`` to use instead of :func:`build_sweep_datasets` (e.g. in tests).
        log: receives one-line progress messages.
        command: the command line stored with each run and written at the top of the report (default: this
            process's).

    Returns:
        The result of every (loss, seed) of the sweep, in sweep order, the untrained network first.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The per-run logs (record-keeper, tensorboard) are for looking into runs, not for the repository.
    (output_dir / ".gitignore").write_text("runs/*/*/logs/\nruns/*/*/tensorboard/\nruns/*/*/models/\n")
    started = time.perf_counter()
    command = command or " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    if datasets is None:
        log(f"loading {sweep.config['data']['dataset']} ...")
        datasets = build_sweep_datasets(sweep)
    sizes = _describe(datasets)
    log(", ".join(f"{split}: {s['images']} images of {s['classes']} classes" for split, s in sizes.items()))
    for loss in sweep.losses:
        sweep.batch_of(loss, sizes["train"]["classes"])  # fail before training anything

    plan = [(UNTRAINED, seed) for seed in sweep.seeds] + [(loss, seed) for loss in sweep.losses for seed in sweep.seeds]
    results = []
    for number, (loss, seed) in enumerate(plan, start=1):
        run_dir = _run_dir(output_dir, loss, seed)
        done = run_dir / "result.json"
        spec = _run_spec(sweep, loss, seed, datasets)
        if done.exists():
            result = json.loads(done.read_text())
            differences = _differences(result.get("spec"), spec)
            if differences:
                raise ConfigError(
                    f"{done} was made with other settings ({'; '.join(differences[:3])}); use another --output-dir "
                    "or delete that folder"
                )
            log(f"[{number}/{len(plan)}] {loss} seed {seed}: finished before, skipped")
        else:
            if run_dir.exists():  # an interrupted run: start it again from scratch
                shutil.rmtree(run_dir)
            result = run_one(sweep, loss, seed, datasets, run_dir, log=log, command=command)
            log(
                f"[{number}/{len(plan)}] {loss} seed {seed}: test R@1 {result['test'][PRIMARY_METRIC]:.4f}, "
                f"{result['train_seconds']:.0f} s training, {result['seconds']:.0f} s in all"
            )
        results.append(result)
    write_report(sweep, results, output_dir)
    log(f"wrote {output_dir / 'results.md'} ({time.perf_counter() - started:.0f} s)")
    return results


def _load_average() -> float | None:
    """The 1-minute load average (how busy the machine was: timings depend on it), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_results(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished run's ``result.json`` under ``output_dir/runs``."""
    paths = sorted(Path(output_dir).glob("runs/*/seed_*/result.json"))
    return [json.loads(path.read_text()) for path in paths]


# ------------------------------------------------------------------------------------------------ report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per loss configuration: mean and std over seeds of every test metric and of the training time.

    Rows keep the order in which the configurations first appear in ``results``. Each row:
    ``{"loss", "seeds", "batch_size", "steps", "images_seen", "<metric>": (mean, std), ...,
    "train_seconds": (mean, std)}``, where the standard deviation is the sample one (ddof = 1).
    """
    by_loss: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_loss.setdefault(result["spec"]["loss"], []).append(result)
    rows = []
    for loss, runs in by_loss.items():
        spec = runs[0]["spec"]
        row: dict[str, Any] = {
            "loss": loss,
            "seeds": [r["spec"]["seed"] for r in runs],
            "batch_size": spec.get("batch_size"),
            "steps": spec.get("steps"),
            "images_seen": spec.get("images_seen"),
        }
        for metric in runs[0]["test"]:
            row[metric] = _mean_std([r["test"][metric] for r in runs])
        row["train_seconds"] = _mean_std([r["train_seconds"] for r in runs])
        rows.append(row)
    return rows


def _metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    recall = sorted(
        {k for row in rows for k in row if k.startswith("recall_at_")}, key=lambda name: int(name.rsplit("_", 1)[1])
    )
    return recall + ([MAP_AT_R] if any(MAP_AT_R in row for row in rows) else [])


def _title(metric: str) -> str:
    return "MAP@R" if metric == MAP_AT_R else f"R@{metric.rsplit('_', 1)[1]}"


def write_report(
    sweep: Sweep, results: Sequence[Mapping[str, Any]], output_dir: str | Path, command: str | None = None
) -> None:
    """Write ``results.md``, ``results.csv``, ``recall_at_k.png``, ``recall_at_1_vs_time.png`` and ``sweep.toml``.

    Values are percentages, mean ± sample standard deviation over the seeds. The report starts with the command
    stored with the runs; ``command`` is written instead when they have none, and noted as the command that
    rewrote the report otherwise.
    """
    output_dir = Path(output_dir)
    rows = summarize(results)
    metrics = _metric_names(rows)

    with open(output_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["loss", "num_seeds", "batch_size", "steps", "images_seen"]
            + [f"{m}_{stat}" for m in [*metrics, "train_seconds"] for stat in ("mean", "std")]
        )
        for row in rows:
            values = [row[m] for m in [*metrics, "train_seconds"]]
            writer.writerow(
                [row["loss"], len(row["seeds"]), row["batch_size"], row["steps"], row["images_seen"]]
                + [f"{x:.6f}" for pair in values for x in pair]
            )

    run_commands = list(dict.fromkeys(r["command"] for r in results if r.get("command")))
    lines = [f"# Loss benchmark: {sweep.name}", "", "Made with:", "", "```bash"]
    lines += run_commands or [command or "(command not recorded)"]
    lines += ["```", ""]
    if command is not None and run_commands and command not in run_commands:
        lines += [f"Report rewritten from the finished runs with `{command}`.", ""]
    lines += [_machine_line(results), "", _data_line(sweep, results), ""]
    lines += [
        "Test split, in %: mean ± standard deviation over the seeds (sample std, ddof = 1). "
        "Training time excludes validation.",
        "",
        "| loss | batch | steps | " + " | ".join(_title(m) for m in metrics) + " | training time (s) | seeds |",
        "|---|---:|---:|" + "---:|" * len(metrics) + "---:|---:|",
    ]
    for row in rows:
        cells = [f"{100 * row[m][0]:.2f} ± {100 * row[m][1]:.2f}" for m in metrics]
        time_mean, time_std = row["train_seconds"]
        lines.append(
            f"| {row['loss']} | {row['batch_size'] or '–'} | {row['steps'] or '–'} | " + " | ".join(cells)
            + f" | {time_mean:.1f} ± {time_std:.1f} | {len(row['seeds'])} |"
        )  # fmt: skip
    lines += _paired_differences(results, [m for m in (PRIMARY_METRIC, MAP_AT_R) if m in metrics])
    lines += ["", "Settings:", ""]
    for row in rows:
        if row["loss"] == UNTRAINED:
            lines.append(f"- `{UNTRAINED}`: the network as initialised by each seed, not trained (a floor).")
        elif row["loss"] in LOSSES:
            lines.append(f"- `{row['loss']}`: {LOSSES[row['loss']].settings}.")
    lines += [
        "",
        "![Recall@k per loss](recall_at_k.png)",
        "",
        "![Recall@1 against training time](recall_at_1_vs_time.png)",
    ]
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    (output_dir / "sweep.toml").write_text(_sweep_toml(sweep))
    _plot(rows, metrics, results, output_dir)


def _machine_line(results: Sequence[Mapping[str, Any]]) -> str:
    """Where and when the runs ran, how long they took and how busy the machine was."""
    threads = sorted({r["threads"] for r in results if r.get("threads")}) or [torch.get_num_threads()]
    devices = sorted({r["device"] for r in results if r.get("device")}) or ["?"]
    line = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
        + f", torch {torch.__version__}, {'/'.join(map(str, threads))} torch CPU thread(s), device "
        + f"{', '.join(devices)}. Sum of the run times {sum(r['seconds'] for r in results) / 60:.1f} min"
    )
    finished = [(datetime.datetime.fromisoformat(r["finished"]), r["seconds"]) for r in results if r.get("finished")]
    if finished:
        first_start = min(end - datetime.timedelta(seconds=seconds) for end, seconds in finished)
        last_end = max(end for end, _ in finished)
        span = (last_end - first_start).total_seconds() / 60
        line += f"; from the start of the first run to the end of the last {span:.1f} min "
        line += f"({first_start:%Y-%m-%d %H:%M}–{last_end:%H:%M})"
    loads = [x for r in results for x in r.get("load_average") or [] if x is not None]
    if loads:
        line += f"; 1-minute load average {min(loads):.1f}–{max(loads):.1f} during the runs (other jobs included)"
    return line + "."


def _data_line(sweep: Sweep, results: Sequence[Mapping[str, Any]]) -> str:
    config = sweep.config
    data, model, train = config["data"], config["model"], config["train"]
    sizes = results[0]["spec"]["data"] if results else {}
    source = data["dataset"]
    if data["dataset"] == "glyphs":
        fonts = ", ".join(data["glyphs_font_dirs"]) or "matplotlib's fonts"
        options = "".join(f", {k}={v!r}" for k, v in sweep.glyphs.items())
        source = f"Glyphs from {fonts}{options}"
    return (
        "Data: "
        + "; ".join(f"{split} {s['images']} images of {s['classes']} classes" for split, s in sizes.items())
        + f" ({source}). Every run: {model['name']} (embedding {model['embedding_size']}), "
        + f"{train['optimizer']} lr {train['lr']:g}, MPerClassSampler m = {data['samples_per_class']}, "
        + f"about {sweep.budget_images} images seen in {train['epochs']} epochs, best epoch by validation "
        + "Recall@1, then one test evaluation."
    )


def _paired_differences(results: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[str]:
    """Lines of a table of per-seed differences from ``rsk`` (or the first trained configuration).

    A seed fixes the initial network of every configuration, so differences taken seed by seed cancel part of
    the seed-to-seed spread that the main table's standard deviations contain.
    """
    by_loss: dict[str, dict[int, Mapping[str, Any]]] = {}
    for result in results:
        by_loss.setdefault(result["spec"]["loss"], {})[result["spec"]["seed"]] = result
    trained = [loss for loss in by_loss if loss != UNTRAINED]
    if len(trained) < 2 or not metrics:
        return []
    baseline = "rsk" if "rsk" in trained else trained[0]
    lines = [
        "",
        f"Differences from `{baseline}`, seed by seed (the same seed gives every configuration the same initial "
        "network), in percentage points: mean ± std over the seeds both have.",
        "",
        "| loss | " + " | ".join(f"Δ {_title(m)}" for m in metrics) + " | seeds |",
        "|---|" + "---:|" * len(metrics) + "---:|",
    ]
    for loss in trained:
        if loss == baseline:
            continue
        seeds = sorted(set(by_loss[loss]) & set(by_loss[baseline]))
        if not seeds:
            continue
        cells = []
        for metric in metrics:
            deltas = [by_loss[loss][s]["test"][metric] - by_loss[baseline][s]["test"][metric] for s in seeds]
            mean, std = _mean_std(deltas)
            cells.append(f"{100 * mean:+.2f} ± {100 * std:.2f}")
        lines.append(f"| {loss} | " + " | ".join(cells) + f" | {len(seeds)} |")
    return lines


def _sweep_toml(sweep: Sweep) -> str:
    """The resolved sweep as a sweep file (``--sweep`` reads it back)."""
    # JSON writes strings, numbers, booleans and lists of them as TOML does.
    lines = ["[sweep]", f"name = {json.dumps(sweep.name)}"]
    for key in ("losses", "seeds", "budget_images", "batch_size", "large_batch_size", "chunk_size"):
        lines.append(f"{key} = {json.dumps(getattr(sweep, key))}")
    if sweep.glyphs:
        lines += ["", "[sweep.glyphs]"] + [f"{k} = {json.dumps(v)}" for k, v in sweep.glyphs.items()]
    return "\n".join(lines) + "\n\n" + dumps_toml(sweep.config)


def _plot(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], results: Sequence[Mapping[str, Any]], output_dir: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Trained configurations only, on an axis that starts near their lowest bar: the differences between losses
    # are often a point or two, invisible on a 0-100 axis. The untrained floor is in the title.
    recall = [m for m in metrics if m.startswith("recall_at_")]
    trained = [row for row in rows if row["loss"] != UNTRAINED] or list(rows)
    untrained = [row for row in rows if row["loss"] == UNTRAINED]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(trained) + 2.5), 4.2))
    width = 0.8 / max(1, len(recall))
    positions = np.arange(len(trained))
    lowest = 100.0
    for i, metric in enumerate(recall):
        means = np.array([100 * row[metric][0] for row in trained])
        stds = np.array([100 * row[metric][1] for row in trained])
        lowest = min(lowest, float((means - stds).min()))
        ax.bar(
            positions + (i - (len(recall) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=_title(metric)
        )
    bottom = max(0.0, np.floor(lowest - 1.0))
    ax.set_xticks(positions, [row["loss"] for row in trained], rotation=30, ha="right")
    title = "Test Recall@k per loss (mean ± std over seeds)"
    if untrained:
        title += "\nuntrained network: " + ", ".join(f"{_title(m)} {100 * untrained[0][m][0]:.1f}" for m in recall)
    ax.set(ylabel="test Recall@k (%)" + (f" (axis from {bottom:g})" if bottom > 0 else ""), ylim=(bottom, 100))
    ax.set_title(title, fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(output_dir / "recall_at_k.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.get_cmap("tab10")
    for i, row in enumerate(r for r in rows if r["loss"] != UNTRAINED):
        runs = [r for r in results if r["spec"]["loss"] == row["loss"]]
        color = colors(i % 10)
        ax.scatter([r["train_seconds"] for r in runs], [100 * r["test"][PRIMARY_METRIC] for r in runs],
                   color=color, alpha=0.35, s=14)  # fmt: skip
        (t_mean, t_std), (r_mean, r_std) = row["train_seconds"], row[PRIMARY_METRIC]
        ax.errorbar(t_mean, 100 * r_mean, xerr=t_std, yerr=100 * r_std, fmt="o", color=color, capsize=3,
                    label=row["loss"])  # fmt: skip
    title = "Test Recall@1 against training time (mean ± std; dots: seeds)"
    if untrained:
        title += f"\nuntrained network: R@1 {100 * untrained[0][PRIMARY_METRIC][0]:.1f}"
    ax.set(xlabel="training time (s, validation excluded)", ylabel="test Recall@1 (%)")
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(output_dir / "recall_at_1_vs_time.png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- CLI


def build_parser(prog: str = "pml-recallk benchmark") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train several losses with several seeds on one data set under one protocol, and write a "
        "table (mean ± std over seeds of Recall@k and MAP@R) and plots. Rerunning continues an interrupted sweep.",
    )
    parser.add_argument("--sweep", metavar="FILE", help="sweep file, e.g. benchmarks/configs/sweep_glyphs_debian.toml")
    parser.add_argument("--output-dir", metavar="DIR", help="where runs and the report go (default: the sweep "
                        "file's sweep.output_dir, else runs/benchmark-<name>)")  # fmt: skip
    parser.add_argument("--losses", metavar="A,B", help=f"comma-separated loss configurations ({', '.join(LOSSES)})")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="N", help="seeds (default 0 1 2)")
    parser.add_argument("--budget-images", type=int, metavar="N", help="images seen per run")
    parser.add_argument("--batch-size", type=int, metavar="N", help="batch of the small-batch configurations")
    parser.add_argument("--large-batch-size", type=int, metavar="N", help="batch of rsk_large (0: all classes × m)")
    parser.add_argument("--chunk-size", type=int, metavar="N", help="images per forward in MemoryEfficientTrainer")
    parser.add_argument("--dataset", choices=DATASETS, help="data set (default glyphs)")
    parser.add_argument("--data-root", metavar="PATH", help="folder of the data set's standard layout")
    parser.add_argument(
        "--font-dir", action="append", metavar="DIR", help="glyphs: font folder (repeatable; data.glyphs_font_dirs)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override an experiment config key (pml-recallk config), e.g. --set train.epochs=4",
    )  # fmt: skip
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's; 1 is faster on a busy machine)"
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    parser.add_argument("--list", action="store_true", help="list the loss configurations and exit")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "pml-recallk benchmark") -> int:
    """Entry point of ``pml-recallk benchmark`` and ``benchmarks/run.py``; returns the exit status.

    ``prog`` is how the command was called, as written at the top of the report.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.list:
        for name, entry in LOSSES.items():
            print(f"{name:<18} [{entry.batch} batch] {entry.settings}")
        return 0
    try:
        overrides = list(args.overrides)
        if args.data_root is not None:
            overrides.append(f"data.root={json.dumps(args.data_root)}")
        if args.device is not None:
            overrides.append(f"train.device={json.dumps(args.device)}")
        if args.font_dir:
            overrides.append(f"data.glyphs_font_dirs={json.dumps(args.font_dir)}")
        sweep, file_output_dir = load_sweep(args.sweep, args.dataset, overrides)
        if args.losses:
            sweep.losses = [name.strip() for name in args.losses.split(",") if name.strip()]
        for key in ("seeds", "budget_images", "batch_size", "large_batch_size", "chunk_size"):
            if getattr(args, key) is not None:
                setattr(sweep, key, getattr(args, key))
        sweep.__post_init__()  # check the command-line values too
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        output_dir = Path(args.output_dir or file_output_dir or f"runs/benchmark-{sweep.name}")
        command = " ".join([prog, *(shlex.quote(a) for a in argv)])
        if args.report_only:
            results = [r for r in load_results(output_dir) if r["spec"]["loss"] in (UNTRAINED, *sweep.losses)]
            if not results:
                raise ConfigError(f"{output_dir} holds no finished runs")
            order = [UNTRAINED, *sweep.losses]
            results.sort(key=lambda r: (order.index(r["spec"]["loss"]), r["spec"]["seed"]))
            write_report(sweep, results, output_dir, command=command)
        else:
            run_sweep(sweep, output_dir, command=command)
    except ConfigError as error:
        print(f"pml-recallk benchmark: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pml-recallk benchmark: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

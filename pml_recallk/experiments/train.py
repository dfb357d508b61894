"""One experiment from a config: training with checkpoints, validation, and the final evaluation.

:func:`run_experiment` is what ``pml-recallk train`` runs and what the benchmark runner calls for every arm:

1. check the output folder can be written, load every split (the loaders check their files) and build the
   model (from ``model.init_checkpoint`` when set), loss and optimisers (:mod:`.builders`) — all before
   anything is written;
2. evaluate the untrained model on the test and validation splits;
3. train with :class:`~pml_recallk.MemoryEfficientTrainer` on class-balanced batches (PML's
   ``MPerClassSampler``; the first ``train.warmup_epochs`` train only the model's embedding layer and the loss's
   parameters), validating every ``eval.every_n_epochs`` epochs and after the last through PML's
   ``HookContainer`` (record-keeper CSV/SQLite under ``<output>/logs``, tensorboard under
   ``<output>/tensorboard``), which picks the best epoch by validation ``eval.select_by`` (``recall_at_1`` by
   default): the test set is never used to choose anything;
4. write ``<output>/checkpoints/last.pt`` atomically after every epoch, and ``best.pt`` when validation improves;
5. evaluate the best model on the test split(s), write ``results.json`` (with the validation curve per epoch and
   the loss curve per iteration), ``loss_curve.png`` and ``recall_curves.png``.

Resuming (``resume=True``) continues from ``last.pt``. Every epoch starts by re-seeding Python, NumPy and torch
from ``(train.seed, epoch)`` and building a new sampler, so an epoch does not depend on what ran before it in the
same process: a resumed run ends with the same weights and numbers as an uninterrupted one (on CPU, where the
kernels are deterministic, with the same number of threads).

Example:
    >>> from pml_recallk.experiments import resolve_config
    >>> config = resolve_config(overrides=["train.epochs=1"])
    >>> results = run_experiment(config, "runs/quick")  # doctest: +SKIP
    >>> results["trained"]["recall_at_1"] > results["untrained"]["recall_at_1"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tqdm
from pytorch_metric_learning.trainers import base_trainer
from pytorch_metric_learning.utils import logging_presets
from torch.utils.data import Dataset

from .._io import write_json_atomic
from ..trainers.collapse import validation_collapse
from . import builders
from .checkpoints import get_rng_state, load_checkpoint, load_init_weights, save_checkpoint, set_rng_state
from .config import RESUMABLE_KEYS, ConfigError, config_differences, dumps_toml, upgrade_config
from .plots import plot_history, sorted_by_k
from .registry import loss_entry

__all__ = ["check_output_dir", "embed_and_evaluate", "evaluate_checkpoint", "evaluate_initial_model", "run_experiment"]

PRIMARY_METRIC = "recall_at_1"

Log = Callable[[str], None]


def _log_to_stderr(message: str) -> None:
    print(f"pml-recallk: {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- evaluation


def _metrics_of(tester, split: str) -> dict[str, float]:
    """``{"recall_at_1": ..., ...}`` of one split from ``tester.all_accuracies`` (PML suffixes ``_level0``)."""
    metrics = tester.accuracy_calculator.get_curr_metrics()
    accuracies = tester.all_accuracies[split]
    return {m: float(accuracies[tester.accuracies_keyname(m, label_hierarchy_level=0)]) for m in metrics}


def embed_and_evaluate(
    config: Mapping[str, Any], model: torch.nn.Module, datasets: Mapping[str, Dataset], epoch: int = 0, tester=None
) -> dict[str, dict[str, float]]:
    """Recall@k (and MAP@R if ``eval.map_at_r``) of ``model`` on each dataset, every item a query against the
    rest of its own split, through PML's ``GlobalEmbeddingSpaceTester``. Returns ``{split: {metric: value}}``."""
    tester = tester or builders.build_tester(config, next(model.parameters()).device)
    tester.test(dict(datasets), epoch, model)
    return {split: _metrics_of(tester, split) for split in datasets}


def _initial_model(
    config: Mapping[str, Any], datasets: Mapping[str, Dataset] | None, device: torch.device
) -> tuple[torch.nn.Module, Mapping[str, Dataset], dict[str, Any] | None]:
    """``(model, datasets, init)``: the data (built unless given) and the model as seeded by ``(train.seed, 0)``,
    with the weights of ``model.init_checkpoint`` if set (``init`` says which, else None)."""
    builders.seed_everything(config["train"]["seed"], 0)
    datasets = datasets if datasets is not None else builders.build_datasets(config)
    model = builders.build_model(config)
    init = None
    if config["model"]["init_checkpoint"]:
        init = load_init_weights(model, config["model"]["init_checkpoint"])
    return model.to(device), datasets, init


def evaluate_initial_model(config: Mapping[str, Any], datasets: Mapping[str, Dataset] | None = None) -> dict[str, Any]:
    """The metrics of the model a run of ``config`` starts from (untrained, or ``model.init_checkpoint``), on the
    test split(s): the floors of a benchmark. Returns ``{"test": {split: metrics}, "init_checkpoint": ...}``."""
    device = builders.device_of(config)
    model, datasets, init = _initial_model(config, datasets, device)
    tests = {name: datasets[name] for name in config["data"]["test_splits"]}
    return {"test": embed_and_evaluate(config, model, tests), "init_checkpoint": init}


# ----------------------------------------------------------------------------------------- output folder


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse, before anything is made, an output folder that is a file or cannot be created or written."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output folder {str(output_dir)!r} is a file; choose a folder for --output-dir")
    existing = output_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output folder {str(output_dir)!r} cannot be made: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output folder {str(output_dir)!r} cannot be written: no write permission on {str(existing)!r}"
        )


def _resumable_state(output_dir: Path, resume: bool, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from (None for a fresh run); refuse to overwrite a run, resume a different one,
    or resume with fewer epochs than the run has trained."""
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
    differences = config_differences(upgrade_config(state["config"]), config, ignore=RESUMABLE_KEYS)
    if differences:
        raise ConfigError(f"cannot resume {output_dir} with a different config: {'; '.join(differences)}")
    if config["train"]["epochs"] < state["epoch"]:
        raise ConfigError(
            f"train.epochs is {config['train']['epochs']} but {output_dir} has already trained {state['epoch']} "
            f"epochs; resume with --epochs {state['epoch']} or more"
        )
    return state


def _make_output_dir(output_dir: Path, config: Mapping[str, Any]) -> Path:
    checkpoints = output_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints.glob(".*.tmp"):  # left by a crash in the middle of an atomic write
        stale.unlink()
    (output_dir / "config.toml").write_text(dumps_toml(config, comments=True))
    return checkpoints


# ------------------------------------------------------------------------------------------------ training


def _build_parts(config: Mapping[str, Any], model: torch.nn.Module, num_classes: int, device) -> dict[str, Any]:
    loss, miner = builders.build_loss(config, num_classes)
    loss = loss.to(device)
    optimizers = builders.build_optimizers(config, model, loss)
    scheduler = builders.build_scheduler(config, optimizers["trunk_optimizer"])
    return {"model": model, "loss": loss, "miner": miner, "optimizers": optimizers, "scheduler": scheduler}


def _new_history(init: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "loss": [], "val": [], "best_epoch": None, "epochs_run": 0, "stopped_early": False, "seconds": 0.0,
        "train_seconds": 0.0, "init_checkpoint": init,
    }  # fmt: skip


def _restore(state: Mapping[str, Any], parts: Mapping[str, Any]) -> dict[str, Any]:
    """Load ``last.pt``'s model, optimiser, scheduler, loss and generator states; return its history."""
    parts["model"].load_state_dict(state["model"])
    saved = state.get("optimizers") or {"trunk_optimizer": state["optimizer"]}  # one optimiser before 0.2
    for name, optimizer in parts["optimizers"].items():
        optimizer.load_state_dict(saved[name])
    if parts["scheduler"] is not None:
        parts["scheduler"].load_state_dict(state["lr_scheduler"])
    parts["loss"].load_state_dict(state["loss"])
    set_rng_state(state["rng"])
    return state["history"]


def _last_state(epoch: int, config, parts, history) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "config": config,
        "model": parts["model"].state_dict(),
        "optimizers": {name: optimizer.state_dict() for name, optimizer in parts["optimizers"].items()},
        "lr_scheduler": parts["scheduler"].state_dict() if parts["scheduler"] is not None else None,
        "loss": parts["loss"].state_dict(),
        "rng": get_rng_state(),
        "history": history,
    }


class _EpochBar(tqdm.tqdm):
    """PML's per-epoch progress bar with ``epoch e/E`` in front of the text PML writes into it."""

    label = ""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, desc=self.label, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(f"{self.label} {desc or ''}".strip(), refresh)


@contextlib.contextmanager
def _epoch_counter(epoch: int, epochs: int) -> Iterator[None]:
    """While PML's trainer runs epoch ``epoch``, its progress bar reads ``epoch e/E total_loss=…``.

    PML builds the bar inside ``BaseTrainer.train`` with ``tqdm.tqdm``; the module it looks that up in is swapped
    for this block only.
    """
    bar = type("_Bar", (_EpochBar,), {"label": f"epoch {epoch}/{epochs}"})
    saved = base_trainer.tqdm
    base_trainer.tqdm = types.SimpleNamespace(tqdm=bar)
    try:
        yield
    finally:
        base_trainer.tqdm = saved


def _epoch_hook(run: Mapping[str, Any], history: dict[str, Any], log: Log, stop_after_epoch: int | None):
    """The end-of-epoch hook: validate (through HookContainer), save best.pt and last.pt, time it all."""
    config, parts, hooks, tester = run["config"], run["parts"], run["hooks"], run["tester"]
    train_cfg, eval_cfg = config["train"], config["eval"]

    def on_epoch(trainer) -> bool:
        tic, epoch, keep_going = time.perf_counter(), trainer.epoch, True
        if epoch % eval_cfg["every_n_epochs"] == 0 or epoch == train_cfg["epochs"]:
            keep_going = run["validate"](trainer) is not False
            metrics = _metrics_of(tester, "val")
            history["val"].append({"epoch": epoch, **metrics})
            best_epoch, _ = hooks.get_best_epoch_and_accuracy(tester, "val")
            log(f"epoch {epoch}/{train_cfg['epochs']}: validation {_format_metrics(metrics)} (best epoch {best_epoch})")
            _check_collapse(history, epoch, log)
            if best_epoch == epoch:
                history["best_epoch"] = epoch
                best = {"epoch": epoch, "config": config, "model": parts["model"].state_dict(), "val": metrics}
                save_checkpoint(best, run["checkpoints"] / "best.pt")
        history["stopped_early"] = not keep_going
        history["epochs_run"] = epoch
        history["seconds"] = run["elapsed_before"] + time.perf_counter() - run["started"]
        history["train_seconds"] += tic - run["epoch_started"]  # the steps of this epoch, validation excluded
        save_checkpoint(_last_state(epoch, config, parts, history), run["checkpoints"] / "last.pt")
        if stop_after_epoch == epoch:
            os._exit(3)
        return keep_going

    return on_epoch


def _check_collapse(history: dict[str, Any], epoch: int, log: Log) -> None:
    """Say so, in the log and in the results, when validation Recall@1 falls far below its best or the start."""
    curve = [row[PRIMARY_METRIC] for row in history["val"]]
    message = validation_collapse(curve, floor=history["untrained_val"][PRIMARY_METRIC])
    if message is not None:
        history.setdefault("warnings", []).append(f"epoch {epoch}: training collapse: {message}")
        log(f"warning: epoch {epoch}: training collapse: {message}; lower train.lr or the batch, or start from "
            "pretrained weights (model.init_checkpoint)")  # fmt: skip


def _embedding_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The layer that trains alone during ``train.warmup_epochs``: what the model's ``embedding_layer()`` returns."""
    embedding_layer = getattr(model, "embedding_layer", None)
    if not callable(embedding_layer):
        raise ConfigError(
            f"train.warmup_epochs trains only the model's embedding layer, but {type(model).__name__} names none "
            "(it has no embedding_layer() method); set train.warmup_epochs=0"
        )
    return embedding_layer()


@contextlib.contextmanager
def _backbone_frozen(trainer, model: torch.nn.Module) -> Iterator[None]:
    """While this block runs, only the model's embedding layer trains (and the loss's parameters, such as proxies,
    through their own optimiser).

    Every other parameter of the model has ``requires_grad`` False, so its ``.grad`` stays None and the optimiser
    skips it, weight decay and momentum included; PML's ``freeze_trunk_batchnorm`` keeps every BatchNorm in eval
    mode, so the frozen backbone's running statistics do not move either.
    """
    trained = {id(parameter) for parameter in _embedding_layer(model).parameters()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
    freeze_trunk_batchnorm = trainer.freeze_trunk_batchnorm
    trainer.freeze_trunk_batchnorm = True
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
        trainer.freeze_trunk_batchnorm = freeze_trunk_batchnorm


def _train_epochs(run: dict[str, Any], history: dict[str, Any], start_epoch: int, on_epoch, log: Log) -> None:
    config, parts, hooks = run["config"], run["parts"], run["hooks"]
    train_set, epochs = run["datasets"]["train"], config["train"]["epochs"]
    warmup_epochs = config["train"]["warmup_epochs"]

    def on_iteration(trainer) -> None:
        history["loss"].append([trainer.get_global_iteration(), float(trainer.losses["total_loss"])])
        hooks.end_of_iteration_hook(trainer)

    trainer = None
    for epoch in range(start_epoch, epochs + 1):
        if history["stopped_early"]:
            break
        # Each epoch depends only on (seed, epoch) and the saved state, whatever ran before it in this process.
        builders.seed_everything(config["train"]["seed"], epoch)
        if trainer is None:
            trainer = builders.build_trainer(
                config, parts, train_set, run["device"], run["batch_size"], run["iterations"], on_iteration, on_epoch
            )
        else:
            trainer.sampler = builders.make_sampler(config, train_set.labels, run["batch_size"], run["iterations"])
        run["epoch_started"] = time.perf_counter()
        # Whether an epoch warms up depends only on its number, so a run resumed in the middle of it goes on alike.
        warmup = contextlib.nullcontext()
        if epoch <= warmup_epochs:
            log(f"epoch {epoch}/{epochs}: warm-up, only the embedding layer and the loss's parameters train")
            warmup = _backbone_frozen(trainer, parts["model"])
        with _epoch_counter(epoch, epochs), warmup:
            trainer.train(start_epoch=epoch, num_epochs=epoch)


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"R@{name.rsplit('_', 1)[-1]} {value:.4f}" for name, value in sorted_by_k(metrics))


def _hooks(config: Mapping[str, Any], output_dir: Path, device, val_set: Dataset, checkpoints: Path):
    """PML's record-keeper and HookContainer, which records validation and picks the best epoch (the first with the
    highest validation ``eval.select_by``)."""
    record_keeper, _, tensorboard_writer = logging_presets.get_record_keeper(
        str(output_dir / "logs"), str(output_dir / "tensorboard")
    )
    if record_keeper is None:
        raise ConfigError("training needs record-keeper and tensorboard: pip install 'pml-recallk[cli]'")
    # HookContainer records validation results and picks the best epoch; our checkpoints hold the models.
    hooks = logging_presets.get_hook_container(
        record_keeper,
        primary_metric=config["eval"]["select_by"],
        validation_split_name="val",
        save_models=False,
        log_freq=1,
    )
    tester = builders.build_tester(config, device, end_of_testing_hook=hooks.end_of_testing_hook)
    patience = config["eval"]["patience"] or None
    validate = hooks.end_of_epoch_hook(tester, {"val": val_set}, str(checkpoints), patience=patience)
    return record_keeper, tensorboard_writer, hooks, tester, validate


def _prepare(config, output_dir: Path, datasets, device, log: Log) -> dict[str, Any]:
    """Everything a run needs, built and checked before its folder is made."""
    if datasets is None:
        log(f"loading {config['data']['dataset']} ...")
    model, datasets, init = _initial_model(config, datasets, device)
    train_set = datasets["train"]
    num_classes = len(np.unique(train_set.labels))
    batch_size = builders.batch_size_of(config, num_classes)
    iterations = builders.iterations_of(config, len(train_set), batch_size)
    parts = _build_parts(config, model, num_classes, device)
    if config["train"]["warmup_epochs"]:
        _embedding_layer(model)  # a model without one is refused before the output folder is made
    tests = config["data"]["test_splits"]
    log(
        f"{len(train_set)} training images ({num_classes} classes), {len(datasets['val'])} validation images, "
        + ", ".join(f"{len(datasets[n])} {n} images" for n in tests)
        + f"; {iterations} iterations of {batch_size} per epoch on {device}"
        + (f"; starting from {init['path']}" if init else "")
    )
    return {
        "config": config, "datasets": datasets, "device": device, "parts": parts, "init": init,
        "batch_size": batch_size, "iterations": iterations, "test_names": list(tests),
    }  # fmt: skip


def _start(run: dict[str, Any], state: Mapping[str, Any] | None, log: Log, output_dir: Path) -> tuple[dict, int]:
    """``(history, first epoch)``: a fresh run evaluates the untrained model; a resumed one restores last.pt."""
    if state is not None:
        log(f"resuming {output_dir} after epoch {state['epoch']}")
        return _restore(state, run["parts"]), state["epoch"] + 1
    history = _new_history(run["init"])
    log("evaluating the untrained model ...")
    datasets = run["datasets"]
    splits = {"val": datasets["val"], **{n: datasets[n] for n in run["test_names"]}}
    untrained = embed_and_evaluate(run["config"], run["parts"]["model"], splits)
    history["untrained_val"] = untrained["val"]
    # data.test_splits may name "val" too: the test results keep it (evaluated after training like any test split).
    history["untrained"] = {n: untrained[n] for n in run["test_names"]}
    return history, 1


def run_experiment(
    config: Mapping[str, Any],
    output_dir: str | Path,
    resume: bool = False,
    log: Log = _log_to_stderr,
    stop_after_epoch: int | None = None,
    datasets: Mapping[str, Dataset] | None = None,
) -> dict[str, Any]:
    """Train and evaluate as described in the module docstring; return what ``results.json`` holds.

    Args:
        config: a validated config (:func:`pml_recallk.experiments.resolve_config`).
        output_dir: where checkpoints, logs, plots and ``results.json`` go (created if missing).
        resume: continue the run in ``output_dir`` from ``checkpoints/last.pt`` (a fresh start if there is
            none). Only :data:`~pml_recallk.experiments.config.RESUMABLE_KEYS` may differ from the saved config,
            and ``train.epochs`` may not be below the epochs already run.
        log: receives one-line progress messages.
        stop_after_epoch: simulate a crash: end the process with ``os._exit(3)`` right after the checkpoint of
            this epoch is written (for tests of ``resume``).
        datasets: ``{"train", "val", <test splits>}`` to use instead of :func:`.builders.build_datasets`.

    Returns:
        ``{"untrained", "trained", "best_epoch", "best_val", "epochs_run", "stopped_early", "seconds",
        "train_seconds", "test_splits", "device", "threads", "loss", "init_checkpoint", "val_curve",
        "loss_curve", "warnings", "config"}``: ``untrained``/``trained`` are ``{"recall_at_1": ..., ...}`` on the
        test split, or ``{split: {...}}`` when ``data.test_splits`` names several (VehicleID); ``val_curve`` lists
        the validation metrics per epoch (epoch 0: untrained), ``loss_curve`` ``[iteration, loss]`` pairs;
        ``seconds`` is the wall time of every process that worked on the run, ``train_seconds`` that of the
        training steps; ``warnings`` says when validation Recall@1 collapsed
        (:func:`pml_recallk.trainers.collapse.validation_collapse`).
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    config = builders.with_data_channels(config)  # the saved config says what the model was built for
    state = _resumable_state(output_dir, resume, config)
    config = copy.deepcopy({table: dict(values) for table, values in config.items()})
    run = _prepare(config, output_dir, datasets, builders.device_of(config), log)
    # Only now that the data loads and the model is built is the output folder made.
    run["checkpoints"] = _make_output_dir(output_dir, config)
    log(f"writing to {output_dir}")
    record_keeper, writer, run["hooks"], run["tester"], run["validate"] = _hooks(
        config, output_dir, run["device"], run["datasets"]["val"], run["checkpoints"]
    )
    history, start_epoch = _start(run, state, log, output_dir)
    run.update(started=started, elapsed_before=history["seconds"])
    _train_epochs(run, history, start_epoch, _epoch_hook(run, history, log, stop_after_epoch), log)
    record_keeper.save_records()
    if writer is not None:
        writer.close()
    return _finish(run, history, output_dir, log, started)


def _finish(run: dict[str, Any], history: dict[str, Any], output_dir: Path, log: Log, started: float) -> dict:
    """Evaluate the best model on the test split(s); write results.json and the plots."""
    config, model, test_names = run["config"], run["parts"]["model"], run["test_names"]
    best = load_checkpoint(run["checkpoints"] / "best.pt")
    model.load_state_dict(best["model"])
    log(f"evaluating the best model (epoch {best['epoch']}) on {', '.join(test_names)} ...")
    trained = embed_and_evaluate(config, model, {n: run["datasets"][n] for n in test_names}, epoch=best["epoch"])
    history["seconds"] = run["elapsed_before"] + time.perf_counter() - started

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
        "train_seconds": round(history["train_seconds"], 2),
        "test_splits": test_names,
        "device": str(run["device"]),
        "threads": torch.get_num_threads(),
        "loss": {"name": config["loss"]["name"], "settings": loss_entry(config["loss"]["name"]).settings},
        "init_checkpoint": history["init_checkpoint"],
        "val_curve": [{"epoch": 0, **history["untrained_val"]}, *history["val"]],
        "loss_curve": history["loss"],
        "warnings": history.get("warnings", []),
        "config": config,
    }
    # Atomic: a runner that finds results.json takes the run as finished.
    write_json_atomic(results, output_dir / "results.json")
    plot_history(history, output_dir)
    return results


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
        config: the config to evaluate with (root, eval settings); defaults to the one saved in the checkpoint.
            Its model settings, data set and data must be those of the checkpoint: a run is scored on the data it
            was trained on (``data.root`` may move: the same data in another place).
        splits: which splits, e.g. ``["test"]`` or ``["val"]``; default: every test split of the data set.

    Returns:
        ``{split: {"recall_at_1": ..., ...}}``.
    """
    state = load_checkpoint(checkpoint)
    saved = upgrade_config(state["config"])
    config = saved if config is None else config
    # The weights come from the checkpoint, so where its run started from does not matter.
    ignore = {"model.init_checkpoint", "model.pretrained_path"}
    different_model = [d for d in config_differences(saved, config, ignore) if d.startswith("model.")]
    if different_model:
        raise ConfigError(f"the checkpoint's model differs from the config: {'; '.join(different_model)}")
    if config["data"]["dataset"] != saved["data"]["dataset"]:
        raise ConfigError(
            f"{checkpoint} was trained on {saved['data']['dataset']}, not {config['data']['dataset']}: evaluate it on "
            "its own data set (leave out --dataset)"
        )
    splits = splits or list(config["data"]["test_splits"])
    channels = builders.input_channels(saved)
    datasets = builders.build_datasets(config, splits, channels)
    model = builders.build_model(config, channels)
    model.load_state_dict(state["model"])
    model.to(builders.device_of(config))
    log(f"evaluating {checkpoint} (epoch {state['epoch']}) on {config['data']['dataset']} {', '.join(splits)} ...")
    return embed_and_evaluate(config, model, datasets, epoch=state["epoch"])

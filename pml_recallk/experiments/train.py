"""One experiment from a config: training with checkpoints, validation, and the final evaluation.

:func:`run_experiment` is what ``pml-recallk train`` runs and what the benchmark runner calls for every arm:

1. check the output folder can be written, load every split (the loaders check their files) and build the
   model (from ``model.init_checkpoint`` when set), loss, optimisers, testers and trainer, each from its own table
   of the config (:func:`.builders.build_setup` → :class:`.builders.Setup`) — all before anything is written;
2. evaluate the untrained model on the test and validation splits (what the run records is a
   :class:`.checkpoints.History`, kept in ``last.pt``);
3. train with :class:`~pml_recallk.MemoryEfficientTrainer` on class-balanced batches
   (:class:`~pml_recallk.samplers.DistributedMPerClassSampler`, drawn from ``(train.seed, epoch)``; the first
   ``train.warmup_epochs`` train only the model's embedding layer and the loss's parameters), validating every
   ``eval.every_n_epochs`` epochs and after the last through PML's ``HookContainer`` (record-keeper CSV/SQLite under
   ``<output>/logs``, tensorboard under ``<output>/tensorboard``), which picks the best epoch by validation
   ``eval.select_by`` (``recall_at_1`` by default): the test set is never used to choose anything;
4. write ``<output>/checkpoints/last.pt`` atomically after every epoch, and ``best.pt`` when validation improves
   (:class:`.checkpoints.RunCheckpoints` says what each holds);
5. evaluate the best model on the test split(s), write ``results.json`` (with the validation curve per epoch and
   the loss curve per iteration), ``loss_curve.png`` and ``recall_curves.png``.

Under ``torchrun`` (``WORLD_SIZE`` > 1, the process group made by :mod:`.distributed`) the run is one job: each rank
trains on its slice of every global batch, rank 0 alone evaluates and writes (docs/distributed.md).

The output folder is locked for the whole run (:func:`.checkpoints.output_dir_lock`, by rank 0 under torchrun): a
second live process that wants it is refused at once. Resuming (``resume=True``) continues from ``last.pt``. Every
epoch starts by re-seeding Python, NumPy and torch from ``(train.seed, epoch)`` and building a new sampler, so an
epoch does not depend on what ran before it in the same process: a resumed run ends with the same weights and
numbers as an uninterrupted one (on CPU, where the kernels are deterministic, with the same number of threads).

Example:
    >>> from pml_recallk.experiments import resolve_config
    >>> config = resolve_config(overrides=["train.epochs=1"])
    >>> results = run_experiment(config, "runs/quick")  # doctest: +SKIP
    >>> results["trained"]["recall_at_1"] > results["untrained"]["recall_at_1"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_metric_learning.utils import logging_presets
from torch.utils.data import Dataset

from .._io import write_json_atomic
from ..losses.rank_temperature_schedule import RankTemperatureSchedule
from ..losses.recall_k_surrogate_loss import NothingToLearnWarning
from ..trainers.collapse import validation_collapse
from . import builders, distributed
from .checkpoints import (
    History,
    RunCheckpoints,
    disk_full_is_one_line,
    load_checkpoint,
    output_dir_lock,
    seed_everything,
)
from .config import RESUMABLE_KEYS, ConfigError, config_differences, dumps_toml, upgrade_config
from .metrics import PRIMARY_METRIC, metric_title, sorted_by_k
from .plots import plot_history
from .registry import loss_entry

__all__ = ["check_output_dir", "embed_and_evaluate", "evaluate_checkpoint", "evaluate_initial_model", "run_experiment"]

Log = Callable[[str], None]


# Progress at INFO on the package's logger (pml_recallk/_log.py): the command prints it as "pml-recallk: ..." lines.
_log_info: Log = logging.getLogger(__name__).info


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
    return _evaluate(tester or builders.build_tester(config, next(model.parameters()).device), model, datasets, epoch)


def _evaluate(tester, model: torch.nn.Module, datasets: Mapping[str, Dataset], epoch: int = 0) -> dict:
    tester.test(dict(datasets), epoch, model)
    return {split: _metrics_of(tester, split) for split in datasets}


def evaluate_initial_model(config: Mapping[str, Any], datasets: Mapping[str, Dataset] | None = None) -> dict[str, Any]:
    """The metrics of the model a run of ``config`` starts from (untrained, or ``model.init_checkpoint``), on the
    test split(s): the floors of a benchmark. Returns ``{"test": {split: metrics}, "init_checkpoint": ...}``."""
    model, datasets, init = builders.build_initial_model(config, datasets, builders.device_of(config))
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
    checkpoints = RunCheckpoints(output_dir)
    if not resume:
        if checkpoints.last.exists():
            raise ConfigError(
                f"{output_dir} already holds a run; pass --resume to continue it or choose another --output-dir"
            )
        return None
    state = checkpoints.read_last()
    if state is None:
        return None
    # data.channels 0 leaves the channels to the data, which the saved config has resolved: checked once it is built.
    _refuse_another_run(state, config, output_dir, ignore={"data.channels"} if not config["data"]["channels"] else ())
    if config["train"]["epochs"] < state["epoch"]:
        raise ConfigError(
            f"train.epochs is {config['train']['epochs']} but {output_dir} has already trained {state['epoch']} "
            f"epochs; resume with --epochs {state['epoch']} or more"
        )
    return state


def _refuse_another_run(state: Mapping[str, Any], config: Mapping[str, Any], output_dir: Path, ignore=()) -> None:
    differences = config_differences(upgrade_config(state["config"]), config, ignore=RESUMABLE_KEYS | set(ignore))
    if differences:
        raise ConfigError(f"cannot resume {output_dir} with a different config: {'; '.join(differences)}")


def _make_output_dir(output_dir: Path, config: Mapping[str, Any]) -> RunCheckpoints:
    checkpoints = RunCheckpoints(output_dir)
    checkpoints.prepare()
    (output_dir / "config.toml").write_text(dumps_toml(config, comments=True))
    return checkpoints


# ------------------------------------------------------------------------------------------------ training


def run_experiment(
    config: Mapping[str, Any],
    output_dir: str | Path,
    resume: bool = False,
    log: Log = _log_info,
    datasets: Mapping[str, Dataset] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate as described in the module docstring; return what ``results.json`` holds.

    Args:
        config: a validated config (:func:`pml_recallk.experiments.resolve_config`).
        output_dir: where checkpoints, logs, plots and ``results.json`` go (created if missing).
        resume: continue the run in ``output_dir`` from ``checkpoints/last.pt`` (a fresh start if there is
            none). Only :data:`~pml_recallk.experiments.config.RESUMABLE_KEYS` may differ from the saved config,
            and ``train.epochs`` may not be below the epochs already run.
        log: receives one-line progress messages (default: the ``pml_recallk`` logger at INFO).
        datasets: ``{"train", "val", <test splits>}`` to use instead of :func:`.builders.build_datasets`.
        on_checkpoint: called with the epoch right after each epoch's ``last.pt`` is written (e.g. a test that
            interrupts the run there by raising).

    Returns:
        ``{"untrained", "trained", "best_epoch", "best_val", "epochs_run", "stopped_early", "seconds",
        "train_seconds", "test_splits", "device", "threads", "world_size", "batch_per_rank", "backend", "loss",
        "init_checkpoint", "val_curve", "loss_curve", "warnings", "config"}`` (``{}`` on the ranks other than 0 of a
        torchrun job, which write nothing: docs/distributed.md): ``untrained``/``trained`` are ``{"recall_at_1": ...,
        ...}`` on the test split, or ``{split: {...}}`` when ``data.test_splits`` names several (VehicleID);
        ``val_curve`` lists the validation metrics per epoch (epoch 0: untrained), ``loss_curve`` ``[iteration, loss]``
        pairs; ``seconds`` is the wall time of every process that worked on the run, ``train_seconds`` that of the
        training steps; ``warnings`` says when validation Recall@1 collapsed
        (:func:`pml_recallk.trainers.collapse.validation_collapse`) and when the loss could not learn
        (:class:`~pml_recallk.losses.recall_k_surrogate_loss.NothingToLearnWarning`).
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    with contextlib.ExitStack() as held:
        # Rank 0 checks and locks the folder before reading it (another live run may be writing it); under torchrun
        # the other ranks may not even see it, and learn of a refusal from rank 0.
        distributed.from_main(lambda: _hold_output_dir(output_dir, held))
        return _run_locked(config, output_dir, resume, log, datasets, on_checkpoint or (lambda epoch: None), started)


def _hold_output_dir(output_dir: Path, held: contextlib.ExitStack) -> None:
    check_output_dir(output_dir)
    held.enter_context(output_dir_lock(output_dir))


def _run_locked(config, output_dir: Path, resume: bool, log: Log, datasets, on_checkpoint, started: float) -> dict:
    """:func:`run_experiment` once the output folder is locked: build, start (or resume), train, finish."""
    main = distributed.current_world().is_main  # under torchrun rank 0 alone logs, evaluates and writes
    log = log if main else _quiet
    # Rank 0 reads the folder and decides (its errors raised on every rank): the others may not even see it.
    state = distributed.from_main(lambda: _resumable_state(output_dir, resume, config))
    if datasets is None:
        log(f"loading {config['data']['dataset']} ...")
    setup = builders.build_setup(config, datasets)
    config = setup.config  # with the channels the data has, which the model was built for
    if state is not None:
        _refuse_another_run(state, config, output_dir)
    _log_setup(setup, log)
    # Only now that the data loads and the model is built is the output folder made.
    checkpoints = distributed.from_main(lambda: _make_output_dir(output_dir, config))
    log(f"writing to {output_dir}")
    records = _Records.start(setup, output_dir, checkpoints) if main else None
    history, start_epoch = _start(setup, checkpoints, state, log, output_dir)
    run = _Run(setup, checkpoints, records, history, log, on_checkpoint, started, history.seconds)
    run.train(start_epoch)
    if records is None:
        return {}
    records.close()
    return _finish(run, output_dir)


def _quiet(message: str) -> None:
    """The log of the ranks other than 0."""


def _log_setup(setup: builders.Setup, log: Log) -> None:
    datasets, world_size = setup.datasets, distributed.current_world().world_size
    per_rank = distributed.split_batch(setup.batch_size)
    log(
        f"{len(datasets['train'])} training images ({setup.num_classes} classes), {len(datasets['val'])} validation "
        "images, "
        + ", ".join(f"{len(datasets[n])} {n} images" for n in setup.test_names)
        + f"; {setup.iterations} iterations of {setup.batch_size} per epoch on {setup.device}"
        + (f" × {world_size} processes ({per_rank} images each)" if world_size > 1 else "")
        + (f"; starting from {setup.init['path']}" if setup.init else "")
    )


def _start(
    setup: builders.Setup, checkpoints: RunCheckpoints, state: Mapping[str, Any] | None, log: Log, output_dir: Path
) -> tuple[History, int]:
    """``(history, first epoch)``: a fresh run evaluates the untrained model; a resumed one restores last.pt."""
    if state is not None:
        log(f"resuming {output_dir} after epoch {state['epoch']}")
        return checkpoints.restore(state, setup.parts), state["epoch"] + 1
    if not distributed.current_world().is_main:  # rank 0 alone evaluates
        return History(init_checkpoint=setup.init), 1
    log("evaluating the untrained model ...")
    datasets, test_names = setup.datasets, setup.test_names
    splits = {"val": datasets["val"], **{n: datasets[n] for n in test_names}}
    untrained = _evaluate(setup.tester, setup.parts.model, splits)
    # data.test_splits may name "val" too: the test results keep it (evaluated after training like any test split).
    return History(setup.init, untrained={n: untrained[n] for n in test_names}, untrained_val=untrained["val"]), 1


@dataclass(frozen=True)
class _Records:
    """Rank 0's records of a run: PML's record-keeper (CSV/SQLite under ``logs``, tensorboard) and HookContainer,
    which records validation and picks the best epoch (the first with the highest validation ``eval.select_by``);
    ``validate(trainer)`` runs the setup's validator on the validation split (False: stop, ``eval.patience``)."""

    record_keeper: Any
    tensorboard_writer: Any
    hooks: Any
    validate: Callable[[Any], Any]

    @classmethod
    def start(cls, setup: builders.Setup, output_dir: Path, checkpoints: RunCheckpoints) -> _Records:
        record_keeper, _, tensorboard_writer = logging_presets.get_record_keeper(
            str(output_dir / "logs"), str(output_dir / "tensorboard")
        )
        if record_keeper is None:
            raise ConfigError("training needs record-keeper and tensorboard: pip install 'pml-recallk[cli]'")
        eval_cfg = setup.config["eval"]
        # HookContainer records validation results and picks the best epoch; our checkpoints hold the models.
        hooks = logging_presets.get_hook_container(
            record_keeper, primary_metric=eval_cfg["select_by"], validation_split_name="val", save_models=False,
            log_freq=1,
        )  # fmt: skip
        setup.validator.end_of_testing_hook = hooks.end_of_testing_hook
        validate = hooks.end_of_epoch_hook(
            setup.validator,
            {"val": setup.datasets["val"]},
            str(checkpoints.folder),
            patience=eval_cfg["patience"] or None,
        )
        return cls(record_keeper, tensorboard_writer, hooks, validate)

    def close(self) -> None:
        self.record_keeper.save_records()
        if self.tensorboard_writer is not None:
            self.tensorboard_writer.close()


@dataclass
class _Run:
    """A run in progress: what it trains (``setup``), where it keeps it (``checkpoints``, ``records``: None on the
    ranks other than 0), what it has recorded (``history``), and its clock (``elapsed_before``: the seconds of the
    processes that ran it before this one, when resumed)."""

    setup: builders.Setup
    checkpoints: RunCheckpoints
    records: _Records | None
    history: History
    log: Log
    on_checkpoint: Callable[[int], None]
    started: float
    elapsed_before: float
    epoch_started: float = 0.0
    _warnings: list[warnings.WarningMessage] = field(default_factory=list)  # caught this epoch, not yet recorded
    _schedule: RankTemperatureSchedule | None = None

    def __post_init__(self) -> None:
        config = self.setup.config
        if config["train"]["rank_temperature_end"]:
            self._schedule = RankTemperatureSchedule(
                self.setup.parts.loss,
                start=config["loss"]["rank_temperature"],
                end=config["train"]["rank_temperature_end"],
                total_steps=config["train"]["epochs"] * self.setup.iterations,
            )

    def train(self, start_epoch: int) -> None:
        """Train epochs ``start_epoch`` … ``train.epochs`` (fewer if validation stops the run early)."""
        config, parts, trainer = self.setup.config, self.setup.parts, self.setup.trainer
        trainer.end_of_iteration_hook, trainer.end_of_epoch_hook = self.on_iteration, self.on_epoch
        epochs, warmup_epochs = config["train"]["epochs"], config["train"]["warmup_epochs"]
        for epoch in range(start_epoch, epochs + 1):
            if self.history.stopped_early:
                break
            # Each epoch depends only on (seed, epoch) and the saved state, whatever ran before it in this process:
            # the sampler's batches too, which it draws from (train.seed, epoch) alone.
            seed_everything(config["train"]["seed"], epoch)
            trainer.sampler.set_epoch(epoch)
            self.epoch_started = time.perf_counter()
            # Whether an epoch warms up depends only on its number, so a run resumed in the middle of it goes on alike.
            warmup = contextlib.nullcontext()
            if epoch <= warmup_epochs:
                self.log(f"epoch {epoch}/{epochs}: warm-up, only the embedding layer and the loss's parameters train")
                warmup = _backbone_frozen(trainer, parts.model, self.setup.warmup_layer)
            if self._schedule is not None:  # from the step number alone, so a resumed run goes on alike
                self._schedule.set_step((epoch - 1) * self.setup.iterations)
            self.log(f"epoch {epoch}/{epochs}: training, {self.setup.iterations} iterations")  # PML's bar: the loss
            with warmup, self._caught_warnings():
                # DDP (under torchrun) fixes the trainable parameters when it wraps: wrap anew after warm-up changes.
                trainer.models["trunk"] = distributed.data_parallel(parts.model)
                trainer.train(start_epoch=epoch, num_epochs=epoch)

    @contextlib.contextmanager
    def _caught_warnings(self) -> Iterator[None]:
        """Catch the epoch's warnings: :meth:`on_epoch` records a loss's :class:`NothingToLearnWarning` before
        last.pt is written; the others are shown as they would have been, at the end of the epoch."""
        with warnings.catch_warnings(record=True) as self._warnings:
            yield
        for w in self._warnings:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        self._warnings = []

    def on_iteration(self, trainer) -> None:
        self.history.loss.append([trainer.get_global_iteration(), float(trainer.losses["total_loss"])])
        if self._schedule is not None:  # PML's global iteration counts from 0: this step's number, not the next's
            self._schedule.set_step(trainer.get_global_iteration() + 1)
        if self.records is not None:
            self.records.hooks.end_of_iteration_hook(trainer)

    def on_epoch(self, trainer) -> bool:
        """The end-of-epoch hook: validate, save best.pt and last.pt, time it all; then call ``on_checkpoint``."""
        tic, epoch = time.perf_counter(), trainer.epoch
        self._record_nothing_to_learn(epoch)
        # Under torchrun rank 0 validates and saves while the others wait for its decision to go on.
        keep_going = distributed.from_main(lambda: self._validate_and_save(trainer, epoch, tic))
        self.history.stopped_early = not keep_going
        self.history.epochs_run = epoch
        self.on_checkpoint(epoch)
        return keep_going

    def _record_nothing_to_learn(self, epoch: int) -> None:
        """Say once, in the log and in the results, that the loss cannot learn (RS@k: no positive pair in any batch,
        K44; every k at least the batch, K45): its loss curve is 0 while validation still moves (BatchNorm)."""
        caught, self._warnings = self._warnings, []
        for warning in caught:
            if not issubclass(warning.category, NothingToLearnWarning):
                self._warnings.append(warning)
                continue
            message = str(warning.message)
            if not any(recorded.endswith(f": {message}") for recorded in self.history.warnings):  # once, resumed too
                self.history.warnings.append(f"epoch {epoch}: {message}")
                self.log(f"warning: epoch {epoch}: {message}")

    def _validate_and_save(self, trainer, epoch: int, tic: float) -> bool:
        config, history = self.setup.config, self.history
        keep_going = True
        if epoch % config["eval"]["every_n_epochs"] == 0 or epoch == config["train"]["epochs"]:
            keep_going = self.records.validate(trainer) is not False
            metrics = _metrics_of(self.setup.validator, "val")
            history.val.append({"epoch": epoch, **metrics})
            best_epoch, _ = self.records.hooks.get_best_epoch_and_accuracy(self.setup.validator, "val")
            self.log(
                f"epoch {epoch}/{config['train']['epochs']}: validation {_format_metrics(metrics)} "
                f"(best epoch {best_epoch})"
            )
            _check_collapse(history, epoch, self.log)
            if best_epoch == epoch:
                history.best_epoch = epoch
                self.checkpoints.save_best(epoch, config, self.setup.parts.model, metrics)
        history.stopped_early = not keep_going
        history.epochs_run = epoch
        history.seconds = self.elapsed_before + time.perf_counter() - self.started
        history.train_seconds += tic - self.epoch_started  # the steps of this epoch, validation excluded
        self.checkpoints.save_last(epoch, config, self.setup.parts, history)
        return keep_going


def _check_collapse(history: History, epoch: int, log: Log) -> None:
    """Say so, in the log and in the results, when validation Recall@1 falls far below its best or the start."""
    curve = [row[PRIMARY_METRIC] for row in history.val]
    message = validation_collapse(curve, floor=history.untrained_val[PRIMARY_METRIC])
    if message is not None:
        history.warnings.append(f"epoch {epoch}: training collapse: {message}")
        log(f"warning: epoch {epoch}: training collapse: {message}; lower train.lr or the batch, or start from "
            "pretrained weights (model.init_checkpoint)")  # fmt: skip


@contextlib.contextmanager
def _backbone_frozen(trainer, model: torch.nn.Module, embedding_layer: torch.nn.Module) -> Iterator[None]:
    """While this block runs, only the model's ``embedding_layer`` trains (and the loss's parameters, such as proxies,
    through their own optimiser).

    Every other parameter of the model has ``requires_grad`` False, so its ``.grad`` stays None and the optimiser
    skips it, weight decay and momentum included; PML's ``freeze_trunk_batchnorm`` keeps every BatchNorm in eval
    mode, so the frozen backbone's running statistics do not move either.
    """
    trained = {id(parameter) for parameter in embedding_layer.parameters()}
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


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{metric_title(name)} {value:.4f}" for name, value in sorted_by_k(metrics))


def _finish(run: _Run, output_dir: Path) -> dict:
    """Evaluate the best model on the test split(s); write results.json and the plots."""
    setup, history = run.setup, run.history
    config, model, test_names = setup.config, setup.parts.model, setup.test_names
    best = run.checkpoints.read_best()
    model.load_state_dict(best["model"])
    run.log(f"evaluating the best model (epoch {best['epoch']}) on {', '.join(test_names)} ...")
    tests = {n: setup.datasets[n] for n in test_names}
    trained = _evaluate(setup.tester, model, tests, epoch=best["epoch"])
    history.seconds = run.elapsed_before + time.perf_counter() - run.started

    def one_or_all(metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
        return metrics[test_names[0]] if len(test_names) == 1 else metrics

    results = {
        "untrained": one_or_all(history.untrained),
        "trained": one_or_all(trained),
        "best_epoch": best["epoch"],
        "best_val": best["val"],
        "epochs_run": history.epochs_run,
        "stopped_early": history.stopped_early,
        "seconds": round(history.seconds, 2),
        "train_seconds": round(history.train_seconds, 2),
        "test_splits": test_names,
        "device": str(setup.device),
        "threads": torch.get_num_threads(),
        **distributed.results_entry(setup.batch_size),
        "loss": {"name": config["loss"]["name"], "settings": loss_entry(config["loss"]["name"]).settings},
        "init_checkpoint": history.init_checkpoint,
        "val_curve": [{"epoch": 0, **history.untrained_val}, *history.val],
        "loss_curve": history.loss,
        "warnings": history.warnings,
        "config": config,
    }
    # Atomic: a runner that finds results.json takes the run as finished.
    with disk_full_is_one_line(output_dir / "results.json", "the checkpoints are intact; --resume writes it"):
        write_json_atomic(results, output_dir / "results.json")
    plot_history(history, output_dir)
    return results


# ------------------------------------------------------------------------------------ evaluate a checkpoint


def evaluate_checkpoint(
    checkpoint: str | Path,
    config: Mapping[str, Any] | None = None,
    splits: list[str] | None = None,
    log: Log = _log_info,
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
    builders.place_model(model, config)
    log(f"evaluating {checkpoint} (epoch {state['epoch']}) on {config['data']['dataset']} {', '.join(splits)} ...")
    return embed_and_evaluate(config, model, datasets, epoch=state["epoch"])

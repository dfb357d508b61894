"""Run a sweep: every (arm, seed) through :func:`pml_recallk.experiments.run_experiment`, resumable, then the report.

Each arm's run is an experiment run like ``pml-recallk train``'s: the same builders, seeding, trainer
(:class:`~pml_recallk.MemoryEfficientTrainer` for every loss and batch), hooks, checkpoints and evaluation, in
``runs/<arm>/seed_<seed>/``. The benchmark adds ``result.json`` (the run's settings, test metrics with MAP@R,
validation curve, loss curve, times), written atomically when the run is finished. Rerunning the same command
skips finished runs and continues an interrupted one from its last epoch; a finished run made with other
settings is an error rather than silently mixed into the table. ``--jobs N`` runs N runs at once, each in a process
of its own; a run's numbers do not depend on how it ran.

Example (a two-minute sweep on the glyphs that ship with matplotlib)::

    pml-recallk benchmark --losses rsk,contrastive --seeds 0 1 --set train.epochs=2 --output-dir runs/bench
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import pickle
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import write_json_atomic
from ..experiments import builders
from ..experiments.config import DATASETS, RUNTIME_KEYS, ConfigError, upgrade_config
from ..experiments.registry import LOSSES, loss_entry
from ..experiments.train import evaluate_initial_model, run_experiment
from .report import load_results, write_report
from .sweep import FLOORS, Arm, Sweep, load_sweep

__all__ = ["build_parser", "build_sweep_datasets", "main", "planned_config", "run_arm", "run_one", "run_sweep"]

RESULT_FORMAT = "pml-recallk-benchmark-v2"
PRIMARY_METRIC = "recall_at_1"

Log = Callable[[str], None]


def _log_to_stderr(message: str) -> None:
    print(f"pml-recallk benchmark: {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------- data


class _Data:
    """The datasets of each distinct ``[data]`` table (arms that change only the model or loss share them)."""

    def __init__(self, given: Mapping[str, Dataset] | None):
        self.given, self.cache = given, {}

    def of(self, config: Mapping[str, Any]) -> Mapping[str, Dataset]:
        if self.given is not None:
            return self.given
        data = {k: v for k, v in config["data"].items() if f"data.{k}" not in RUNTIME_KEYS}
        key = json.dumps([data, builders.input_channels(config)], sort_keys=True)
        if key not in self.cache:
            self.cache[key] = builders.build_datasets(config)
        return self.cache[key]


def _sizes(datasets: Mapping[str, Dataset]) -> dict[str, dict[str, int]]:
    return {
        split: {"images": len(dataset), "classes": len(np.unique(np.asarray(dataset.labels)))}
        for split, dataset in datasets.items()
    }


def _steps_per_epoch(config: Mapping[str, Any], datasets: Mapping[str, Dataset]) -> tuple[int, int]:
    """``(batch, steps per epoch)`` of a config on its data, as run_experiment computes them."""
    train = datasets["train"]
    batch = builders.batch_size_of(config, len(np.unique(np.asarray(train.labels))))
    return batch, builders.iterations_of(config, len(train), batch)


def planned_config(sweep: Sweep, arm: Arm, seed: int, data: _Data) -> dict[str, dict[str, Any]]:
    """The arm's config with its steps per epoch fixed: those of its ``equal_steps`` arm, or from the budget."""
    config = sweep.arm_config(arm, seed)
    if arm.equal_steps:
        reference = sweep.arm_config(sweep.arm(arm.equal_steps), seed)
        config["train"]["iterations_per_epoch"] = _steps_per_epoch(reference, data.of(reference))[1]
    elif sweep.budget_images and "iterations_per_epoch" not in arm.overrides.get("train", {}):
        batch, _ = _steps_per_epoch(config, data.of(config))
        steps = round(sweep.budget_images / (config["train"]["epochs"] * batch))
        config["train"]["iterations_per_epoch"] = max(1, steps)
    return config


def _without_runtime_keys(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {t: {k: v for k, v in values.items() if f"{t}.{k}" not in RUNTIME_KEYS} for t, values in config.items()}


def _stored_spec(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """A finished run's spec with its config in this release's keys: a key added since (at its default) or
    renamed does not make the run look as if it were made with other settings."""
    spec = result.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("config"), Mapping):
        return spec
    return {**spec, "config": _without_runtime_keys(upgrade_config(spec["config"]))}


def _spec(
    name: str, seed: int, config: Mapping[str, Any], datasets: Mapping[str, Dataset], equal_steps: str = ""
) -> dict[str, Any]:
    """Everything that determines the numbers of one run (compared when a finished run is found)."""
    spec: dict[str, Any] = {
        "arm": name,
        "seed": seed,
        "data": _sizes(datasets),
        "config": _without_runtime_keys(config),
    }
    if name in FLOORS:
        return {**spec, "loss": name, "evaluate_only": True}
    batch, steps = _steps_per_epoch(config, datasets)
    epochs = config["train"]["epochs"]
    return {
        **spec, "loss": config["loss"]["name"], "settings": loss_entry(config["loss"]["name"]).settings,
        "batch_size": batch, "chunk_size": config["train"]["chunk_size"] or batch, "steps_per_epoch": steps,
        "steps": steps * epochs, "images_seen": steps * epochs * batch, "evaluate_only": False,
        "equal_steps": equal_steps,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ one run


def _load_average() -> float | None:
    """The 1-minute load average (how busy the machine was: timings depend on it), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run_arm(
    spec: Mapping[str, Any],
    config: Mapping[str, Any],
    datasets: Mapping[str, Dataset],
    run_dir: str | Path,
    log: Log = _log_to_stderr,
    command: str | None = None,
) -> dict[str, Any]:
    """Train (or, for a floor, only evaluate) one (arm, seed); write and return ``run_dir/result.json``.

    Returns ``{"format", "spec", "test": {metric: value}, "best_epoch", "val_curve", "loss_curve",
    "train_seconds", "seconds", "finished", "device", "threads", "load_average", "init_checkpoint", "command"}``
    (and a trained run's ``warnings``, e.g. a collapse of validation recall)
    (``test`` on the first test split; ``train_seconds`` the training steps' wall time, validation excluded).
    """
    run_dir, started, load_at_start = Path(run_dir), time.perf_counter(), _load_average()
    first_test = config["data"]["test_splits"][0]
    result: dict[str, Any] = {"format": RESULT_FORMAT, "spec": dict(spec)}
    if spec["evaluate_only"]:
        floor = evaluate_initial_model(config, datasets)
        result.update(test=floor["test"][first_test], best_epoch=0, val_curve=[], loss_curve=[], train_seconds=0.0)
        result["init_checkpoint"] = floor["init_checkpoint"]
    else:
        log(f"{spec['arm']} seed {spec['seed']}: batch {spec['batch_size']}, {spec['steps']} steps")
        trained = run_experiment(config, run_dir, resume=True, log=log, datasets=datasets)
        test = trained["trained"] if len(trained["test_splits"]) == 1 else trained["trained"][first_test]
        result.update(
            test=test, best_epoch=trained["best_epoch"], val_curve=trained["val_curve"],
            loss_curve=trained["loss_curve"], train_seconds=trained["train_seconds"],
            init_checkpoint=trained["init_checkpoint"], warnings=trained["warnings"],
        )  # fmt: skip
    result.update(
        seconds=round(time.perf_counter() - started, 3),
        finished=datetime.datetime.now().isoformat(timespec="seconds"),
        device=str(builders.device_of(config)),
        threads=torch.get_num_threads(),
        load_average=[load_at_start, _load_average()],
        command=command,
    )
    write_json_atomic(result, run_dir / "result.json")
    return result


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]


def _planned(sweep: Sweep, data: _Data) -> list[tuple[str, int, dict[str, Any]]]:
    """``(name, seed, config)`` of every run, floors first; every config is built (and checked) here."""
    plan = [(floor, seed, sweep.floor_config(floor, seed)) for floor in sweep.floors for seed in sweep.seeds]
    plan += [(arm.name, seed, planned_config(sweep, arm, seed, data)) for arm in sweep.arms for seed in sweep.seeds]
    return plan


def _finished_message(number: int, total: int, name: str, seed: int, result: Mapping[str, Any]) -> str:
    return (f"[{number}/{total}] {name} seed {seed}: test R@1 {result['test'][PRIMARY_METRIC]:.4f}, "
            f"{result['train_seconds']:.0f} s training, {result['seconds']:.0f} s in all")  # fmt: skip


class _Unfinished(NamedTuple):
    """A run of the plan (``number`` counted from 1) that ``run_sweep(jobs > 1)`` hands to a worker process."""

    number: int
    name: str
    seed: int
    spec: dict[str, Any]
    config: dict[str, Any]
    run_dir: Path


# The datasets a worker process builds itself, once per [data] table, as the parent process built them (so that
# they are not copied to every worker).
_WORKER_DATA = _Data(None)


def _run_in_worker(
    spec: dict[str, Any], config: dict[str, Any], run_dir: Path, command: str, pickled_datasets: bytes | None
) -> dict[str, Any]:
    """:func:`run_arm` in a worker process of ``run_sweep(jobs > 1)``, without a log (the parent logs results)."""
    if pickled_datasets is None:
        datasets = _WORKER_DATA.of(config)
    else:
        try:
            datasets = pickle.loads(pickled_datasets)
        except Exception as error:  # e.g. a class defined in a module that a fresh process cannot import
            raise ValueError(
                f"a worker process cannot load the datasets given to run_sweep ({type(error).__name__}: {error}); "
                "define their classes in a module that a new Python process imports, or use jobs=1"
            ) from None
    return run_arm(spec, config, datasets, run_dir, log=lambda message: None, command=command)


def _named_failure(run: _Unfinished, error: BaseException) -> Exception:
    """A worker's failure with the arm and seed in its message; a user mistake stays a ConfigError (one line)."""
    if isinstance(error, ConfigError):
        return ConfigError(f"{run.name} seed {run.seed}: {error}")
    return RuntimeError(f"{run.name} seed {run.seed} failed: {type(error).__name__}: {error}")


def _run_in_processes(
    runs: Sequence[_Unfinished],
    results: list[dict[str, Any] | None],
    jobs: int,
    datasets: Mapping[str, Dataset] | None,
    log: Log,
    command: str,
) -> None:
    """Run ``runs`` in ``jobs`` worker processes, ``results[run.number - 1]`` set and logged as each finishes.

    Workers are spawned (a fresh torch, not a fork of this process's state) with this process's torch thread
    count, and run exactly what :func:`run_arm` runs here, so a run's numbers do not depend on where it ran. A run
    starts only when a worker is free: after a failure none starts, those in progress finish (their results stay
    on disk for the next run of the sweep), then the failure is raised.
    """
    pickled_datasets = None
    if datasets is not None:
        try:
            pickled_datasets = pickle.dumps(datasets)
        except Exception as error:
            raise ValueError(
                f"jobs > 1 sends the datasets to worker processes, but they cannot be pickled "
                f"({type(error).__name__}: {error}); use jobs=1"
            ) from None
    jobs, threads, total = min(jobs, len(runs)), torch.get_num_threads(), len(results)
    log(f"{len(runs)} runs to go, {jobs} at a time (worker processes with torch.set_num_threads({threads}))")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        waiting, running = iter(runs), dict[Future, _Unfinished]()

        def start_next() -> None:
            run = next(waiting, None)
            if run is not None:
                running[pool.submit(_run_in_worker, run.spec, run.config, run.run_dir, command, pickled_datasets)] = run

        for _ in range(jobs):
            start_next()
        while running:
            for future in wait(running, return_when=FIRST_COMPLETED).done:
                run = running.pop(future)
                error = future.exception()
                if error is not None:
                    if running:
                        log(f"{run.name} seed {run.seed} failed; waiting for the {len(running)} runs in progress")
                    raise _named_failure(run, error) from error
                results[run.number - 1] = result = future.result()
                log(_finished_message(run.number, total, run.name, run.seed, result))
                start_next()


def run_sweep(
    sweep: Sweep,
    output_dir: str | Path,
    datasets: Mapping[str, Dataset] | None = None,
    log: Log = _log_to_stderr,
    command: str | None = None,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Run every (arm, seed) and floor of ``sweep`` not yet finished in ``output_dir``, then write the report.

    Args:
        sweep: what to run.
        output_dir: where ``runs/<arm>/seed_<seed>/`` and the report go. Rerunning continues a sweep.
        datasets: ``{"train", "val", <test split>}`` to use for every arm instead of building them (e.g. in tests;
            with ``jobs > 1`` they are pickled to the worker processes).
        log: receives one-line progress messages.
        command: the command line stored with each run and written at the top of the report (default: this
            process's).
        jobs: how many runs at once. 1 runs them here one after another; more runs the unfinished ones in that
            many worker processes (spawned, each with this process's torch thread count) once every finished run
            is checked, with the same results. A failed run stops the sweep, naming its arm and seed; rerunning
            continues it.

    Returns:
        The result of every run, in sweep order, the floors first.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    output_dir, started = Path(output_dir), time.perf_counter()
    command = command or " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    data = _Data(datasets)
    plan = _planned(sweep, data)
    for _, _, config in plan:  # every split loaded (its files checked) and every config built before any write
        data.of(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The per-run checkpoints and logs are for looking into runs, not for the repository.
    ignored = ["checkpoints/", "logs/", "tensorboard/", "*.png", "config.toml", "results.json"]
    (output_dir / ".gitignore").write_text("".join(f"runs/*/*/{pattern}\n" for pattern in ignored))
    results: list[dict[str, Any] | None] = []
    unfinished = []  # with jobs > 1: run in worker processes once every finished run is checked
    for number, (name, seed, config) in enumerate(plan, start=1):
        run_dir = output_dir / "runs" / name / f"seed_{seed}"
        datasets_of_run = data.of(config)
        spec = _spec(name, seed, config, datasets_of_run, sweep.arm(name).equal_steps if name in sweep.names else "")
        done = run_dir / "result.json"
        if done.exists():
            result = json.loads(done.read_text())
            differences = _differences(_stored_spec(result), spec)
            if differences:
                raise ConfigError(
                    f"{done} was made with other settings ({'; '.join(differences[:3])}); use another --output-dir "
                    "or delete that folder"
                )
            log(f"[{number}/{len(plan)}] {name} seed {seed}: finished before, skipped")
        elif jobs == 1:
            result = run_arm(spec, config, datasets_of_run, run_dir, log=log, command=command)
            log(_finished_message(number, len(plan), name, seed, result))
        else:
            unfinished.append(_Unfinished(number, name, seed, spec, config, run_dir))
            result = None
        results.append(result)
    if unfinished:
        _run_in_processes(unfinished, results, jobs, datasets, log, command)
    write_report(sweep, results, output_dir)
    log(f"wrote {output_dir / 'results.md'} ({time.perf_counter() - started:.0f} s)")
    return results


def run_one(
    sweep: Sweep,
    loss: str,
    seed: int,
    datasets: Mapping[str, Dataset],
    run_dir: str | Path,
    log: Log = _log_to_stderr,
    command: str | None = None,
) -> dict[str, Any]:
    """Deprecated (use :func:`run_sweep`, or :func:`run_arm`): run the arm or floor ``loss`` with ``seed``."""
    warnings.warn("benchmark.run_one is deprecated; use run_sweep (or run_arm)", DeprecationWarning, stacklevel=2)
    data = _Data(datasets)
    if loss in FLOORS:
        config, equal_steps = sweep.floor_config(loss, seed), ""
    else:
        config, equal_steps = planned_config(sweep, sweep.arm(loss), seed, data), sweep.arm(loss).equal_steps
    spec = _spec(loss, seed, config, datasets, equal_steps)
    return run_arm(spec, config, datasets, run_dir, log=log, command=command)


def build_sweep_datasets(sweep: Sweep) -> dict[str, Dataset]:
    """Deprecated: ``{"train", "val", "test"}`` of the sweep's base config (use experiments.builders)."""
    warnings.warn("benchmark.build_sweep_datasets is deprecated; use experiments.builders.build_datasets",
                  DeprecationWarning, stacklevel=2)  # fmt: skip
    test = sweep.config["data"]["test_splits"][0]
    datasets = builders.build_datasets(sweep.config, ["train", "val", test])
    return {"train": datasets["train"], "val": datasets["val"], "test": datasets[test]}


# --------------------------------------------------------------------------------------------------- CLI


def build_parser(prog: str = "pml-recallk benchmark") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train several arms (a loss and config overrides) with several seeds on one data set under one "
        "protocol, and write a table (mean ± std over seeds of Recall@k and MAP@R), per-seed results and plots. "
        "Rerunning continues an interrupted sweep.",
    )
    parser.add_argument("--sweep", metavar="FILE", help="sweep file, e.g. benchmarks/configs/sweep_glyphs_debian.toml")
    parser.add_argument("--output-dir", metavar="DIR", help="where runs and the report go (default: the sweep "
                        "file's sweep.output_dir, else runs/benchmark-<name>)")  # fmt: skip
    parser.add_argument("--losses", metavar="A,B", help=f"one arm per loss, named after it ({', '.join(LOSSES)})")
    parser.add_argument("--arms", metavar="A,B", help="run only these arms of the sweep file")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="N", help="seeds (default 0 1 2)")
    parser.add_argument("--budget-images", type=int, metavar="N", help="images seen per run (0: the config's steps)")
    parser.add_argument("--dataset", choices=DATASETS, help="data set (default glyphs)")
    parser.add_argument("--data-root", metavar="PATH", help="folder of the data set's standard layout")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the base config (pml-recallk config), e.g. --set train.epochs=4",
    )  # fmt: skip
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's; 1 is faster on a busy machine)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="runs at once, each in a process of its own (default 1); e.g. --jobs 2 --threads 1 on 2 cores",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    parser.add_argument("--list", action="store_true", help="list the losses with their settings and exit")
    return parser


def _sweep_of(args: argparse.Namespace) -> tuple[Sweep, str | None]:
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    sweep, file_output_dir = load_sweep(args.sweep, args.dataset, overrides)
    arms, losses = sweep.arms, []
    if args.losses:  # one arm per name: the file's arm of that name, else the loss of that name
        names = [name.strip() for name in args.losses.split(",") if name.strip()]
        arms = [sweep.arm(name) for name in names if name in sweep.names]
        losses = [name for name in names if name not in sweep.names]
    if args.arms:
        wanted = [name.strip() for name in args.arms.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in sweep.names]
        if unknown:
            raise ConfigError(f"unknown arm {unknown[0]!r}; the sweep has {', '.join(sweep.names)}")
        arms = [sweep.arm(name) for name in wanted]
    seeds = args.seeds if args.seeds is not None else sweep.seeds
    budget = args.budget_images if args.budget_images is not None else sweep.budget_images
    # A new Sweep checks the command line's values too.
    selected = {arm.name for arm in arms}
    references = [sweep.arm(arm.equal_steps) for arm in arms if arm.equal_steps and arm.equal_steps not in selected]
    sweep = Sweep(sweep.config, arms, seeds, sweep.floors, budget, sweep.name, losses=losses, references=references)
    return sweep, file_output_dir


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
            print(f"{name:<18} {entry.settings}")
        return 0
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        sweep, file_output_dir = _sweep_of(args)
        output_dir = Path(args.output_dir or file_output_dir or f"runs/benchmark-{sweep.name}")
        command = " ".join([prog, *(shlex.quote(a) for a in argv)])
        if args.report_only:
            order = [*sweep.floors, *sweep.names]
            results = [r for r in load_results(output_dir) if r["spec"]["arm"] in order]
            if not results:
                raise ConfigError(f"{output_dir} holds no finished runs of this sweep")
            results.sort(key=lambda r: (order.index(r["spec"]["arm"]), r["spec"]["seed"]))
            write_report(sweep, results, output_dir, command=command)
        else:
            run_sweep(sweep, output_dir, command=command, jobs=args.jobs)
    except ConfigError as error:
        print(f"pml-recallk benchmark: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pml-recallk benchmark: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

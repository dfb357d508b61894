"""The ``pml-recallk`` command: ``train``, ``evaluate``, ``config`` and ``benchmark``.

``pml-recallk train`` with no arguments trains RS@k on the embedded glyph data with the small CNN and prints
Recall@k of the untrained and the trained model; ``--dataset``, ``--data-root`` and ``--config`` select a
benchmark and its recipe, and ``--set table.key=value`` overrides any config key. Every user mistake (unknown
data set, missing folder, bad key or value) ends with one line ``pml-recallk: error: ...`` on stderr and exit
status 2; anything else is a bug and keeps its traceback. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import benchmark, experiments  # lazy packages: torch's trainer stack loads when a command needs it
from ._io import write_json_atomic
from .experiments.config import DATASETS, ConfigError, dumps_toml, resolve_config
from .experiments.registry import dataset_class

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line ``pml-recallk: error: ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"pml-recallk: error: {message} (see '{self.prog} --help')\n")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, help="data set (its paper recipe is the base config)")
    parser.add_argument(
        "--data-root",
        metavar="PATH",
        help="the data: a benchmark's folder, an image folder (image_folder), a CSV (csv)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML config file (the keys of pml-recallk config), e.g. a copy of its output"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=2e-4 (repeatable; the value is TOML)",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (train.device)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--batch-size", type=int, help="data.batch_size")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--num-workers", type=int, help="data-loader worker processes (data.num_workers)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pml-recallk",
        description="Recall@k surrogate loss (RS@k) with pytorch-metric-learning: train and evaluate.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train a model (default: RS@k on the embedded glyph data)",
        description="Train with RS@k, choose the best epoch on validation classes held out of the training "
        "split, and report Recall@k of the untrained and trained model on the test split.",
    )
    _add_config_options(train)
    _add_training_options(train)
    train.add_argument("--output-dir", metavar="DIR", help="where results go (default: a new folder under runs/)")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run in --output-dir")
    # For tests of --resume: end the process abruptly right after this epoch's checkpoint.
    train.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)

    evaluate = commands.add_parser(
        "evaluate",
        help="report Recall@k of a saved model",
        description="Report Recall@k of the model in a checkpoint written by 'pml-recallk train' (a run "
        "folder means its checkpoints/best.pt). The data settings come from the checkpoint unless overridden.",
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH", help="best.pt, last.pt or a run folder")
    _add_config_options(evaluate)
    evaluate.add_argument(
        "--split", action="append", metavar="NAME", help="split to evaluate (repeatable; default: the test split(s))"
    )
    evaluate.add_argument("--output", metavar="FILE", help="also write the results as JSON")

    show = commands.add_parser(
        "config",
        help="print the resolved config as TOML",
        description="Print the config that 'pml-recallk train' would use with the same options.",
    )
    _add_config_options(show)
    _add_training_options(show)

    commands.add_parser(
        "benchmark",
        help="run the benchmark suite (arguments are passed on)",
        description="Run the benchmark suite; every argument after 'benchmark' goes to pml_recallk.benchmark.",
        add_help=False,
    )
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values followed by those the convenience flags stand for (so the flags win)."""
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    for flag, keys in (
        ("epochs", ["train.epochs"]),
        ("batch_size", ["data.batch_size"]),
        ("seed", ["train.seed"]),
        ("num_workers", ["data.num_workers"]),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides += [f"{key}={value}" for key in keys]
    return overrides


def _check_data_root(config: Mapping[str, Any]) -> None:
    root, dataset = config["data"]["root"], config["data"]["dataset"]
    if dataset_class(dataset).needs_root and not Path(root).exists():
        raise ConfigError(f"data root {root!r} of {dataset} does not exist")


def _default_output_dir(dataset: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{dataset}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{dataset}-{stamp}-{suffix}"
    return path


_METRIC_TITLES = {"mean_average_precision_at_r": "MAP@R"}


def _metric_table(columns: Mapping[str, Mapping[str, float]]) -> str:
    """Recall@k (one row per k, in order of k) then any other metric (MAP@R), one column per entry of ``columns``."""
    names = list(next(iter(columns.values())))
    recall = sorted((n for n in names if n.startswith("recall_at_")), key=lambda n: int(n.rsplit("_", 1)[-1]))
    others = sorted(n for n in names if not n.startswith("recall_at_"))
    titles = {n: "Recall@" + n.rsplit("_", 1)[-1] for n in recall} | {n: _METRIC_TITLES.get(n, n) for n in others}
    header = f"{'':<10}" + "".join(f"{title:>12}" for title in columns)
    rows = [
        f"{titles[name]:<10}" + "".join(f"{values[name]:>12.4f}" for values in columns.values())
        for name in recall + others
    ]
    return "\n".join([header, *rows])


def _train(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    output_dir = Path(args.output_dir) if args.output_dir else None
    base = None
    if args.resume:
        if output_dir is None:
            raise ConfigError("--resume needs the --output-dir of the run to continue")
        last = output_dir / "checkpoints" / "last.pt"
        if last.exists():
            # The saved config is the base: the same command line plus --resume, or --resume alone, both work.
            base = experiments.load_checkpoint(last)["config"]
    config = resolve_config(args.dataset, args.config, overrides, base=base)
    _check_data_root(config)
    output_dir = output_dir or _default_output_dir(config["data"]["dataset"])
    results = experiments.run_experiment(config, output_dir, resume=args.resume, stop_after_epoch=args.stop_after_epoch)

    test_splits = results["test_splits"]
    print(f"Recall@k on {config['data']['dataset']} (best epoch {results['best_epoch']} of {results['epochs_run']}, "
          f"chosen on validation classes; {results['seconds']:.0f} s)")  # fmt: skip
    for split in test_splits:
        untrained = results["untrained"] if len(test_splits) == 1 else results["untrained"][split]
        trained = results["trained"] if len(test_splits) == 1 else results["trained"][split]
        if len(test_splits) > 1:
            print(f"{split}:")
        print(_metric_table({"untrained": untrained, "trained": trained}))
    print(f"results: {output_dir / 'results.json'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else None
    if output is not None and not output.parent.is_dir():  # checked before the (long) evaluation; no folder made
        raise ConfigError(f"--output {str(output)!r}: folder {str(output.parent)!r} does not exist")
    if output is not None and output.is_dir():
        raise ConfigError(f"--output {str(output)!r} is a folder; name a file such as results.json")
    saved = experiments.load_checkpoint(args.checkpoint)["config"]
    trained_on = saved.get("data", {}).get("dataset", "glyphs")
    if args.dataset is not None and args.dataset != trained_on:
        # A run is scored on the data it was trained on; its saved config names the data set and its root.
        raise ConfigError(
            f"{args.checkpoint} was trained on {trained_on}, not {args.dataset}: leave out --dataset (the run's data "
            "set and root are used; --data-root may give the same data in another place)"
        )
    config = resolve_config(args.dataset, args.config, _overrides(args), base=saved)
    _check_data_root(config)
    results = experiments.evaluate_checkpoint(args.checkpoint, config, splits=args.split)
    for split, metrics in results.items():
        print(f"{split}:")
        print(_metric_table({"Recall@k": metrics}))
    if output is not None:
        write_json_atomic(results, output)
    return 0


def _show_config(args: argparse.Namespace) -> int:
    print(dumps_toml(resolve_config(args.dataset, args.config, _overrides(args)), comments=True), end="")
    return 0


def _benchmark(argv: Sequence[str]) -> int:
    return int(benchmark.main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pml-recallk``; returns the exit status (0, 2 for a user mistake, 130 if interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "benchmark":
            # Everything after "benchmark" belongs to the runner, including its own --help.
            return _benchmark(argv[1:])
        args = build_parser().parse_args(argv)
        return {"train": _train, "evaluate": _evaluate, "config": _show_config}[args.command](args)
    except ConfigError as error:
        print(f"pml-recallk: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("pml-recallk: interrupted (a training run continues with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)


if __name__ == "__main__":
    sys.exit(main())

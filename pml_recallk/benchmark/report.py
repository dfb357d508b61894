"""The report of a sweep: a table (mean ± std over seeds), per-seed results and three plots.

``results.md`` (the command first, the table of test Recall@k and MAP@R, seed-by-seed differences from the first
arm, each arm's settings), ``results.csv`` (the table), ``results_per_seed.csv`` (every run), ``recall_at_k.png``
(Recall@k bars per arm), ``recall_at_1_vs_batch.png`` (Recall@1 against the batch size, one line per loss) and
``recall_at_1_vs_time.png``, plus ``sweep.toml`` (the sweep, readable by ``--sweep``).

Table, for arm a, metric m and the seeds S: ``mean = Σ_s m_{a,s} / |S|`` and the sample standard deviation
``sqrt(Σ_s (m_{a,s} − mean)² / (|S| − 1))`` (0 for one seed), in %.
"""

from __future__ import annotations

import collections
import csv
import datetime
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file backend
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..experiments.config import ConfigError  # noqa: E402
from ..experiments.metrics import MAP_AT_R, PRIMARY_METRIC, metric_title, recall_k  # noqa: E402
from ..experiments.registry import loss_entry  # noqa: E402
from .sweep import FLOORS, PRETRAINED, UNTRAINED, Sweep, arm_overrides_text, sweep_toml  # noqa: E402

__all__ = ["RESULT_FORMAT", "load_results", "read_result", "summarize", "validation_rows", "write_report"]

RESULT_FORMAT = "pml-recallk-benchmark-v2"
# What every result.json holds (run_arm writes it); the spec's entries that name the run.
_RESULT_ENTRIES = ("spec", "test", "best_epoch", "train_seconds", "seconds")
_SPEC_ENTRIES = ("arm", "seed", "loss", "data")


def read_result(path: str | Path) -> dict[str, Any]:
    """A finished run's ``result.json``, checked to be one: a damaged or foreign file is a one-line ConfigError.

    The runner writes ``result.json`` atomically, so a truncated, empty or foreign file was damaged or put there
    from outside. It is refused, not rerun: rerunning would overwrite whatever the user put there, and a folder of
    committed results has no checkpoints to rerun from; the message says to delete the file to rerun that run.
    """
    path = Path(path)
    advice = "delete it to rerun that run"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is damaged (not UTF-8 text); {advice}") from None
    if not text.strip():
        raise ConfigError(f"{path} is empty, not a finished run; {advice}")
    try:
        result = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path} is damaged (truncated or not JSON: {error.msg} at line {error.lineno}); {advice}"
        ) from None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        found = result.get("format") if isinstance(result, dict) else type(result).__name__
        raise ConfigError(
            f"{path} is not a result of this benchmark (format {found!r}, expected {RESULT_FORMAT!r}); {advice}"
        )
    spec = result.get("spec")
    missing = [e for e in _RESULT_ENTRIES if e not in result]
    missing += [f"spec.{e}" for e in _SPEC_ENTRIES if isinstance(spec, dict) and e not in spec]
    if missing or not isinstance(spec, dict) or not isinstance(result["test"], dict):
        what = f"no {', '.join(missing)}" if missing else "a spec and test metrics that are not tables"
        raise ConfigError(f"{path} is not a result of this benchmark ({what}); {advice}")
    return result


def load_results(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished run's ``result.json`` under ``output_dir/runs`` (:func:`read_result`)."""
    return [read_result(path) for path in sorted(Path(output_dir).glob("runs/*/seed_*/result.json"))]


def validation_rows(output_dir: str | Path) -> list[dict[str, Any]]:
    """The validation side of a sweep's finished runs, one row per trained arm, by its best epoch's validation
    MAP@R (highest first): ``{"arm", "seeds", "steps", "best_epoch": [per seed], "val_recall_at_1", "val_map_at_r",
    "last_val_map_at_r"}``, means over seeds. The best epoch is the one each run chose (by ``eval.select_by``), not
    a choice made here; floors (no validation curve) are left out. ``benchmarks/validation_table.py`` prints it.
    """
    runs: dict[str, list[tuple[Mapping[str, float], Mapping[str, float], int]]] = {}
    for result in load_results(output_dir):
        curve = result.get("val_curve") or []
        if len(curve) < 2:  # floors: nothing trained, nothing chosen
            continue
        (best,) = [point for point in curve if point["epoch"] == result["best_epoch"]]
        runs.setdefault(result["spec"]["arm"], []).append((best, curve[-1], result["spec"]["steps"]))
    rows = [
        {
            "arm": arm,
            "seeds": len(seeds),
            "steps": seeds[0][2],
            "best_epoch": [int(best["epoch"]) for best, _, _ in seeds],
            "val_recall_at_1": float(np.mean([best[PRIMARY_METRIC] for best, _, _ in seeds])),
            "val_map_at_r": float(np.mean([best[MAP_AT_R] for best, _, _ in seeds])),
            "last_val_map_at_r": float(np.mean([last[MAP_AT_R] for _, last, _ in seeds])),
        }
        for arm, seeds in runs.items()
    ]
    return sorted(rows, key=lambda row: -row["val_map_at_r"])


def _plus_minus(mean: float, std: float, count: int, sign: str = "", scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` scaled for a table cell; the mean alone for one seed, which has no spread to show."""
    text = f"{scale * mean:{sign}.{digits}f}"
    return text if count < 2 else f"{text} ± {scale * std:.{digits}f}"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm (and floor), in order of first appearance: mean and std over seeds of every test metric
    and of the training time. Each row: ``{"arm", "loss", "seeds", "batch_size", "steps", "images_seen",
    "<metric>": (mean, std), ..., "train_seconds": (mean, std)}``."""
    by_arm: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_arm.setdefault(result["spec"]["arm"], []).append(result)
    rows = []
    for arm, runs in by_arm.items():
        spec = runs[0]["spec"]
        row: dict[str, Any] = {
            "arm": arm,
            "loss": spec["loss"],
            "family": _family(spec),
            "seeds": [r["spec"]["seed"] for r in runs],
            "batch_size": spec.get("batch_size"),
            "steps": spec.get("steps"),
            "images_seen": spec.get("images_seen"),
            "equal_steps": spec.get("equal_steps", ""),
        }
        for metric in runs[0]["test"]:
            row[metric] = _mean_std([r["test"][metric] for r in runs])
        row["train_seconds"] = _mean_std([r["train_seconds"] for r in runs])
        rows.append(row)
    return rows


def _family(spec: Mapping[str, Any]) -> str:
    """The loss with what changes its kind (SiMix, a memory, RS@k's calibration term, a warm-up, its own
    parameters' learning rate, equal steps): one line of the batch-size plot."""
    config = spec.get("config", {})
    mixup, memory = config.get("mixup", {}), config.get("memory", {})
    family = spec["loss"]
    if mixup.get("enabled") or "simix" in spec["arm"]:  # (the first runner named SiMix only in the arm)
        family += f" + SiMix ({mixup['mode']})" if "mode" in mixup else " + SiMix"
    if memory.get("enabled"):
        family += " + memory"
    if config.get("loss", {}).get("calibration_weight"):
        family += f" + calibration λ {config['loss']['calibration_weight']:g}"
    if config.get("train", {}).get("warmup_epochs"):
        family += " + warm-up"
    if config.get("train", {}).get("loss_lr"):
        family += f", loss_lr {config['train']['loss_lr']:g}"
    return family + (_EQUAL_STEPS if spec.get("equal_steps") else "")


_EQUAL_STEPS = " (equal steps)"
_SELECTED_BY = {PRIMARY_METRIC: "Recall@1", MAP_AT_R: "MAP@R"}


def _without_equal_steps(family: str) -> str:
    return family.removesuffix(_EQUAL_STEPS)


def _metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    recall = sorted({name for row in rows for name in row if recall_k(name) is not None}, key=recall_k)
    return recall + ([MAP_AT_R] if any(MAP_AT_R in row for row in rows) else [])


def _write_csvs(rows, results, metrics: list[str], output_dir: Path) -> None:
    with open(output_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["arm", "loss", "num_seeds", "batch_size", "steps", "images_seen"]
            + [f"{m}_{stat}" for m in [*metrics, "train_seconds"] for stat in ("mean", "std")]
        )
        for row in rows:
            values = [row[m] for m in [*metrics, "train_seconds"]]
            writer.writerow(
                [row["arm"], row["loss"], len(row["seeds"]), row["batch_size"], row["steps"], row["images_seen"]]
                + [f"{x:.6f}" for pair in values for x in pair]
            )
    with open(output_dir / "results_per_seed.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "loss", "seed", "batch_size", "steps", "best_epoch", *metrics, "train_seconds"])
        for r in results:
            spec = r["spec"]
            writer.writerow(
                [spec["arm"], spec["loss"], spec["seed"], spec.get("batch_size"), spec.get("steps"), r["best_epoch"]]
                + [f"{r['test'][m]:.6f}" for m in metrics]
                + [f"{r['train_seconds']:.3f}"]
            )


def write_report(
    sweep: Sweep, results: Sequence[Mapping[str, Any]], output_dir: str | Path, command: str | None = None
) -> None:
    """Write the files listed in the module docstring. The report starts with the command stored with the runs;
    ``command`` is written instead when they have none, and noted as the command that rewrote the report
    otherwise."""
    output_dir = Path(output_dir)
    rows = summarize(results)
    metrics = _metric_names(rows)
    _write_csvs(rows, results, metrics, output_dir)
    run_commands = list(dict.fromkeys(r["command"] for r in results if r.get("command")))
    lines = [f"# Loss benchmark: {sweep.name}", "", "Made with:", "", "```bash"]
    lines += run_commands or [command or "(command not recorded)"]
    lines += ["```", ""]
    if command is not None and run_commands and command not in run_commands:
        lines += [f"Report rewritten from the finished runs with `{command}`.", ""]
    lines += [_machine_line(results), "", _data_line(sweep, results), ""]
    lines += _table(rows, metrics)
    lines += _paired_differences(results, [m for m in (PRIMARY_METRIC, MAP_AT_R) if m in metrics])
    lines += ["", "Settings:", ""] + _settings(sweep, rows)
    lines += [
        "",
        "![Recall@k per arm](recall_at_k.png)",
        "",
        "![Recall@1 against the batch size](recall_at_1_vs_batch.png)",
    ]
    lines += ["", "![Recall@1 against training time](recall_at_1_vs_time.png)"]
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    (output_dir / "sweep.toml").write_text(sweep_toml(sweep))
    _plot_bars(rows, metrics, output_dir)
    _plot_against_batch(rows, output_dir)
    _plot_against_time(rows, results, output_dir)


def _table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[str]:
    lines = [
        "Test split, in %: mean ± standard deviation over the seeds (sample std, ddof = 1; the value alone for one "
        "seed). Training time excludes validation.",
        "",
        "| arm | loss | batch | steps | "
        + " | ".join(metric_title(m) for m in metrics)
        + " | training time (s) | seeds |",
        "|---|---|---:|---:|" + "---:|" * len(metrics) + "---:|---:|",
    ]
    for row in rows:
        count = len(row["seeds"])
        cells = [_plus_minus(*row[m], count) if m in row else "–" for m in metrics]
        time_cell = _plus_minus(*row["train_seconds"], count, scale=1.0, digits=1)
        lines.append(
            f"| {row['arm']} | {row['loss']} | {row['batch_size'] or '–'} | {row['steps'] or '–'} | "
            + " | ".join(cells) + f" | {time_cell} | {count} |"
        )  # fmt: skip
    return lines


def _settings(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        name = row["arm"]
        if name == UNTRAINED:
            lines.append(f"- `{UNTRAINED}`: the network as initialised by each seed, not trained (a floor).")
        elif name == PRETRAINED:
            path = sweep.config["model"]["init_checkpoint"]
            lines.append(f"- `{PRETRAINED}`: the network of `{path}`, not trained further (a floor).")
        elif name in sweep.names:
            arm = sweep.arm(name)
            lines.append(f"- `{name}`: {loss_entry(arm.loss).settings}; {arm_overrides_text(arm)}.")
    return lines


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
    data, model, train = sweep.config["data"], sweep.config["model"], sweep.config["train"]
    sizes = results[0]["spec"]["data"] if results else {}
    source = data["dataset"]
    if data["dataset"] == "glyphs":
        fonts = ", ".join(data["glyphs_font_dirs"]) or "matplotlib's fonts"
        source = f"Glyphs from {fonts}" + (", one face per family" if data["glyphs_one_face_per_family"] else "")
    start = f"from `{model['init_checkpoint']}`" if model["init_checkpoint"] else "from random weights"
    if not model["init_checkpoint"] and model.get("pretrained_path"):  # a pretrained backbone, a fresh head
        start = f"from the backbone weights `{model['pretrained_path']}`"
    return (
        "Data: "
        + "; ".join(f"{split} {s['images']} images of {s['classes']} classes" for split, s in sizes.items())
        + f" ({source}). Base config: {model['name']} (embedding {model['embedding_size']}) {start}, "
        + f"{train['optimizer']} lr {train['lr']:g}, MPerClassSampler m = {data['samples_per_class']}, "
        + f"{train['epochs']} epochs"
        + (f", about {sweep.budget_images} images seen per run" if sweep.budget_images else "")
        + f"; the best epoch by validation {_SELECTED_BY[sweep.config['eval']['select_by']]}, "
        + "then one test evaluation. Arms change it as listed below."
    )


def _paired_differences(results: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[str]:
    """Lines of a table of per-seed differences from the first trained arm.

    A seed fixes the initial network of every arm, so differences taken seed by seed cancel part of the
    seed-to-seed spread that the main table's standard deviations contain.
    """
    by_arm: dict[str, dict[int, Mapping[str, Any]]] = {}
    for result in results:
        by_arm.setdefault(result["spec"]["arm"], {})[result["spec"]["seed"]] = result
    trained = [arm for arm in by_arm if arm not in FLOORS]
    if len(trained) < 2 or not metrics:
        return []
    baseline = trained[0]
    lines = [
        "",
        f"Differences from `{baseline}`, seed by seed (the same seed gives every arm the same initial network), in "
        "percentage points: mean ± std over the seeds both have.",
        "",
        "| arm | " + " | ".join(f"Δ {metric_title(m)}" for m in metrics) + " | seeds |",
        "|---|" + "---:|" * len(metrics) + "---:|",
    ]
    for arm in trained[1:]:
        seeds = sorted(set(by_arm[arm]) & set(by_arm[baseline]))
        if not seeds:
            continue
        cells = []
        for metric in metrics:
            mean, std = _mean_std([by_arm[arm][s]["test"][metric] - by_arm[baseline][s]["test"][metric] for s in seeds])
            cells.append(_plus_minus(mean, std, len(seeds), sign="+"))
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(seeds)} |")
    return lines


# ------------------------------------------------------------------------------------------------- plots


def _floor_title(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    return "".join(
        f"\n{row['arm']} network: " + ", ".join(f"{metric_title(m)} {100 * row[m][0]:.1f}" for m in metrics if m in row)
        for row in rows
        if row["arm"] in FLOORS
    )


def _plot_bars(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], output_dir: Path) -> None:
    # Trained arms only, on an axis that starts near their lowest bar: the differences between arms are often a
    # point or two, invisible on a 0-100 axis. The floors are in the title.
    recall = [m for m in metrics if recall_k(m) is not None]
    trained = [row for row in rows if row["arm"] not in FLOORS] or list(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(trained) + 2.5), 4.2))
    width = 0.8 / max(1, len(recall))
    positions = np.arange(len(trained))
    lowest = 100.0
    for i, metric in enumerate(recall):
        means = np.array([100 * row[metric][0] for row in trained])
        stds = np.array([100 * row[metric][1] for row in trained])
        lowest = min(lowest, float((means - stds).min()))
        offsets = positions + (i - (len(recall) - 1) / 2) * width
        ax.bar(offsets, means, width, yerr=stds, capsize=2, label=metric_title(metric))
    bottom = max(0.0, np.floor(lowest - 1.0))
    ax.set_xticks(positions, [row["arm"] for row in trained], rotation=30, ha="right")
    ax.set(ylabel="test Recall@k (%)" + (f" (axis from {bottom:g})" if bottom > 0 else ""), ylim=(bottom, 100))
    ax.set_title("Test Recall@k per arm (mean ± std over seeds)" + _floor_title(rows, recall), fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(output_dir / "recall_at_k.png", dpi=120)
    plt.close(fig)


def batch_panels(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, list[Mapping[str, Any]]]]]:
    """The panels of the batch-size plot: ``[(title, {family: rows sorted by batch})]``.

    The first panel holds the arms trained for the same epochs (a larger batch takes fewer steps). If some arms
    take another arm's steps per epoch (``equal_steps``), a second panel holds them, each family's line starting at
    the arm whose steps it takes: the same steps, more images per step.
    """
    trained = [row for row in rows if row["arm"] not in FLOORS and row["batch_size"]]
    by_arm = {row["arm"]: row for row in trained}
    panels = []
    for title, selected in (
        ("the same epochs", [row for row in trained if not row.get("equal_steps")]),
        ("the steps of the smaller batch", [row for row in trained if row.get("equal_steps")]),
    ):
        families: dict[str, list[Mapping[str, Any]]] = {}
        for row in selected:
            line = families.setdefault(row["family"], [])
            reference = by_arm.get(row.get("equal_steps", ""))
            line += [r for r in (reference, row) if r is not None and all(r is not other for other in line)]
        if families:
            panels.append((title, {f: sorted(line, key=lambda r: r["batch_size"]) for f, line in families.items()}))
    return panels


def batch_axis_bottom(means: Sequence[float]) -> float:
    """The lower end of the batch plot's Recall@1 axis (%) for these arm means: just below the lowest mean within 20
    points of the best, so that a collapsed arm does not squash the lines near the best into a band; from 0 when the
    best is at most 40, where the whole range is narrow enough to show every point (a study far from converged)."""
    best = max(means)
    if best <= 40.0:
        return 0.0
    return min(m for m in means if m >= best - 20.0) - 1.0


def _plot_against_batch(rows: Sequence[Mapping[str, Any]], output_dir: Path) -> None:
    """Recall@1 against the batch size, one line per loss family, in the panels of :func:`batch_panels`.

    One colour per loss in both panels. The axis is :func:`batch_axis_bottom`'s; a point below it is drawn at the
    bottom as a triangle with its value written next to it (one collapsed arm would otherwise squash every other line
    into a band); the values of several such points at one batch size are stacked.
    """
    panels = batch_panels(rows)
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels) + 2.5, 6.0), sharey=True, squeeze=False)
    means = [100 * r[PRIMARY_METRIC][0] for _, families in panels for line in families.values() for r in line]
    bottom = batch_axis_bottom(means)
    top = max(100 * (r[PRIMARY_METRIC][0] + r[PRIMARY_METRIC][1]) for _, f in panels for l in f.values() for r in l)
    # One colour per family, its equal-steps line included.
    losses = list(dict.fromkeys(_without_equal_steps(f) for _, families in panels for f in families))
    colours = {loss: f"C{i % 10}" for i, loss in enumerate(losses)}
    for ax, (title, families) in zip(axes[0], panels):
        below_at = collections.Counter()  # batch size -> values already written below the axis there
        for i, (family, line) in enumerate(families.items()):
            # Families side by side at one batch size, a few percent apart on the log axis, so the bars do not overlap.
            shift = 2 ** (0.04 * (i - (len(families) - 1) / 2))
            x = np.array([r["batch_size"] * shift for r in line])
            y = np.array([100 * r[PRIMARY_METRIC][0] for r in line])
            error = np.array([100 * r[PRIMARY_METRIC][1] for r in line])
            low = y < bottom
            colour = colours[_without_equal_steps(family)]
            style = "--" if family.endswith(_EQUAL_STEPS) else "-"
            if (~low).any():
                ax.errorbar(x[~low], y[~low], yerr=error[~low], marker="o", ls=style, capsize=3, color=colour,
                            label=family)  # fmt: skip
            if low.any() and (~low).any():  # the line goes on, dotted, to the points below the axis
                ax.plot(x, np.maximum(y, bottom + 0.3), ls=":", color=colour, linewidth=1)
            for j, index in enumerate(np.flatnonzero(low)):
                label = family if j == 0 and not (~low).any() else None
                ax.plot([x[index]], [bottom + 0.3], marker="v", color=colour, ls="none", label=label)
                stacked = below_at[line[index]["batch_size"]]
                below_at[line[index]["batch_size"]] += 1
                ax.annotate(f"{y[index]:.1f}", (x[index], bottom + 0.3), textcoords="offset points",
                            xytext=(6, -3 + 8 * stacked), fontsize=7, color=colour)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size (images)", title=title, ylim=(bottom, min(100.0, top + 0.5)))
        ax.grid(alpha=0.3)
        # Below the axes: inside, it hid points (the legend of many families is as tall as the axis).
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    axes[0][0].set_ylabel("test Recall@1 (%)")
    title = "Test Recall@1 against the batch size (mean ± std over seeds)" + _floor_title(rows, [PRIMARY_METRIC])
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(output_dir / "recall_at_1_vs_batch.png", dpi=120)
    plt.close(fig)


def _plot_against_time(rows, results, output_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.get_cmap("tab10")
    for i, row in enumerate(r for r in rows if r["arm"] not in FLOORS):
        runs = [r for r in results if r["spec"]["arm"] == row["arm"]]
        color = colors(i % 10)
        ax.scatter([r["train_seconds"] for r in runs], [100 * r["test"][PRIMARY_METRIC] for r in runs],
                   color=color, alpha=0.35, s=14)  # fmt: skip
        (t_mean, t_std), (r_mean, r_std) = row["train_seconds"], row[PRIMARY_METRIC]
        ax.errorbar(t_mean, 100 * r_mean, xerr=t_std, yerr=100 * r_std, fmt="o", color=color, capsize=3,
                    label=row["arm"])  # fmt: skip
    title = "Test Recall@1 against training time (mean ± std; dots: seeds)" + _floor_title(rows, [PRIMARY_METRIC])
    ax.set(xlabel="training time (s, validation excluded)", ylabel="test Recall@1 (%)")
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(output_dir / "recall_at_1_vs_time.png", dpi=120)
    plt.close(fig)

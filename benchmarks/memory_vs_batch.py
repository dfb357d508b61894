"""RS@k with a cross-batch memory against RS@k with a large batch: how much of the large batch's accuracy does
the memory give, at what fraction of its cost?

Configurations (same data, network, optimiser and number of epochs; only the loss's database changes):

* ``batch_256``: RS@k on batches of 256 (PML's ``MetricLossOnly``);
* ``memory_<M>``: the same batches, RS@k of each batch against a ``CrossBatchMemory`` of the last M embeddings
  (the batch included, each query's own entry and, through the dataset index as sample id, its stale copies
  left out);
* ``batch_4096``: RS@k on batches of 4,096 through the gradient cache (``MemoryEfficientTrainer``, chunks of 256).

Each (configuration, seed) trains from the same seeded initial network, is tested once at the end (Recall@k and
MAP@R on the test split, leave-one-out) and writes ``runs/<config>/seed_<s>.json``; a rerun skips finished runs,
so an interrupted sweep continues. ``report`` writes ``results.md``, ``results.json`` and ``recall_vs_time.png``.

    nohup nice -n 10 python benchmarks/memory_vs_batch.py run > /tmp/memory_vs_batch.log 2>&1 &
    python benchmarks/memory_vs_batch.py report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils import common_functions as c_f

from pml_recallk import CrossBatchMemory, MemoryEfficientTrainer, RecallAtKAccuracyCalculator, RecallKSurrogateLoss
from pml_recallk._io import write_json_atomic
from pml_recallk.benchmark import harness
from pml_recallk.models import SmallConvNet

RESULTS = Path(__file__).parent / "results" / "memory_vs_batch"
K_VALUES = (1, 2, 4, 8, 16, 32)


class IndexedImages(torch.utils.data.Dataset):
    """Preprocessed images as one tensor; items are (image, label, dataset index)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = (torch.from_numpy(images).float()[:, None] / 255.0 - 0.5) / 0.5
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index]), index


class MetricLossOnlyWithSampleIds(MetricLossOnly):
    """``MetricLossOnly`` that gives the memory each image's dataset index as its sample id, so that a query's
    older copies (from the previous epoch) leave its database along with its own entry."""

    def get_batch(self):
        self.dataloader_iter, (data, labels, sample_ids) = c_f.try_next_on_generator(
            self.dataloader_iter, self.dataloader
        )
        self.sample_ids = sample_ids
        return data, labels

    def calculate_loss(self, curr_batch):
        data, labels = curr_batch
        embeddings = self.compute_embeddings(data)
        labels = labels.to(embeddings.device)
        self.losses["metric_loss"] = self.loss_funcs["metric_loss"](embeddings, labels, sample_ids=self.sample_ids)


def load_data(args) -> tuple[IndexedImages, IndexedImages, str]:
    if args.dataset == "han":
        from pml_recallk.datasets import HanGlyphs

        kwargs = {"font_dir": args.font_dir} if args.font_dir else {}
        kwargs.update({"cache_dir": args.cache_dir} if args.cache_dir else {})
        train = HanGlyphs("train", images_per_class=args.images_per_class, **kwargs)
        test = HanGlyphs("test", images_per_class=args.images_per_class, **kwargs)
        described = f"HanGlyphs (images_per_class={args.images_per_class})"
    else:
        from pml_recallk.datasets import Glyphs

        kwargs = {"font_dirs": args.font_dir} if args.font_dir else {}
        train, test = Glyphs("train", **kwargs), Glyphs("test", **kwargs)
        described = "Glyphs" + (f" from {args.font_dir}" if args.font_dir else " (matplotlib's fonts)")
    return IndexedImages(train.images, train.labels), IndexedImages(test.images, test.labels), described


def configurations(args) -> dict[str, dict]:
    configs = {"untrained": {"batch": 0, "memory": 0}}  # the seeded initial network: what training adds
    configs[f"batch_{args.batch}"] = {"batch": args.batch, "memory": 0}
    for memory in args.memories:
        configs[f"memory_{memory}"] = {"batch": args.batch, "memory": memory}
    configs[f"batch_{args.large_batch}"] = {"batch": args.large_batch, "memory": 0, "chunk": args.batch}
    return configs


def make_trainer(config: dict, model, train: IndexedImages, args):
    loss = RecallKSurrogateLoss()
    common = dict(
        models={"trunk": model, "embedder": torch.nn.Identity()},
        optimizers={"trunk_optimizer": torch.optim.Adam(model.parameters(), lr=args.lr)},
        batch_size=config["batch"],
        mining_funcs={},
        dataset=train,
        sampler=MPerClassSampler(train.labels, m=args.m, batch_size=config["batch"], length_before_new_iter=len(train)),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
    )
    if config["memory"]:
        memory = CrossBatchMemory(loss=loss, embedding_size=args.embedding_size, memory_size=config["memory"])
        return MetricLossOnlyWithSampleIds(loss_funcs={"metric_loss": memory}, **common)
    getter = lambda batch: (batch[0], batch[1])  # noqa: E731 (drop the dataset index)
    if "chunk" in config:
        return MemoryEfficientTrainer(
            loss_funcs={"metric_loss": loss}, data_and_label_getter=getter, chunk_size=config["chunk"], **common
        )
    return MetricLossOnly(loss_funcs={"metric_loss": loss}, data_and_label_getter=getter, **common)


@torch.no_grad()
def evaluate(model, test: IndexedImages) -> dict[str, float]:
    model.eval()
    embeddings = torch.cat([model(chunk) for chunk in test.images.split(1024)])
    calculator = RecallAtKAccuracyCalculator(
        k_values=K_VALUES,
        include=tuple(f"recall_at_{k}" for k in K_VALUES) + ("mean_average_precision_at_r",),
        device=torch.device("cpu"),
    )
    return calculator.get_accuracy(embeddings, torch.from_numpy(test.labels))


def run_one(name: str, config: dict, seed: int, train, test, described: str, args) -> dict:
    c_f.NUMPY_RANDOM = np.random.default_rng(seed)  # MPerClassSampler's generator
    torch.manual_seed(seed)
    model = SmallConvNet(embedding_size=args.embedding_size, in_channels=1, width=args.width)
    start, steps = time.perf_counter(), 0
    if config["batch"]:
        trainer = make_trainer(config, model, train, args)
        trainer.train(num_epochs=args.epochs)
        steps = args.epochs * trainer.iterations_per_epoch
    train_seconds = time.perf_counter() - start
    accuracy = evaluate(model, test)
    return {
        "config": name,
        "seed": seed,
        **config,
        "epochs": args.epochs,
        "steps": steps,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / args.epochs,
        "accuracy": accuracy,
        "data": described,
        "train_images": len(train),
        "train_classes": int(len(np.unique(train.labels))),
        "test_images": len(test),
        "test_classes": int(len(np.unique(test.labels))),
        "load_average": os.getloadavg()[0],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def run(args) -> None:
    torch.set_num_threads(args.threads)
    train, test, described = load_data(args)
    print(f"{described}: train {len(train)} images, test {len(test)} images", flush=True)
    for seed in args.seeds:
        for name, config in configurations(args).items():
            if args.configs and name not in args.configs:
                continue
            path = args.out / "runs" / name / f"seed_{seed}.json"
            if path.exists():
                continue
            result = run_one(name, config, seed, train, test, described, args)
            result["command"] = "python benchmarks/memory_vs_batch.py " + " ".join(sys.argv[1:])
            write_json_atomic(result, path)
            r1 = result["accuracy"]["recall_at_1"]
            print(f"{name} seed {seed}: R@1 {100 * r1:.2f}, {result['seconds_per_epoch']:.1f} s/epoch", flush=True)
            report(args, quiet=True)  # the tables always show every finished run


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarise(runs: list[dict]) -> list[dict]:
    """One row per configuration, in the order batch, memories (by size), large batch."""
    by_config: dict[str, list[dict]] = {}
    for result in runs:
        by_config.setdefault(result["config"], []).append(result)

    def order(name):
        first = by_config[name][0]
        return (first["batch"], first["memory"])

    rows = []
    for name in sorted(by_config, key=order):
        group = by_config[name]
        row = {"config": name, "batch": group[0]["batch"], "memory": group[0]["memory"], "seeds": len(group)}
        row["steps"] = group[0]["steps"]
        for metric in [f"recall_at_{k}" for k in K_VALUES] + ["mean_average_precision_at_r"]:
            row[metric] = mean_std([100 * g["accuracy"][metric] for g in group])
        row["seconds_per_epoch"] = mean_std([g["seconds_per_epoch"] for g in group])
        rows.append(row)
    return rows


def relative_to_large_batch(rows: list[dict], large: str) -> dict[str, dict]:
    """Per configuration: its R@1 and MAP@R as a fraction of the large batch's and as a difference in points, and
    its training time per epoch as a fraction of the large batch's."""
    by_name = {row["config"]: row for row in rows}
    if large not in by_name:
        return {}
    top = by_name[large]
    return {
        row["config"]: {
            "r1_fraction_of_large_batch": row["recall_at_1"][0] / top["recall_at_1"][0],
            "r1_minus_large_batch": row["recall_at_1"][0] - top["recall_at_1"][0],
            "map_at_r_fraction_of_large_batch": row["mean_average_precision_at_r"][0]
            / top["mean_average_precision_at_r"][0],
            "map_at_r_minus_large_batch": row["mean_average_precision_at_r"][0] - top["mean_average_precision_at_r"][0],
            "time_fraction_of_large_batch": row["seconds_per_epoch"][0] / top["seconds_per_epoch"][0],
        }
        for row in rows
    }


def markdown(rows: list[dict], relative: dict, runs: list[dict]) -> str:
    first = runs[0]
    lines = [
        "# RS@k: cross-batch memory vs large batch",
        "",
        "Made with:",
        "",
        "```bash",
        *[f"OMP_NUM_THREADS=1 nice -n 10 {command}" for command in dict.fromkeys(r["command"] for r in runs)],
        "python benchmarks/memory_vs_batch.py report",
        "```",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs; 1-minute load average "
        f"{min(r['load_average'] for r in runs):.1f}–{max(r['load_average'] for r in runs):.1f} at the end of the "
        f"runs), torch {torch.__version__}, 1 torch thread, CPU.",
        "",
        f"Data: {first['data']}; train {first['train_images']} images of {first['train_classes']} classes, test "
        f"{first['test_images']} images of {first['test_classes']} classes (disjoint). Every run: SmallConvNet, "
        f"Adam, MPerClassSampler m = 4, {first['epochs']} epochs (one epoch = one pass over the training images), "
        "RS@k with its defaults, tested once at the end (leave-one-out on the test split).",
        "",
        "Test split, in %: mean ± sample std over the seeds (the same seed gives every configuration the same initial "
        "network). Time: training only, per epoch. Δ: points above (+) or below (−) the largest batch.",
        "",
        "| configuration | batch | memory | steps | R@1 | R@2 | R@4 | R@8 | R@16 | MAP@R | s / epoch | Δ R@1 vs large "
        "batch | Δ MAP@R vs large batch | time vs large batch | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        rel = relative.get(row["config"], {})
        cells = [f"{row[m][0]:.2f} ± {row[m][1]:.2f}" for m in ("recall_at_1", "recall_at_2", "recall_at_4")]
        cells += [f"{row[m][0]:.2f} ± {row[m][1]:.2f}" for m in ("recall_at_8", "recall_at_16")]
        cells.append(f"{row['mean_average_precision_at_r'][0]:.2f} ± {row['mean_average_precision_at_r'][1]:.2f}")
        lines.append(
            f"| {row['config']} | {row['batch'] or '–'} | {row['memory'] or '–'} | {row['steps']} | "
            + " | ".join(cells)
            + f" | {row['seconds_per_epoch'][0]:.1f} ± {row['seconds_per_epoch'][1]:.1f}"
            + f" | {rel.get('r1_minus_large_batch', math.nan):+.2f}"
            + f" | {rel.get('map_at_r_minus_large_batch', math.nan):+.2f}"
            + f" | {rel.get('time_fraction_of_large_batch', math.nan):.2f}× | {row['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        (x, x_err), (y, y_err) = row["seconds_per_epoch"], row["recall_at_1"]
        largest = row["batch"] == max(r["batch"] for r in rows)
        marker = "x" if not row["batch"] else "s" if row["memory"] else "D" if largest else "o"
        axis.errorbar(x, y, xerr=x_err, yerr=y_err, fmt=marker, capsize=3, label=row["config"])
    axis.set_xlabel("training time per epoch (s, CPU)")
    axis.set_ylabel("test Recall@1 (%)")
    axis.set_title("RS@k: cross-batch memory vs large batch (mean ± std over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(args, quiet: bool = False) -> None:
    runs = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*/seed_*.json"))]
    if not runs:
        raise SystemExit(f"no finished runs under {args.out / 'runs'}; run `python {sys.argv[0]} run` first")
    rows = summarise(runs)
    large = f"batch_{max(r['batch'] for r in runs)}"
    relative = relative_to_large_batch(rows, large)
    harness.write_results(args.out / "results", {"rows": rows, "relative": relative}, markdown(rows, relative, runs))
    plot(rows, args.out / "recall_vs_time.png")
    if not quiet:
        print((args.out / "results.md").read_text())


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python benchmarks/memory_vs_batch.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--dataset", choices=("han", "glyphs"), default="han")
    parser.add_argument("--font-dir", default="", help="HanGlyphs font_dir / Glyphs font folder ('' = default)")
    parser.add_argument("--cache-dir", default="", help="HanGlyphs cache_dir ('' = default)")
    parser.add_argument("--images-per-class", type=int, default=8, help="HanGlyphs images_per_class")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--large-batch", type=int, default=4096)
    parser.add_argument("--memories", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--configs", nargs="*", default=[], help="only these configurations (default: all)")
    parser.add_argument("--m", type=int, default=4, help="samples per class in a batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=8, help="SmallConvNet width")
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()

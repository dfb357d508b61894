"""Time and peak memory of Recall@{1,10,100,1000} on SOP-sized synthetic embeddings, against PML's calculator.

Every configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own; "extra"
is that peak minus the resident memory just before ``get_accuracy`` is called (Python, torch, faiss and the
embeddings already loaded). One timed call per configuration (a full SOP evaluation is a minute of CPU); ratios
are taken against PML's faiss path (pml_max_bin_count) in the same run, or the first configuration without it.

    python benchmarks/eval_speed.py                                   # SOP size, then a 10,000-item set
    python benchmarks/eval_speed.py --sizes 3000:560 --out /tmp/eval  # smoke test
    python benchmarks/eval_speed.py --device cuda --sizes 60502:11316 136093:2452 \
        --configs pml_customknn ours_torch ours_torch_with_pml --out benchmarks/results/eval_speed_cuda

Data: L2-normalised class centre + Gaussian noise, 512-d, SOP-like class sizes (2 to 12 per class, 11,316
classes for 60,502 items; up to 3 × the mean size for larger classes, as iNaturalist's 2,452 classes for
136,093 items), leave-one-out evaluation (every item queries all the others), as on SOP.

Configurations:
    pml_default          PML AccuracyCalculator(include=(precision_at_1, MAP@R)) with its defaults: FaissKNN
                         and k=None, i.e. every query ranks the whole set (N × N results). Skipped when the
                         estimated memory exceeds --max-gb.
    pml_max_bin_count    the same with k="max_bin_count", PML's documented fix for large sets (issues #353, #566)
    ours_faiss           RecallAtKAccuracyCalculator(recall_at_{1,10,100,1000}), ChunkedKNN(backend="faiss")
    ours_torch           the same with ChunkedKNN(backend="torch"): no faiss needed
    ours_torch_with_pml  ours_torch also computing precision_at_1 and MAP@R (PML's metrics, PML's values)
    ours_pml_faissknn    ours with PML's FaissKNN() as knn_func: the whole (N, 1001) search at once
    pml_customknn        PML with k="max_bin_count" and its faiss-free CustomKNN(CosineSimilarity(),
                         batch_size=4096): PML's way without faiss, and the baseline on a GPU
With --device cuda, embeddings are on the GPU before the timed call, and the GPU's peak allocated memory is
reported too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pml_recallk.benchmark import harness
from pml_recallk.benchmark.harness import cpu_seconds, current_rss_mb, peak_rss_mb

K_VALUES = (1, 10, 100, 1000)
CONFIGS = (
    "pml_default",
    "pml_max_bin_count",
    "pml_customknn",
    "ours_faiss",
    "ours_torch",
    "ours_torch_with_pml",
    "ours_pml_faissknn",
)
BASELINE = "pml_max_bin_count"
PML_METRICS = ("precision_at_1", "mean_average_precision_at_r")


def sop_like_labels(num_items: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class sizes from 2 to 12 (SOP's range; up to 3 × the mean for larger classes) summing to num_items,
    in a shuffled order."""
    largest = max(12, 3 * -(-num_items // num_classes))
    if not 2 * num_classes <= num_items <= largest * num_classes:
        raise ValueError(f"need 2 to {largest} items per class")
    sizes = np.full(num_classes, 2)
    extra = num_items - sizes.sum()
    while extra > 0:  # spread the rest at random, never above the largest size
        room = np.flatnonzero(sizes < largest)
        picked = rng.choice(room, size=min(extra, len(room)), replace=False)
        sizes[picked] += 1
        extra -= len(picked)
    labels = np.repeat(np.arange(num_classes), sizes)
    return labels[rng.permutation(num_items)]


def make_data(num_items: int, num_classes: int, dim: int, seed: int, folder: Path) -> None:
    rng = np.random.default_rng(seed)
    labels = sop_like_labels(num_items, num_classes, rng)
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    embeddings = centres[labels]
    embeddings += 2.25 * rng.standard_normal((num_items, dim), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.save(folder / "embeddings.npy", embeddings)
    np.save(folder / "labels.npy", labels)


def estimated_pml_default_gb(num_items: int) -> float:
    # FaissKNN's (N, N) float32 + int64 results, the copies made removing the query, the (N, N) float32
    # labels, and MAP@R's float64 (N, N) intermediates: about 40 bytes per (query, neighbour) pair.
    return num_items * (num_items - 1) * 40 / 2**30


def build_calculator(config: str, device: str = "cpu"):
    # torch, PML and faiss are imported by the workers only: the parent process spawns them and writes the tables,
    # and its own memory is never measured.
    import torch
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN, FaissKNN

    from pml_recallk import RecallAtKAccuracyCalculator
    from pml_recallk.evaluation import ChunkedKNN

    recall = tuple(f"recall_at_{k}" for k in K_VALUES)
    if config == "pml_default":
        return AccuracyCalculator(include=PML_METRICS, device=torch.device(device))
    if config == "pml_max_bin_count":
        return AccuracyCalculator(include=PML_METRICS, k="max_bin_count", device=torch.device(device))
    if config == "pml_customknn":
        knn = CustomKNN(CosineSimilarity(), batch_size=4096)
        return AccuracyCalculator(include=PML_METRICS, k="max_bin_count", knn_func=knn, device=torch.device(device))
    if config == "ours_faiss":
        knn, include = ChunkedKNN(backend="faiss"), recall
    elif config == "ours_torch":
        knn, include = ChunkedKNN(backend="torch"), recall
    elif config == "ours_torch_with_pml":
        knn, include = ChunkedKNN(backend="torch"), recall + PML_METRICS
    elif config == "ours_pml_faissknn":
        knn, include = FaissKNN(), recall
    else:
        raise ValueError(f"unknown configuration {config!r}")
    return RecallAtKAccuracyCalculator(K_VALUES, include=include, knn_func=knn, device=torch.device(device))


def worker(config: str, data_folder: Path, device: str = "cpu") -> dict:
    import torch
    from pytorch_metric_learning.utils import inference  # noqa: F401  (imports faiss)

    embeddings = np.load(data_folder / "embeddings.npy")
    labels = np.load(data_folder / "labels.npy")
    num_classes = len(np.unique(labels))
    calculator = build_calculator(config, device)
    gpu = device.startswith("cuda")
    if gpu:  # a tester's embeddings are already on the device
        embeddings = torch.from_numpy(embeddings).to(device)
        labels = torch.from_numpy(labels).to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    rss_before = current_rss_mb()
    cpu_start, start = cpu_seconds(), time.perf_counter()
    accuracies = calculator.get_accuracy(embeddings, labels)
    if gpu:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    gpu_memory = {}
    if gpu:
        gpu_memory = {
            "gpu": torch.cuda.get_device_name(),
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20,
            "gpu_extra_mb": (torch.cuda.max_memory_allocated() - gpu_before) / 2**20,
        }
    return {
        **gpu_memory,
        "config": config,
        "num_items": len(labels),
        "num_classes": num_classes,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "extra_mb": peak_rss_mb() - rss_before,
        "accuracies": accuracies,
    }


def run_config(config: str, data_folder: Path, max_gb: float, num_items: int, device: str = "cpu") -> dict:
    if config == "pml_default" and estimated_pml_default_gb(num_items) > max_gb:
        return {
            "config": config,
            "num_items": num_items,
            "skipped": f"not run: needs about {estimated_pml_default_gb(num_items):.0f} GB (> --max-gb {max_gb:g})",
        }
    try:
        return harness.run_worker(__file__, ["--worker", config, "--data", data_folder, "--device", device])
    except harness.WorkerFailed as failure:
        return {
            "config": config,
            "num_items": num_items,
            "skipped": "failed: " + " ".join(failure.stderr.split()[-40:]),
        }


def describe_machine(rows: list[dict]) -> str:
    import pytorch_metric_learning
    import torch

    try:
        import faiss

        faiss_version = f"faiss-cpu {faiss.__version__}"
    except ImportError:
        faiss_version = "no faiss"

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {faiss_version}, "
        f"pytorch-metric-learning {pytorch_metric_learning.__version__}, Python {platform.python_version()}"
        + "".join(sorted({f", GPU {row['gpu']}" for row in rows if "gpu" in row}))
    )


def format_accuracies(row: dict) -> str:
    accuracies = row.get("accuracies", {})
    short = {"precision_at_1": "P@1", "mean_average_precision_at_r": "MAP@R"}
    names = [f"recall_at_{k}" for k in K_VALUES] + list(PML_METRICS)
    parts = [f"{short.get(n, n.replace('recall_at_', 'R@'))} {accuracies[n]:.4f}" for n in names if n in accuracies]
    return ", ".join(parts)


CSV_COLUMNS = (
    "seconds",
    "time_vs_baseline",
    "cpu_seconds",
    "cpu_vs_baseline",
    "peak_rss_mb",
    "extra_mb",
    "gpu_peak_mb",
    "gpu_extra_mb",
)


def write_results(rows: list[dict], command: str, out: Path, baseline: str = BASELINE) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["num_items", "config", *CSV_COLUMNS, "note"])
        for row in rows:
            writer.writerow(
                [row["num_items"], row["config"]] + [row.get(key, "") for key in CSV_COLUMNS] + [row.get("skipped", "")]
            )
    gpu = any("gpu_peak_mb" in row for row in rows)
    lines = [
        "# Evaluation speed and memory: Recall@{1,10,100,1000} vs PML's AccuracyCalculator",
        "",
        "Command (from the repository root):",
        "",
        f"    {command}",
        "",
        f"Machine: {describe_machine(rows)}.",
        "",
        "Leave-one-out on synthetic L2-normalised 512-d embeddings with SOP-like classes (2 to 12 items; up to",
        "3 × the mean size when the mean is larger, as for the 136,093-item iNaturalist-sized set). One",
        "fresh process per row and one `get_accuracy` call; wall is its elapsed time, CPU its user + system time",
        f"over all threads (steadier than wall on a shared machine); ratios are against `{baseline}` at the",
        "same size. Peak is the process's maximum resident memory (ru_maxrss, including about 0.6 GB of Python,",
        "torch, faiss and the embeddings); extra is the peak minus the resident memory just before the call."
        + (
            " GPU: peak memory allocated by torch during the call, and that peak minus the memory held before it."
            if gpu
            else ""
        ),
        "See the script's docstring for each configuration.",
        "",
        "| items | configuration | wall (s) | wall / base | CPU (s) | CPU / base | peak RSS (MB) | extra (MB) | "
        + ("GPU peak (MB) | GPU extra (MB) | " if gpu else "")
        + "values |",
        "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else "") + "---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(
                f"| {row['num_items']:,} | {row['config']} |" + " |" * (8 if gpu else 6) + f" {row['skipped']} |"
            )
            continue
        wall_ratio = f"{row['time_vs_baseline']:.2f}" if "time_vs_baseline" in row else ""
        cpu_ratio = f"{row['cpu_vs_baseline']:.2f}" if "cpu_vs_baseline" in row else ""
        gpu_cells = f"{row.get('gpu_peak_mb', 0):.0f} | {row.get('gpu_extra_mb', 0):.0f} | " if gpu else ""
        lines.append(
            f"| {row['num_items']:,} | {row['config']} | {row['seconds']:.1f} | {wall_ratio} | "
            f"{row['cpu_seconds']:.1f} | {cpu_ratio} | {row['peak_rss_mb']:.0f} | {row['extra_mb']:.0f} | "
            f"{gpu_cells}{format_accuracies(row)} |"
        )
    harness.write_results(out, {"command": command, "rows": rows}, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["60502:11316", "10000:1870"], help="items:classes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip pml_default above this estimate")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_speed"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        harness.print_worker_result(worker(args.worker, args.data, args.device))
        return

    command = "python benchmarks/eval_speed.py " + " ".join(sys.argv[1:])
    rows = []
    for size in args.sizes:
        num_items, num_classes = (int(x) for x in size.split(":"))
        with tempfile.TemporaryDirectory() as folder:
            make_data(num_items, num_classes, args.dim, args.seed, Path(folder))
            size_rows = [run_config(c, Path(folder), args.max_gb, num_items, args.device) for c in args.configs]
        baseline_name = BASELINE if BASELINE in args.configs else args.configs[0]
        baseline = next((r for r in size_rows if r["config"] == baseline_name and "seconds" in r), None)
        for row in size_rows:
            if "seconds" in row and baseline is not None:
                row["time_vs_baseline"] = row["seconds"] / baseline["seconds"]
                row["cpu_vs_baseline"] = row["cpu_seconds"] / baseline["cpu_seconds"]
            print(json.dumps({k: v for k, v in row.items() if k != "accuracies"}), flush=True)
        rows += size_rows
    write_results(rows, command.strip(), args.out, baseline_name)


if __name__ == "__main__":
    main()

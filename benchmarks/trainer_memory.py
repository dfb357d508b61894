"""Peak memory and time per image of one training step: MemoryEfficientTrainer vs PML's MetricLossOnly.

A small CNN (``pml_recallk.models.SmallConvNet``, 3 × 64 × 64 images, BatchNorm frozen in both trainers),
``RecallKSurrogateLoss``, Adam, batches of B = B/4 classes × 4 drawn by PML's ``MPerClassSampler`` from the same
in-memory dataset of ``--dataset-size`` images for every B. Every (trainer, B) runs in a fresh process: build
everything, take one warm-up step, then ``repeats`` steps (``trainer.forward_and_backward()``: batch collation,
forward, loss, backward, optimizer step).

Memory: the process's peak resident set size during the steps (sampled every millisecond), and its increase
over the resident size just before the first step (model, optimizer, dataset and trainer built): the step's
memory. That includes the collated batch, B × 3 × 64² floats (a plain trainer needs it too), which
``step − batch`` removes.

Time: the CPU time of the main thread with one torch thread (``time.thread_time``), because wall time on a
machine shared with other jobs varies by ±50 % from step to step; wall time is reported as well. The CPU time of
a no-grad forward of the batch is measured too: a plain step plus that forward is the ideal gradient-cached step.

Plain steps at a batch B run only while the memory they need, extrapolated linearly from the smaller batches,
fits in half the memory available (the machine is shared).

Usage::

    python benchmarks/trainer_memory.py                       # B in {256, 1024, 4000}, chunk 128
    python benchmarks/trainer_memory.py --batch-sizes 64 128 --repeats 1 --out /tmp/tm   # quick check
    python benchmarks/trainer_memory.py --report-from benchmarks/results/trainer_memory.json  # redraw
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from pml_recallk.benchmark import harness
from pml_recallk.benchmark.harness import MIB, PeakResidentMemory, timed

RESULTS = Path(__file__).parent / "results" / "trainer_memory"
SAMPLES_PER_CLASS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4000])
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="SmallConvNet width (channels of the first block)")
    parser.add_argument("--dataset-size", type=int, default=None, help="images in the dataset (default: largest B)")
    parser.add_argument("--repeats", type=int, default=2, help="measured steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="writes <out>.md, <out>.png, <out>.json")
    parser.add_argument("--report-from", type=Path, help="rebuild <out>.md and .png from this JSON of a previous run")
    parser.add_argument("--worker", choices=("plain", "cached"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dataset_size = args.dataset_size or max(args.batch_sizes)
    if any(b % SAMPLES_PER_CLASS or b > args.dataset_size for b in args.batch_sizes):
        parser.error(f"batch sizes must be multiples of {SAMPLES_PER_CLASS} and at most --dataset-size")
    return args


def worker(args: argparse.Namespace) -> dict:
    """One (trainer, batch) configuration, in this process; returns its measurements."""
    import numpy as np
    import torch
    from pytorch_metric_learning.samplers import MPerClassSampler
    from pytorch_metric_learning.trainers import MetricLossOnly

    from pml_recallk import MemoryEfficientTrainer, RecallKSurrogateLoss
    from pml_recallk.models import SmallConvNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, num_classes = args.batch, args.dataset_size // SAMPLES_PER_CLASS
    # Classes as noisy copies of a random prototype, built in place (no transient copy of the dataset).
    shape = (3, args.image_size, args.image_size)
    images = torch.randn(num_classes, SAMPLES_PER_CLASS, *shape)
    images.add_(torch.randn(num_classes, 1, *shape))
    labels = torch.arange(num_classes).repeat_interleave(SAMPLES_PER_CLASS)
    dataset = torch.utils.data.TensorDataset(images.flatten(0, 1), labels)
    model = SmallConvNet(embedding_size=128, in_channels=3, width=args.width)
    common = dict(
        models={"trunk": model},
        optimizers={"trunk_optimizer": torch.optim.Adam(model.parameters(), lr=1e-4)},
        batch_size=batch,
        loss_funcs={"metric_loss": RecallKSurrogateLoss()},
        dataset=dataset,
        sampler=MPerClassSampler(labels.numpy(), m=SAMPLES_PER_CLASS, batch_size=batch, length_before_new_iter=batch),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
    )
    if args.worker == "plain":
        trainer = MetricLossOnly(**common, freeze_trunk_batchnorm=True)
    else:
        trainer = MemoryEfficientTrainer(**common, chunk_size=args.chunk, batchnorm="freeze")
    trainer.initialize_dataloader()
    trainer.set_to_train()
    trainer.epoch, trainer.iteration = 1, 0

    with PeakResidentMemory() as memory:
        steps = [timed(trainer.forward_and_backward) for _ in range(1 + args.repeats)][1:]
    assert np.isfinite(float(trainer.losses["total_loss"]))
    # The ideal gradient cache adds one forward of the batch without grad to a plain step.
    chunks = dataset.tensors[0][:batch].split(args.chunk if args.worker == "cached" else batch)
    with torch.no_grad():
        forwards = [timed(lambda: [model(c) for c in chunks]) for _ in range(args.repeats)]
    return {
        "trainer": args.worker,
        "batch": batch,
        "chunk": args.chunk if args.worker == "cached" else None,
        "peak_rss_mib": memory.peak / MIB,
        "rss_before_step_mib": memory.before / MIB,
        "step_memory_mib": (memory.peak - memory.before) / MIB,
        "batch_tensor_mib": batch * images[0, 0].numel() * images.element_size() / MIB,
        "cpu_ms_per_image": 1000 * statistics.median(cpu for cpu, _ in steps) / batch,
        "wall_ms_per_image": 1000 * statistics.median(wall for _, wall in steps) / batch,
        "forward_cpu_ms_per_image": 1000 * statistics.median(cpu for cpu, _ in forwards) / batch,
        "loss": float(trainer.losses["total_loss"]),
    }


def run_configuration(trainer: str, batch: int, args: argparse.Namespace) -> dict:
    worker_args = ["--worker", trainer, "--batch", batch, "--chunk", args.chunk, "--image-size", args.image_size]
    worker_args += ["--width", args.width, "--repeats", args.repeats, "--threads", args.threads]
    worker_args += ["--dataset-size", args.dataset_size, "--batch-sizes", *args.batch_sizes]
    try:
        return harness.run_worker(__file__, worker_args)
    except harness.WorkerFailed as failure:
        raise RuntimeError(f"{failure}\n{failure.stderr[-3000:]}") from None


def fits(batch: int, measured: list[dict]) -> bool:
    """Whether a plain step at `batch` should fit in half the available memory (linear extrapolation)."""
    import psutil

    if len(measured) < 2:
        return True
    (b0, m0), (b1, m1) = [(r["batch"], r["step_memory_mib"]) for r in measured[-2:]]
    estimate = m1 + (m1 - m0) / (b1 - b0) * (batch - b1)
    return estimate * MIB < psutil.virtual_memory().available / 2


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        harness.print_worker_result(worker(args))
        return
    if args.report_from:
        run = json.loads(args.report_from.read_text())
        args.out.with_suffix(".md").write_text(markdown(run["command"], run["results"], run["skipped"], args))
        plot(run["results"], args)
        return
    command = " ".join(["python benchmarks/trainer_memory.py", *(argv if argv is not None else sys.argv[1:])])
    results, skipped = [], []
    for trainer in ("plain", "cached"):
        for batch in sorted(args.batch_sizes):
            if trainer == "plain" and not fits(batch, [r for r in results if r["trainer"] == "plain"]):
                skipped.append(batch)
                continue
            results.append(run_configuration(trainer, batch, args))
            print(json.dumps(results[-1]), flush=True)
    payload = {"command": command, "results": results, "skipped": skipped}
    harness.write_results(args.out, payload, markdown(command, results, skipped, args))
    plot(results, args)


def markdown(command: str, results: list[dict], skipped: list[int], args: argparse.Namespace) -> str:
    by = {(r["trainer"], r["batch"]): r for r in results}
    lines = [
        "# MemoryEfficientTrainer vs MetricLossOnly: memory and time of one training step",
        "",
        f"Command: `{command}`",
        "",
        f"SmallConvNet (width {args.width}, 128-d) on 3×{args.image_size}×{args.image_size} random images "
        f"(noisy copies of one prototype per class; the same {args.dataset_size}-image dataset for every B), "
        f"RecallKSurrogateLoss, Adam, BatchNorm frozen, {SAMPLES_PER_CLASS} images per class, chunk {args.chunk}, "
        f"{args.threads} torch thread(s), median of {args.repeats} steps after a warm-up, one fresh process per "
        "row, on a CPU shared with other jobs. Peak RSS: the whole process (Python, torch, model, dataset). "
        "Step memory: peak RSS minus the RSS just before the first step; `step − batch` also subtracts the "
        "collated batch tensor, which both trainers hold. Time: CPU time of the main thread (wall time in "
        "brackets: it varies with the other jobs). At random initialisation every query's positives rank far "
        "below k = 16, so the loss is ≈ 1; the cost of a step does not depend on its value.",
        "",
        "On this CPU a forward pass costs less per image in chunks (the `forward` column of the cached rows) than "
        "over the whole batch (plain rows), presumably because a chunk's working set is smaller (caches, fewer "
        "fresh pages to fault in); this is why the cached step can be as fast as the plain one here although it "
        "runs one more forward. On an H100 with ResNet-50 at 224 px, `benchmarks/gpu_trainer_check.py` measured "
        "×1.25–1.27 and a peak at B = 4000 of 1.01× that at B = 256 (`benchmarks/results/gpu/README.md`).",
        "",
        "| trainer | B | peak RSS (MiB) | step memory (MiB) | step − batch (MiB) | ms / image (wall) "
        "| forward ms / image | loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['trainer']} | {r['batch']} | {r['peak_rss_mib']:.0f} | {r['step_memory_mib']:.0f} | "
            f"{r['step_memory_mib'] - r['batch_tensor_mib']:.0f} | {r['cpu_ms_per_image']:.2f} "
            f"({r['wall_ms_per_image']:.2f}) | {r['forward_cpu_ms_per_image']:.2f} | {r['loss']:.4f} |"
        )
    if skipped:
        lines += ["", f"Plain steps not run (extrapolated memory above half the available): B = {skipped}."]
    lines += ["", "## Against the goals", ""]
    big, small = by.get(("cached", max(args.batch_sizes))), by.get(("cached", min(args.batch_sizes)))
    if big and small:
        lines.append(
            f"- Cached, B = {big['batch']} vs B = {small['batch']}: peak RSS ×{ratio(big, small, 'peak_rss_mib')} "
            f"(goal ≤ 1.3); step memory ×{ratio(big, small, 'step_memory_mib')}, without the batch tensor "
            f"×{ratio(big, small, 'step_memory_mib', 'batch_tensor_mib')}."
        )
    for batch in sorted(args.batch_sizes):
        plain, cached = by.get(("plain", batch)), by.get(("cached", batch))
        if plain and cached:
            ideal = 1 + cached["forward_cpu_ms_per_image"] / plain["cpu_ms_per_image"]
            lines.append(
                f"- B = {batch}: time per image cached / plain ×{ratio(cached, plain, 'cpu_ms_per_image')} "
                f"(goal ≤ 1.4; one more forward would be ×{ideal:.2f}); peak RSS cached / plain "
                f"×{ratio(cached, plain, 'peak_rss_mib')}, step memory ×{ratio(cached, plain, 'step_memory_mib')}."
            )
    return "\n".join(lines) + "\n"


def ratio(a: dict, b: dict, key: str, minus: str | None = None) -> str:
    def value(r: dict) -> float:
        return r[key] - (r[minus] if minus else 0.0)

    return f"{value(a) / value(b):.2f}"


def plot(results: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for trainer, label in (("plain", "MetricLossOnly"), ("cached", f"MemoryEfficientTrainer (chunk {args.chunk})")):
        rows = [r for r in results if r["trainer"] == trainer]
        batches = [r["batch"] for r in rows]
        color = "tab:blue" if trainer == "plain" else "tab:orange"
        memory.plot(batches, [r["peak_rss_mib"] for r in rows], "o-", color=color, label=f"{label}: peak RSS")
        memory.plot(batches, [r["step_memory_mib"] for r in rows], "o--", color=color, label=f"{label}: step memory")
        speed.plot(batches, [r["cpu_ms_per_image"] for r in rows], "o-", color=color, label=label)
    for axes, ylabel in ((memory, "MiB"), (speed, "CPU ms per image (one thread)")):
        axes.set_xscale("log")
        axes.minorticks_off()
        axes.set_xticks(sorted(args.batch_sizes), [str(b) for b in sorted(args.batch_sizes)])
        axes.set_xlabel("batch size B")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"One training step, SmallConvNet on {args.image_size} px images, CPU")
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()

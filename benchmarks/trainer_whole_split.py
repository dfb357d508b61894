"""One MemoryEfficientTrainer epoch with the whole training split as a single batch, against batches of 1,024.

Data: the training split of ``HanGlyphs`` (32 px, 8 images per class: 1,750 classes, 14,000 images with the
Debian fonts) when its fonts are installed (``bash benchmarks/fetch_han_fonts.sh DIR``), else (``--data random``,
or when they are missing) random grayscale images of the same count and size, classes as noisy copies of a
prototype. Model: ``SmallConvNet(embedding_size=128, in_channels=1)`` with BatchNorm frozen, Adam,
``RecallKSurrogateLoss()`` (default temperatures; ``path="auto"``, i.e. dense, at B = 1,024), chunks of
``--chunk`` images in the gradient cache.

Configurations, each in a fresh process (peak memory is its own):

    batch_1024      batches of 1,024 (128 classes × 8, MPerClassSampler), one epoch = ⌊N / 1,024⌋ steps
    whole_tiled     one step whose batch is the whole split (RS@k on the tiled path)
    whole_dense     the same step with ``path="dense"`` (the N×N similarities and their gradient held whole)

Measured: the epoch's CPU time of the main thread with one torch thread (``time.thread_time``; the machine is
shared, wall time is reported too), and the peak resident memory during the epoch minus the resident memory
before it (dataset, model and trainer built), sampled every millisecond.

    python benchmarks/trainer_whole_split.py --threads 1 --font-dir DIR   # writes benchmarks/results/...
    python benchmarks/trainer_whole_split.py --data random --classes 64   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from pml_recallk.benchmark import harness
from pml_recallk.benchmark.harness import MIB, PeakResidentMemory, timed

RESULTS = Path(__file__).parent / "results" / "trainer_whole_split"
CONFIGURATIONS = ("batch_1024", "whole_tiled", "whole_dense")
IMAGES_PER_CLASS, IMAGE_SIZE = 8, 32


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("auto", "han", "random"), default="auto")
    parser.add_argument("--classes", type=int, default=1750, help="random data: number of classes")
    parser.add_argument("--font-dir", help="HanGlyphs' font folder (default: its own default)")
    parser.add_argument("--cache-dir", help="HanGlyphs' render cache (default: its own default)")
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=list(CONFIGURATIONS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def load_split(args):
    """(images (N, 1, 32, 32) float, labels (N,) int64, description)."""
    import numpy as np
    import torch

    if args.data in ("auto", "han"):
        try:
            from pml_recallk.datasets import HanGlyphs

            train = HanGlyphs(
                "train",
                font_dir=args.font_dir,
                cache_dir=args.cache_dir,
                image_size=IMAGE_SIZE,
                images_per_class=IMAGES_PER_CLASS,
            )
            images = torch.from_numpy(np.asarray(train.images)).float().div_(255).unsqueeze(1)
            return images, torch.as_tensor(train.labels), f"HanGlyphs train split ({train.num_classes} classes)"
        except (OSError, ValueError, ImportError) as error:
            if args.data == "han":
                raise
            print(f"HanGlyphs unavailable ({str(error)[:120]}); random images instead", file=sys.stderr)
    generator = torch.Generator().manual_seed(0)
    shape = (args.classes, 1, 1, IMAGE_SIZE, IMAGE_SIZE)
    images = torch.rand(shape, generator=generator).repeat(1, IMAGES_PER_CLASS, 1, 1, 1)
    images.add_(0.3 * torch.randn(images.shape, generator=generator)).clamp_(0, 1)
    labels = torch.arange(args.classes).repeat_interleave(IMAGES_PER_CLASS)
    return images.flatten(0, 1), labels, f"random images ({args.classes} classes × {IMAGES_PER_CLASS}, HanGlyphs' size)"


def worker(args) -> dict:
    import torch
    from pytorch_metric_learning.samplers import MPerClassSampler

    from pml_recallk import MemoryEfficientTrainer, RecallKSurrogateLoss
    from pml_recallk.models import SmallConvNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # The split is built once by the parent process (HanGlyphs takes minutes to load) and read here.
    images, labels, description = torch.load(args.data_file)
    dataset = torch.utils.data.TensorDataset(images, labels)
    whole = args.worker != "batch_1024"
    batch = len(dataset) if whole else 1024
    sampler = (
        torch.utils.data.RandomSampler(dataset)
        if whole
        else MPerClassSampler(labels.numpy(), m=IMAGES_PER_CLASS, batch_size=batch, length_before_new_iter=len(labels))
    )
    model = SmallConvNet(embedding_size=128, in_channels=1)
    loss = RecallKSurrogateLoss(
        path={"batch_1024": "auto", "whole_tiled": "tiled", "whole_dense": "dense"}[args.worker]
    )
    trainer = MemoryEfficientTrainer(
        models={"trunk": model},
        optimizers={"trunk_optimizer": torch.optim.Adam(model.parameters(), lr=1e-4)},
        batch_size=batch,
        loss_funcs={"metric_loss": loss},
        dataset=dataset,
        sampler=sampler,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        chunk_size=args.chunk,
    )
    steps = []
    trainer.end_of_iteration_hook = lambda t: steps.append(float(t.losses["total_loss"]))
    with PeakResidentMemory() as memory:
        cpu, wall = timed(lambda: trainer.train(num_epochs=1))
    return {
        "configuration": args.worker,
        "data": description,
        "images": len(dataset),
        "batch": batch,
        "steps": len(steps),
        "loss_path": loss.resolve_path(batch, batch),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "epoch_memory_mib": (memory.peak - memory.before) / MIB,
        "peak_rss_mib": memory.peak / MIB,
        "losses": steps,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        harness.print_worker_result(worker(args))
        return
    import tempfile

    import torch

    data_file = Path(tempfile.mkdtemp()) / "split.pt"
    torch.save(load_split(args), data_file)
    rows = []
    for name in args.configurations:
        worker_args = ["--worker", name, "--data-file", data_file, "--chunk", args.chunk, "--threads", args.threads]
        try:
            rows.append(harness.run_worker(__file__, worker_args))
        except harness.WorkerFailed as failure:
            rows.append({"configuration": name, "note": failure.note})
        print(json.dumps(rows[-1]), flush=True)
    data_file.unlink()
    write_report(rows, args, " ".join(["python", *sys.argv]))


def write_report(rows, args, command) -> None:
    measured = [r for r in rows if "note" not in r]
    data = measured[0]["data"] if measured else "?"
    lines = [
        "# One MemoryEfficientTrainer epoch: the whole training split as one batch vs batches of 1,024",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {data}, 32 px grayscale. SmallConvNet (128-d), BatchNorm frozen, Adam, RecallKSurrogateLoss, "
        f"gradient-cache chunks of {args.chunk}. Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"{args.threads} torch thread(s), load average at the end {os.getloadavg()[0]:.1f}. CPU time: the main "
        "thread's (`time.thread_time`); memory: peak resident during the epoch minus resident before it.",
        "",
        "| configuration | images | batch | steps | RS@k path | CPU s | wall s | epoch memory MiB | CPU / batch_1024 "
        "| memory / batch_1024 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r for r in measured if r["configuration"] == "batch_1024"), None)
    for r in measured:
        cpu_ratio = f"{r['cpu_seconds'] / base['cpu_seconds']:.2f}×" if base else "—"
        mem_ratio = f"{r['epoch_memory_mib'] / base['epoch_memory_mib']:.2f}×" if base else "—"
        lines.append(
            f"| {r['configuration']} | {r['images']} | {r['batch']} | {r['steps']} | {r['loss_path']} "
            f"| {r['cpu_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['epoch_memory_mib']:.0f} | {cpu_ratio} "
            f"| {mem_ratio} |"
        )
    for r in rows:
        if "note" in r:
            lines.append(f"\n{r['configuration']}: not measured ({r['note']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    harness.write_results(args.out, {"command": command, "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

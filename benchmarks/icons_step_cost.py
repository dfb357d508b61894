"""The CPU cost of the icon study's pieces: one training step of the fine-tuned MobileNetV2 at a batch (through the
gradient cache above 256, as the sweeps do), the loss alone at a batch, and the embedding of images for evaluation.

    OMP_NUM_THREADS=1 python benchmarks/icons_step_cost.py --weights benchmarks/.cache/mobilenet_v2_nsfwjs.pth \\
        --batches 256 1024 --loss-batches 256 1024 4096

``--layouts default channels_last`` times each training step and the embedding in both memory layouts
(``train.channels_last``) and prints the ratio to the first.

Process time (``time.process_time``, one torch thread), which on a shared machine is closer to what the step costs
on an idle core than its wall time is; the wall time is printed beside it with the load average. Inputs are random
64-px RGB batches (the cost does not depend on the pixels; with the data loader's PNG decoding and augmentation on
top, the runs' steps cost more: docs/icons_benchmark.md compares).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from functools import partial

import torch

from pml_recallk import RecallKSurrogateLoss
from pml_recallk.models import build_model
from pml_recallk.trainers.gradient_cache import cached_backward


def timed(function, repeats: int) -> tuple[float, float]:
    """Median process and wall seconds of ``function()`` over ``repeats`` calls, after one warm-up call."""
    function()
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        function()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return sorted(cpu)[repeats // 2], sorted(wall)[repeats // 2]


def train_step(model, optimizer, loss_fn, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One optimiser step, through the gradient cache in chunks of 256 as the sweeps' larger batches are."""
    model.train()
    optimizer.zero_grad()
    cached_backward(model, images, labels, loss_fn, chunk_size=min(len(images), 256))
    optimizer.step()


def loss_step(loss_fn, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    loss_fn(embeddings, labels).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="benchmarks/.cache/mobilenet_v2_nsfwjs.pth")
    parser.add_argument("--model", default="mobilenet_v2_block13")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--loss-batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", default=["default"], choices=["default", "channels_last"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # --weights "": random weights with BatchNorm trained, as protocol B; else protocol A's frozen statistics
    model = build_model(
        args.model, embedding_size=128, pretrained_path=args.weights or None, freeze_batchnorm=bool(args.weights)
    )
    formats = {"default": torch.preserve_format, "channels_last": torch.channels_last}
    models = {layout: copy.deepcopy(model).to(memory_format=formats[layout]) for layout in args.layouts}
    loss_fn = RecallKSurrogateLoss()
    print(f"torch {torch.__version__}, threads 1, {args.model}, 64 px, load {os.getloadavg()[0]:.1f}")

    first: dict[str, float] = {}  # the first layout's CPU seconds of each measurement, for the ratios

    def report(what: str, layout: str, cpu: float, wall: float, per: str) -> None:
        ratio = "" if layout == args.layouts[0] else f", {first[what] / cpu:.2f}x the {args.layouts[0]} layout's speed"
        first.setdefault(what, cpu)
        print(f"{what} [{layout}]: {cpu:6.2f} s CPU ({wall:6.2f} s wall), {per}{ratio}")

    for batch in args.batches:
        images, labels = torch.randn(batch, 3, 64, 64), torch.arange(batch // 4).repeat_interleave(4)
        for layout, net in models.items():
            optimizer = torch.optim.Adam(net.parameters(), 3e-4)
            cpu, wall = timed(partial(train_step, net, optimizer, loss_fn, images, labels), args.repeats)
            report(f"train step, batch {batch:5d}", layout, cpu, wall, f"{1e3 * cpu / batch:.1f} ms/image")

    for batch in args.loss_batches:
        embeddings = torch.nn.functional.normalize(torch.randn(batch, 128), dim=1).requires_grad_()
        labels = torch.arange(batch // 4).repeat_interleave(4)
        cpu, wall = timed(partial(loss_step, loss_fn, embeddings, labels), args.repeats)
        print(f"RS@k loss + backward alone, batch {batch:5d}: {cpu:6.2f} s CPU ({wall:6.2f} s wall)")

    images = torch.randn(256, 3, 64, 64)
    for layout, net in models.items():
        net.eval()
        with torch.no_grad():
            cpu, wall = timed(lambda net=net: net(images), args.repeats)
        report("embedding for evaluation, 256 images", layout, cpu, wall, f"{1e3 * cpu / 256:.2f} ms/image")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

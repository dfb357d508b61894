"""One very-large-batch step on a GPU: ResNet-50 at B = 4000 through ``cached_backward``.

Reports, for float32 and bfloat16 autocast, the peak GPU memory and images/s of one optimiser step
(cached at B and at a small reference batch, and a plain uncached step at the reference batch), and checks
on the device that ``cached_backward`` gives the plain gradient (small CNN, float64, with dropout replayed
from the CUDA generator). Prints JSON and writes it to ``$OUT/gpu_trainer_check.json`` when ``OUT`` is set.

On an H100 (about 2 minutes)::

    python benchmarks/gpu_trainer_check.py

Smoke test on a CPU::

    python benchmarks/gpu_trainer_check.py --device cpu --batch 16 --chunk 4 --image-size 32

The model is a torchvision ResNet-50 with random weights (``weights=None``; nothing is downloaded), its
fc replaced by Linear(2048, 512) and L2 normalisation, BatchNorm frozen as in the paper. Images are random,
kept in host memory (pinned on CUDA) and moved to the GPU one chunk at a time; labels are B / 4 classes × 4.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import resource
import sys
import time

import torch
import torchvision
from pytorch_metric_learning import losses
from torch import nn

from pml_recallk import cached_backward

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4000, help="images per optimiser step")
    parser.add_argument("--chunk", type=int, default=200, help="images per forward pass")
    parser.add_argument("--reference-batch", type=int, default=256, help="small batch for cached and plain steps")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--samples-per-class", type=int, default=4)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--precisions", default="float32,bfloat16", help=f"comma-separated, of {list(PRECISIONS)}")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration, after one warm-up")
    parser.add_argument("--loss", choices=("recallk", "multi_similarity"), default="recallk")
    parser.add_argument("--skip-equality", action="store_true", help="skip the gradient-equality check")
    parser.add_argument("--out", default=None, help="JSON path (default: $OUT/gpu_trainer_check.json if OUT is set)")
    args = parser.parse_args(argv)
    for name in ("batch", "chunk", "image_size", "samples_per_class", "embedding_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    unknown = set(args.precisions.split(",")) - set(PRECISIONS)
    if unknown:
        parser.error(f"unknown precisions {sorted(unknown)}; choose from {list(PRECISIONS)}")
    return args


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1)


def resnet50_embedder(embedding_size: int, device: torch.device) -> nn.Module:
    trunk = torchvision.models.resnet50(weights=None)
    trunk.fc = nn.Linear(trunk.fc.in_features, embedding_size)
    model = nn.Sequential(trunk, L2Normalize()).to(device)
    return freeze_batchnorm(model)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def make_loss(name: str) -> tuple[str, nn.Module]:
    if name == "recallk":
        try:
            from pml_recallk import RecallKSurrogateLoss
        except ImportError:
            pass
        else:
            return "RecallKSurrogateLoss", RecallKSurrogateLoss()
    return "MultiSimilarityLoss", losses.MultiSimilarityLoss()


@functools.cache
def random_batch(batch: int, image_size: int, samples_per_class: int, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (cached: generating 4000 × 224² × 3 numbers takes seconds) and labels in classes of
    `samples_per_class`."""
    generator = torch.Generator().manual_seed(batch)
    images = torch.empty(batch, 3, image_size, image_size).uniform_(-2, 2, generator=generator)
    num_classes = -(-batch // samples_per_class)
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)[:batch]
    return (images.pin_memory() if pin else images), labels


def cached_step(model, optimizer, scaler, images, labels, loss_fn, chunk, amp) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = cached_backward(model, images, labels, loss_fn, chunk, scaler, amp=amp)
    optimizer_step(optimizer, scaler)
    return loss.item()


def plain_step(model, optimizer, scaler, images, labels, loss_fn, chunk, amp) -> float:
    optimizer.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        embeddings = model(images.to(device, non_blocking=True))
    loss = loss_fn(embeddings.float(), labels)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    optimizer_step(optimizer, scaler)
    return loss.item()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(step, mode, precision, batch, args, model, loss_fn, device) -> dict:
    """One warm-up step, then `args.steps` timed steps; peak memory over the timed steps."""
    amp = PRECISIONS[precision]
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    images, labels = random_batch(batch, args.image_size, args.samples_per_class, device.type == "cuda")
    result = {"mode": mode, "precision": precision, "batch": batch, "chunk": args.chunk if mode == "cached" else None}
    try:
        step(model, optimizer, scaler, images, labels, loss_fn, args.chunk, amp)
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        state = allocated_bytes(device)
        start = time.perf_counter()
        step_losses = [
            step(model, optimizer, scaler, images, labels, loss_fn, args.chunk, amp) for _ in range(args.steps)
        ]
        synchronize(device)
        seconds = (time.perf_counter() - start) / args.steps
    except (torch.OutOfMemoryError, FloatingPointError) as error:
        return {**result, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else allocated_bytes(device)
    return {
        **result,
        "seconds_per_step": round(seconds, 4),
        "images_per_second": round(batch / seconds, 1),
        "peak_memory_gib": round(peak / 2**30, 3),
        "model_and_optimizer_gib": round(state / 2**30, 3),
        "loss": step_losses[-1],
        "memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }


def gradient_equality(device: torch.device) -> dict:
    """cached_backward vs a plain seeded chunked backward on this device: float64, dropout, frozen BN."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, 8),
        L2Normalize(),
    )
    model = freeze_batchnorm(model.to(device=device, dtype=torch.float64))
    reference = copy.deepcopy(model)
    inputs = torch.randn(24, 3, 16, 16, dtype=torch.float64, device=device)
    labels = torch.arange(6, device=device).repeat_interleave(4)
    loss_fn, chunk = losses.MultiSimilarityLoss(), 5

    torch.manual_seed(1)
    loss = cached_backward(model, inputs, labels, loss_fn, chunk)
    cuda_rng_after = torch.cuda.get_rng_state() if device.type == "cuda" else None
    torch.manual_seed(1)
    reference_loss = loss_fn(torch.cat([reference(c) for c in inputs.split(chunk)]), labels)
    reference_loss.backward()
    cuda_rng_matches = cuda_rng_after is None or torch.equal(cuda_rng_after, torch.cuda.get_rng_state())

    max_abs, max_rel = 0.0, 0.0
    for p, q in zip(model.parameters(), reference.parameters()):
        diff = (p.grad - q.grad).abs().max().item()
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(q.grad.abs().max().item(), 1e-30))
    return {
        "dtype": "float64",
        "chunk": chunk,
        "batch": len(inputs),
        "loss_difference": abs(loss.item() - reference_loss.item()),
        "max_abs_gradient_difference": max_abs,
        "max_rel_gradient_difference": max_rel,
        "rng_state_after_matches_plain_step": cuda_rng_matches,
        "passed": bool(max_rel <= 1e-6 and cuda_rng_matches),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "image_size": args.image_size,
        "samples_per_class": args.samples_per_class,
        "embedding_size": args.embedding_size,
        "inputs_on": "host (pinned), moved per chunk" if device.type == "cuda" else "host",
    }
    if not args.skip_equality:
        report["gradient_equality"] = gradient_equality(device)
        log(f"gradient equality: {report['gradient_equality']}")
    report["loss_function"], loss_fn = make_loss(args.loss)
    model = resnet50_embedder(args.embedding_size, device)
    configurations = [("cached", cached_step, args.batch)]
    if args.reference_batch:
        configurations += [("cached", cached_step, args.reference_batch), ("plain", plain_step, args.reference_batch)]
    report["results"] = []
    for precision in args.precisions.split(","):
        for mode, step, batch in configurations:
            result = measure(step, mode, precision, batch, args, model, loss_fn, device)
            log(json.dumps(result))
            report["results"].append(result)
    report["ratios"] = ratios(report["results"], args)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write(report, args)
    return report


def ratios(results: list[dict], args: argparse.Namespace) -> dict:
    """Per precision: cached time per image over plain's, cached peak memory at B over that at the reference
    batch, and the difference of the cached and plain losses at the reference batch (should be ~0)."""
    found = {(r["mode"], r["precision"], r["batch"]): r for r in results if "error" not in r}
    out = {}
    for precision in args.precisions.split(","):
        big = found.get(("cached", precision, args.batch))
        small = found.get(("cached", precision, args.reference_batch))
        plain = found.get(("plain", precision, args.reference_batch))
        entry = {}
        if big and plain:
            entry["time_per_image_cached_over_plain"] = round(plain["images_per_second"] / big["images_per_second"], 3)
        if big and small:
            entry["peak_memory_big_over_reference_batch"] = round(big["peak_memory_gib"] / small["peak_memory_gib"], 3)
        if small and plain:
            # Same initial weights, data and steps: cached and plain training must follow the same losses.
            entry["reference_batch_loss_cached_minus_plain"] = small["loss"] - plain["loss"]
        out[precision] = entry
    return out


def write(report: dict, args: argparse.Namespace) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    path = args.out or (os.path.join(os.environ["OUT"], "gpu_trainer_check.json") if os.environ.get("OUT") else None)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as file:
            file.write(text + "\n")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

"""Scaling of one gradient-cached RS@k step over processes: the same global batch on 1 and 2 ranks.

Each configuration runs in fresh processes (``torchrun --standalone`` for 2 or more ranks, gloo on the CPU, NCCL on
CUDA): a ``SmallConvNet`` (BatchNorm frozen) in ``DistributedDataParallel``, ``RecallKSurrogateLoss`` over the
gathered global batch of B random images (B/4 classes × 4), ``cached_backward`` in chunks of ``--chunk`` on each rank,
Adam. One warm-up step, then ``--repeats`` measured steps. Every rank reports its wall time per step (the job's step
takes as long as its slowest rank) and its memory: on the CPU the peak resident set size over the steps minus the
resident size before the warm-up step (sampled every millisecond), on CUDA ``torch.cuda.max_memory_allocated``.

The baseline is one process with the same global batch and as many torch threads as the ranks together
(``--threads`` × ranks), so that both use the same cores; one process with ``--threads`` is listed too. Ratios are
against the baseline measured in the same invocation.

Usage::

    python benchmarks/distributed_scaling.py                          # B = 512, chunk 64, 1 vs 2 processes, CPU
    python benchmarks/distributed_scaling.py --batch 128 --repeats 1 --out /tmp/ds   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pml_recallk.benchmark.harness import MIB, PeakResidentMemory, resident_bytes

RESULTS = Path(__file__).parent / "results" / "distributed_scaling"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512, help="the global batch (all ranks together)")
    parser.add_argument("--chunk", type=int, default=64, help="images per forward on each rank")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2], help="process counts besides the baseline")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="measured steps after one warm-up step")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("small_cnn", "resnet50"), default="small_cnn")
    parser.add_argument("--amp", choices=("off", "bfloat16"), default="off", help="autocast of the forwards")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for results.json and README.md")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a rank: write its measurements here
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): build, warm up, measure; write ``{rank, seconds, memory}`` as JSON."""
    import torch
    import torch.distributed as dist

    from pml_recallk import RecallKSurrogateLoss, cached_backward
    from pml_recallk.models import build_model

    torch.set_num_threads(args.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    if world_size > 1:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    torch.manual_seed(0)
    if args.model == "resnet50":  # the paper's embedder, BatchNorm frozen, random weights
        model = build_model("resnet50", embedding_size=512).to(device)
    else:
        model = build_model("small_cnn", embedding_size=128, in_channels=3, width=args.width).to(device)
    model.apply(lambda m: m.eval() if isinstance(m, torch.nn.BatchNorm2d) else None)
    amp = torch.bfloat16 if args.amp == "bfloat16" else None
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = RecallKSurrogateLoss()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.arange(args.batch // 4).repeat_interleave(4)
    share = args.batch // world_size
    mine_images, mine_labels = (
        images[rank * share : (rank + 1) * share].to(device),
        labels[rank * share : (rank + 1) * share],
    )

    def step() -> float:
        optimizer.zero_grad()
        loss = cached_backward(model, mine_images, mine_labels, loss_fn, args.chunk, amp=amp)
        optimizer.step()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    base_rss = resident_bytes()  # model, optimiser and data built: what follows is the step's own memory
    losses = [step()]  # warm-up
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    with PeakResidentMemory() as rss:
        for _ in range(args.repeats):
            if world_size > 1:
                dist.barrier()  # every rank starts the step together
            tic = time.perf_counter()
            losses.append(step())
            seconds.append(time.perf_counter() - tic)
    memory = torch.cuda.max_memory_allocated() if args.device == "cuda" else rss.peak - base_rss
    result = {"rank": rank, "seconds": seconds, "memory": memory, "peak_rss": rss.peak, "losses": losses}
    args.worker.with_name(f"{args.worker.name}.rank{rank}.json").write_text(json.dumps(result))
    if world_size > 1:
        dist.barrier()  # no rank tears gloo down while another still uses it
        dist.destroy_process_group()


def run_configuration(args: argparse.Namespace, ranks: int, threads: int, folder: Path) -> dict:
    """Launch one configuration; the per-rank measurements and the step time of the job (its slowest rank)."""
    stem = folder / f"ranks{ranks}_threads{threads}"
    common = [
        "--worker", str(stem), "--batch", str(args.batch), "--chunk", str(args.chunk), "--threads", str(threads),
        "--image-size", str(args.image_size), "--width", str(args.width), "--repeats", str(args.repeats),
        "--device", args.device, "--model", args.model, "--amp", args.amp,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if ranks == 1:
        command = [sys.executable, __file__, *common]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", __file__]
        command += common
    subprocess.run(command, check=True, env=env)
    per_rank = [json.loads(stem.with_name(f"{stem.name}.rank{r}.json").read_text()) for r in range(ranks)]
    step = [max(r["seconds"][i] for r in per_rank) for i in range(args.repeats)]
    return {
        "ranks": ranks,
        "threads_per_rank": threads,
        "step_seconds": statistics.median(step),
        "memory_per_rank_mib": [r["memory"] / MIB for r in per_rank],
        "peak_rss_per_rank_mib": [r["peak_rss"] / MIB for r in per_rank],
        "final_loss": per_rank[0]["losses"][-1],
    }


def report(args: argparse.Namespace, rows: list[dict], command: str) -> str:
    baseline = rows[0]
    memory = "peak CUDA memory allocated (model, optimiser, data and the steps)"
    if args.device == "cpu":
        memory = "peak RSS during the steps minus the RSS before the warm-up step (model, optimiser, data built)"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Scaling of a gradient-cached RS@k step over processes",
        "",
        f"`{command}`",
        "",
        f"Global batch {args.batch} ({args.batch // 4} classes × 4) of {args.image_size} px random images, "
        f"{args.model} (small_cnn width {args.width}), autocast {args.amp}, chunks of {args.chunk} on every rank, "
        f"{args.device}; median of "
        f"{args.repeats} steps after one warm-up. Memory per rank: {memory}. Ratios against the first row (one "
        "process with as many threads as the ranks of the largest job together), measured in the same invocation. "
        f"Load average of the machine when the report was written (1, 5, 15 min): {load}; "
        f"{os.cpu_count()} CPUs.",
        "",
        "| processes | threads each | step (s) | step ratio | memory per rank (MiB) | memory ratio "
        "| peak RSS per rank (MiB) | final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        memory_mib = max(row["memory_per_rank_mib"])
        lines.append(
            f"| {row['ranks']} | {row['threads_per_rank']} | {row['step_seconds']:.3f} | "
            f"{row['step_seconds'] / baseline['step_seconds']:.2f} | "
            + " / ".join(f"{m:.0f}" for m in row["memory_per_rank_mib"])
            + f" | {memory_mib / max(baseline['memory_per_rank_mib']):.2f} | "
            + " / ".join(f"{m:.0f}" for m in row["peak_rss_per_rank_mib"])
            + f" | {row['final_loss']:.6f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return
    if any(args.batch % (4 * r) for r in args.ranks):
        raise SystemExit(f"--batch must be a multiple of 4 × every rank count {args.ranks}")
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.out / "raw"
    scratch.mkdir(exist_ok=True)
    most = max(args.ranks)
    plan = [(1, args.threads * most), (1, args.threads)] + [(r, args.threads) for r in args.ranks]
    if args.device == "cuda":  # one GPU per rank: the baseline is one process on one GPU
        plan = [(1, args.threads)] + [(r, args.threads) for r in args.ranks]
    rows = [run_configuration(args, ranks, threads, scratch) for ranks, threads in dict.fromkeys(plan)]
    command = " ".join(["python", "benchmarks/distributed_scaling.py", *(argv if argv is not None else sys.argv[1:])])
    (args.out / "results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    (args.out / "README.md").write_text(report(args, rows, command))
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()

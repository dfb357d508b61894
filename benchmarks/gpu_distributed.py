"""The distributed step on 1 to 8 GPUs (NCCL): time per step and peak memory per rank at one global batch.

For a machine with N GPUs: ``benchmarks/distributed_scaling.py --device cuda`` with the paper's ResNet-50 (GeM,
BatchNorm frozen, random weights), 224 px random images, a global batch of ``--batch`` (default 1024) in chunks of
``--chunk`` per rank, bfloat16 autocast, for 1 and every power of two up to N GPUs (``torchrun --standalone
--nproc_per_node=n``, one process per GPU). The final loss of every row must agree (the same global batch: the
gradients differ only by summation order). Results go to ``benchmarks/results/distributed_scaling/gpu/``.

Usage (on the GPU machine, from the repository root)::

    python benchmarks/gpu_distributed.py                      # 1, 2, 4, 8 GPUs as available
    python benchmarks/gpu_distributed.py --batch 512 --repeats 2   # a quicker check

Not run yet: no GPU machine was lent when it was written (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import distributed_scaling  # noqa: E402 - the benchmark's own module, beside this file

RESULTS = Path(__file__).parent / "results" / "distributed_scaling" / "gpu"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gpus", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    count = min(torch.cuda.device_count(), args.max_gpus)
    if count == 0:
        raise SystemExit("no CUDA device: run this on a GPU machine (the CPU benchmark is distributed_scaling.py)")
    ranks = [n for n in (2, 4, 8) if n <= count and args.batch % (4 * n) == 0]
    forwarded = [
        "--device", "cuda", "--model", "resnet50", "--image-size", "224", "--amp", "bfloat16",
        "--batch", str(args.batch), "--chunk", str(args.chunk), "--repeats", str(args.repeats), "--out", str(args.out),
    ]  # fmt: skip
    if ranks:
        forwarded += ["--ranks", *map(str, ranks)]
    else:
        forwarded += ["--ranks", "1"]  # one GPU: the baseline alone
    distributed_scaling.main(forwarded)


if __name__ == "__main__":
    main()

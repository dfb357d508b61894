"""Time one forward + backward of MobileNetV2Embedder on this CPU (1 thread) at a few resolutions and cuts.

    OMP_NUM_THREADS=1 python benchmarks/icons/time_mobilenet_v2.py [--batch 64] [--repeats 3]

Prints, per (image size, last block), the median seconds per batch and per 1,000 images, which sets the resolution
the icon study can afford on two cores (docs/icons.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pml_recallk.models.mobilenet_v2 import MobileNetV2Embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 96, 128])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    for last_block in (10, 13, None):
        model = MobileNetV2Embedder(embedding_size=128, last_block=last_block)
        for size in args.sizes:
            images = torch.randn(args.batch, 3, size, size)
            times = []
            for _ in range(args.repeats + 1):  # the first run warms up the allocator
                start = time.perf_counter()
                model(images).sum().backward()
                times.append(time.perf_counter() - start)
                model.zero_grad()
            seconds = statistics.median(times[1:])
            print(
                f"size {size:3d} last_block {str(last_block):>4}: {seconds:.3f} s per batch, "
                f"{1000 * seconds / args.batch:.2f} s per 1,000 images"
            )


if __name__ == "__main__":
    main()

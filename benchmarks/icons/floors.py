"""The floors of the icon study: leave-one-out Recall@k of raw pixels, of the frozen pretrained MobileNetV2 and of
the untrained one, on the validation and test splits of the built data set.

    OMP_NUM_THREADS=1 python benchmarks/icons/floors.py --data benchmarks/.cache/icons \\
        --weights benchmarks/.cache/mobilenet_v2_nsfwjs.pth [--out benchmarks/results/icons/floors.json]

Raw pixels: the 64-px grey image, ink = 1 − grey, flattened and L2-normalised. Networks: the pooled trunk
features (no head) of ``MobileNetV2Embedder`` at the cut ``last_block`` (10, 13 and the whole trunk), fed the test
transform of the project (``models.transforms.test_transform(64)``), L2-normalised. The untrained network is seed
0's random initialisation with BatchNorm in eval mode (its running statistics are the initial 0 / 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pml_recallk import RecallAtKAccuracyCalculator
from pml_recallk.models.mobilenet_v2 import MobileNetV2Embedder
from pml_recallk.models.transforms import test_transform

K_VALUES = (1, 2, 4, 8)


def read_split(data: Path, split: str) -> tuple[list[Image.Image], np.ndarray]:
    with open(data / "icons.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["split"] == split]
    names = sorted({row["label"] for row in rows})
    ids = {name: index for index, name in enumerate(names)}
    images = [Image.open(data / row["path"]).convert("L") for row in rows]
    return images, np.array([ids[row["label"]] for row in rows])


def recall(embeddings: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    calculator = RecallAtKAccuracyCalculator(k_values=K_VALUES, include=tuple(f"recall_at_{k}" for k in K_VALUES))
    result = calculator.get_accuracy(embeddings, torch.from_numpy(labels), ref_includes_query=True)
    return {name: round(value, 4) for name, value in result.items()}


@torch.no_grad()
def network_features(model: MobileNetV2Embedder, images: list[Image.Image], size: int) -> torch.Tensor:
    transform = test_transform(size, channels=3)
    model.eval()
    features = [
        model.features(torch.stack([transform(image) for image in images[start : start + 256]]))
        for start in range(0, len(images), 256)
    ]
    return F.normalize(torch.cat(features), dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the built data set (icons.csv)")
    parser.add_argument("--weights", type=Path, required=True, help="convert_mobilenet_v2.py's state dict")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/icons/floors.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, dict] = {}
    for split in args.splits:
        images, labels = read_split(args.data, split)
        rows = results[split] = {"images": len(labels), "classes": int(labels.max() + 1)}
        pixels = torch.from_numpy(1 - np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images]))
        rows["raw_pixels"] = recall(F.normalize(pixels.flatten(1), dim=1), labels)
        for name, weights in (("pretrained", args.weights), ("untrained", None)):
            for last_block in (10, 13, None):
                torch.manual_seed(0)
                model = MobileNetV2Embedder(embedding_size=8, pretrained_path=weights, last_block=last_block)
                start = time.perf_counter()
                features = network_features(model, images, args.size)
                key = f"{name}_block_{last_block if last_block is not None else 'all'}"
                rows[key] = recall(features, labels)
                print(f"{split} {key}: {rows[key]} ({time.perf_counter() - start:.0f} s)", flush=True)
        print(f"{split} raw_pixels: {rows['raw_pixels']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

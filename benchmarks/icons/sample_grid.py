"""Draw docs/images/icons_sample.png: a few test concepts (rows), each with its images (one per design family).

python benchmarks/icons/sample_grid.py --data benchmarks/.cache/icons [--rows 12] [--out FILE.png]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding icons.csv")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--cell", type=int, default=40, help="pixels per image in the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/images/icons_sample.png"))
    args = parser.parse_args()
    by_label = defaultdict(list)
    with open(args.data / "icons.csv") as file:
        for row in csv.DictReader(file):
            if row["split"] == "test":
                by_label[row["label"]].append(row["path"])
    labels = sorted(by_label)
    chosen = sorted(np.random.default_rng(args.seed).choice(labels, args.rows, replace=False).tolist())
    label_width, cell = 150, args.cell
    grid = Image.new("L", (label_width + 12 * cell, args.rows * cell), 255)
    draw = ImageDraw.Draw(grid)
    for row, label in enumerate(chosen):
        draw.text((4, row * cell + cell // 2 - 6), label, fill=0)
        for column, path in enumerate(sorted(by_label[label])):
            image = Image.open(args.data / path).convert("L").resize((cell - 4, cell - 4), Image.Resampling.LANCZOS)
            grid.paste(image, (label_width + column * cell + 2, row * cell + 2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB): {', '.join(chosen)}")


if __name__ == "__main__":
    main()

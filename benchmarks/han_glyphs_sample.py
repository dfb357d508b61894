"""Draw docs/images/han_glyphs_sample.png and print the numbers of docs/han_glyphs.md.

    python benchmarks/han_glyphs_sample.py --font-dir DIR [--cache-dir DIR] [--out docs/images/han_glyphs_sample.png]

The grid shows a few train and test characters (rows), each in the design groups of its split (columns, one
image per group), so that the reader sees the designs of both sides and that no design is in both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pml_recallk.datasets import HanGlyphs


def numbers(font_dir: str, cache_dir: str | None) -> dict:
    out = {}
    for cap in (8, None):
        for split in HanGlyphs.splits:
            start = time.perf_counter()
            data = HanGlyphs(split, font_dir=font_dir, cache_dir=cache_dir, images_per_class=cap)
            counts = np.bincount(data.labels)
            out[f"{split} cap={cap}"] = {
                "classes": data.num_classes,
                "images": len(data),
                "design_groups": len(set(data.group_ids.tolist())),
                "images_per_class": [int(counts.min()), round(float(counts.mean()), 2), int(counts.max())],
                "seconds": round(time.perf_counter() - start, 1),
            }
    data = HanGlyphs("train", font_dir=font_dir, cache_dir=cache_dir)
    out["dropped"] = data.dropped
    out["dropped_faces"] = data.dropped_faces
    return out


def grid(font_dir: str, cache_dir: str | None, out: Path, rows: int = 4, columns: int = 12) -> None:
    from PIL import Image, ImageDraw

    tiles = []
    for split in ("train", "test"):
        data = HanGlyphs(split, font_dir=font_dir, cache_dir=cache_dir, images_per_class=None)
        groups = sorted(set(data.group_ids.tolist()), key=lambda g: -np.sum(data.group_ids == g))[:columns]
        for label in np.random.default_rng(0).choice(data.num_classes, rows, replace=False):
            row = []
            for g in groups:
                hit = np.flatnonzero((data.labels == label) & (data.group_ids == g))
                row.append(data.images[hit[0]] if len(hit) else np.full(data.images.shape[1:], 40, np.uint8))
            tiles.append((split, row))
    size, pad, label_width = 32, 2, 60
    width = label_width + columns * (size + pad)
    image = Image.new("L", (width, len(tiles) * (size + pad) + pad), 255)
    draw = ImageDraw.Draw(image)
    for r, (split, row) in enumerate(tiles):
        y = pad + r * (size + pad)
        draw.text((4, y + 10), split, fill=0)
        for c, tile in enumerate(row):
            image.paste(Image.fromarray(tile), (label_width + c * (size + pad), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--font-dir", required=True)
    parser.add_argument("--cache-dir")
    parser.add_argument("--out", type=Path, default=Path("docs/images/han_glyphs_sample.png"))
    args = parser.parse_args()
    print(json.dumps(numbers(args.font_dir, args.cache_dir), indent=1, ensure_ascii=False))
    grid(args.font_dir, args.cache_dir, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

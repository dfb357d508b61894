"""Tiny generated image collections for the own-data tests: a class folder tree and the same data as a CSV.

Each class is a random 16 × 16 pattern; its images are the pattern plus noise, so a small CNN can learn them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def make_tree(
    root: Path,
    classes: int = 6,
    per_class: int = 5,
    size: int = 16,
    mode: str = "RGB",
    layout: str = "split",
    val: bool = False,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """Write the images; return ``(path relative to root, label, split)`` rows in a fixed order.

    ``layout="split"``: the first half of the classes under ``train/``, the rest under ``test/`` (with ``val``, the
    last train class under ``val/``); ``"flat"``: every class folder directly under ``root`` (split ``""``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(classes):
        label = f"class_{c:02d}"
        if layout == "flat":
            split = ""
        elif c < classes // 2:
            split = "val" if val and c == classes // 2 - 1 else "train"
        else:
            split = "test"
        folder = root / split / label if split else root / label
        folder.mkdir(parents=True, exist_ok=True)
        pattern = rng.integers(0, 256, size=(size, size, 3))
        for i in range(per_class):
            pixels = np.clip(pattern + rng.normal(0, 20, size=pattern.shape), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, "RGB")
            if mode == "L":
                image = image.convert("L")
            name = f"img_{i}.png"
            image.save(folder / name)
            rows.append(((Path(split) / label / name).as_posix() if split else f"{label}/{name}", label, split))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str, str]], prefix: str = "", extra: dict | None = None) -> Path:
    """A CSV listing of ``rows`` (paths prefixed with ``prefix``); ``extra``: more columns, ``{name: [values]}``."""
    extra = extra or {}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", *extra])
        for i, (relative, label, split) in enumerate(rows):
            writer.writerow([prefix + relative, label, split, *(values[i] for values in extra.values())])
    return path

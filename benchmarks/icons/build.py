"""Build the icon-concept retrieval data set from the @iconify/json npm packages into the generic CSV format.

Classes are *concepts* (an icon name without style and size tokens: "home", "boxing-glove"); the images of a class
are that concept drawn by different *design families* (families.toml merges the sets that are versions or
restylings of one drawing). Per concept: one image per family, drawings pixel-near-identical to one already kept
are dropped (mean absolute difference < 0.03 on a 32-px grey render), blank renders are dropped, concepts with
fewer than 6 families left are dropped, and at most 12 families are drawn (seeded). Train, validation and test
concepts are disjoint (a seeded split of the concepts); the design families are shared between the splits, as
photographic style is shared between SOP's or CUB's train and test classes: a test class is new, its drawers are
not (with ~200 families, keeping them disjoint too would leave too few families per concept).

Usage:
    bash benchmarks/icons/fetch.sh benchmarks/.cache/npm
    python benchmarks/icons/build.py --source benchmarks/.cache/npm --output benchmarks/.cache/icons

Output (in --output): ``images/<concept>/<set>--<icon>.png`` (grey, --size px, black on white), ``icons.csv``
(``path,label,split`` with paths relative to the CSV; split is train, val or test), ``sources.csv`` (the set,
icon, family and licence of each image) and ``manifest.json`` (package versions, parameters, the sets used and
left out with the reason, counts, and sha256 of icons.csv and of the images). Rerun with the same packages and
arguments, it writes the same files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import sys
import zlib
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
from PIL import Image

FAMILIES_FILE = Path(__file__).with_name("families.toml")
DEDUP_SIZE = 32  # the grid the near-duplicate test compares on (the survey's measurement)


@dataclass(frozen=True)
class Rules:
    """What families.toml says: the categories kept, sets left out, licences left out, name tokens, families."""

    categories: frozenset[str]
    excluded_sets: Mapping[str, str]
    licence_exclusions: tuple[str, ...]
    suffixes: frozenset[str]
    prefixes: frozenset[str]
    family_of: Mapping[str, str]

    @classmethod
    def load(cls, path: Path = FAMILIES_FILE) -> Rules:
        data = tomllib.loads(path.read_text())
        family_of: dict[str, str] = {}
        for family, members in data["families"].items():
            for prefix in members:
                if prefix in family_of:
                    raise ValueError(f"{path}: set {prefix!r} is in families {family_of[prefix]!r} and {family!r}")
                family_of[prefix] = family
        return cls(
            categories=frozenset(data["sets"]["categories"]),
            excluded_sets=dict(data["sets"]["exclude"]),
            licence_exclusions=tuple(data["licences"]["exclude_substrings"]),
            suffixes=frozenset(data["names"]["suffixes"]),
            prefixes=frozenset(data["names"]["prefixes"]),
            family_of=family_of,
        )

    def family(self, prefix: str) -> str:
        return self.family_of.get(prefix, prefix)

    def why_excluded(self, prefix: str, info: Mapping[str, Any]) -> str | None:
        """The reason the set is left out, or None to keep it."""
        spdx = (info.get("license") or {}).get("spdx") or ""
        if not spdx:
            return "no SPDX licence id"
        if any(part in spdx for part in self.licence_exclusions):
            return f"non-commercial licence {spdx}"
        if prefix in self.excluded_sets:
            return self.excluded_sets[prefix]
        if info.get("category") not in self.categories:
            return f"category {info.get('category')!r} is not a UI-type category"
        return None

    def concept(self, name: str) -> str:
        """The icon name without style/size tokens: ``"outline-home-24-regular"`` → ``"home"``. A name made only
        of tokens ("line", "fill") is kept whole."""
        tokens = name.split("-")
        while len(tokens) > 1 and tokens[-1] in self.suffixes:
            tokens.pop()
        # Also a two-token suffix ("two-tone").
        while len(tokens) > 2 and "-".join(tokens[-2:]) in self.suffixes:
            del tokens[-2:]
        while len(tokens) > 1 and tokens[0] in self.prefixes:
            tokens.pop(0)
        return "-".join(tokens)


def read_icon_sets(source: Path) -> dict[str, dict[str, Any]]:
    """Every icon set under ``source``: the bundle's ``json/<prefix>.json`` files and single-set packages'
    ``icons.json`` (+ ``info.json``). Returns prefix → {"data": the set, "info": its info, "package": the npm
    package name@version it came from}."""
    sets: dict[str, dict[str, Any]] = {}
    files = sorted(source.rglob("package/json/*.json")) + sorted(source.rglob("package/icons.json"))
    for file in files:
        data = json.loads(file.read_text())
        if not isinstance(data, dict) or "icons" not in data or "prefix" not in data:
            continue
        package_root = file.parent.parent if file.parent.name == "json" else file.parent
        info = data.get("info")
        if info is None and (file.parent / "info.json").is_file():
            info = json.loads((file.parent / "info.json").read_text())
        package = json.loads((package_root / "package.json").read_text())
        prefix = data["prefix"]
        if prefix in sets:
            raise ValueError(f"icon set {prefix!r} appears twice under {source} ({file}); keep one copy")
        sets[prefix] = {"data": data, "info": info or {}, "package": f"{package['name']}@{package['version']}"}
    return sets


def icon_svgs(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(name, standalone SVG) of every icon and alias of an Iconify set, hidden ones left out.

    An alias takes its parent's body with the flips combined by XOR and the rotations added (Iconify's rule);
    ``currentColor`` becomes black.
    """
    icons, aliases = data["icons"], data.get("aliases", {})
    for name in sorted(set(icons) | set(aliases)):
        resolved = _resolve(name, icons, aliases, depth=0)
        if resolved is None or resolved.get("hidden"):
            continue
        yield name, _to_svg(resolved, data)


def _resolve(name: str, icons: Mapping, aliases: Mapping, depth: int) -> dict[str, Any] | None:
    if name in icons:
        return dict(icons[name])
    if name not in aliases or depth > 10:
        return None
    alias = aliases[name]
    parent = _resolve(alias["parent"], icons, aliases, depth + 1)
    if parent is None:
        return None
    merged = {**parent, **{k: v for k, v in alias.items() if k in ("width", "height", "left", "top", "hidden")}}
    merged["hFlip"] = bool(parent.get("hFlip")) != bool(alias.get("hFlip"))
    merged["vFlip"] = bool(parent.get("vFlip")) != bool(alias.get("vFlip"))
    merged["rotate"] = (parent.get("rotate", 0) + alias.get("rotate", 0)) % 4
    return merged


def _to_svg(icon: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
    width, height = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
    transforms = []
    cx, cy = left + width / 2, top + height / 2
    if icon.get("rotate", 0) % 4:
        quarter = icon["rotate"] % 4
        transforms.append(f"rotate({90 * quarter} {cx} {cy})")
        if quarter % 2:  # a quarter turn of a non-square box: the box turns with it, about the same centre
            left, top, width, height = cx - height / 2, cy - width / 2, height, width
    # Flips act on the drawing first (innermost), about the original box's centre.
    if icon.get("hFlip"):
        transforms.append(f"translate({2 * cx} 0) scale(-1 1)")
    if icon.get("vFlip"):
        transforms.append(f"translate(0 {2 * cy}) scale(1 -1)")
    body = icon["body"].replace("currentColor", "#000")
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{left} {top} {width} {height}">{body}</svg>'


def render(svg: str, size: int) -> np.ndarray:
    """A (size, size) uint8 grey image of ``svg`` on white (aspect ratio kept, centred)."""
    import cairosvg  # imported here: only rendering needs libcairo

    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size, background_color="white")
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def dedup_view(image: np.ndarray) -> np.ndarray:
    """The 32-px grey view (float in [0, 1]) the blank and near-duplicate tests use."""
    small = Image.fromarray(image).resize((DEDUP_SIZE, DEDUP_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def is_blank(view: np.ndarray, min_contrast: float = 0.1) -> bool:
    """No drawing: the lightest and darkest pixels differ by less than ``min_contrast``."""
    return float(view.max() - view.min()) < min_contrast


def is_near_duplicate(view: np.ndarray, kept: list[np.ndarray], threshold: float) -> bool:
    """Mean absolute pixel difference below ``threshold`` to any kept view."""
    return any(float(np.abs(view - other).mean()) < threshold for other in kept)


@dataclass(frozen=True)
class ConceptTask:
    concept: str
    candidates: Mapping[str, list[tuple[str, str, str]]]  # family → [(set, icon, svg)], sorted
    seed: int
    size: int
    max_images: int
    min_families: int
    dedup_threshold: float


def choose_images(task: ConceptTask) -> tuple[str, list[tuple[str, str, str, bytes]]]:
    """Draw the concept's images: families in a seeded order, in each a seeded order of its candidates; the
    first candidate that is neither blank nor a near-duplicate of an image kept so far is the family's image;
    stop at ``max_images``. Returns (concept, [(family, set, icon, png)]), the list empty when fewer than
    ``min_families`` families are left."""
    rng = np.random.default_rng([task.seed, zlib.crc32(task.concept.encode())])
    families = sorted(task.candidates)
    kept_views: list[np.ndarray] = []
    kept: list[tuple[str, str, str, bytes]] = []
    for family_index in rng.permutation(len(families)):
        family = families[family_index]
        options = task.candidates[family]
        for option_index in rng.permutation(len(options)):
            prefix, icon, svg = options[option_index]
            image = render(svg, task.size)
            view = dedup_view(image)
            if is_blank(view) or is_near_duplicate(view, kept_views, task.dedup_threshold):
                continue
            kept_views.append(view)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG", optimize=False)
            kept.append((family, prefix, icon, buffer.getvalue()))
            break
        if len(kept) == task.max_images:
            break
    return task.concept, kept if len(kept) >= task.min_families else []


def concept_tasks(sets: Mapping[str, Mapping[str, Any]], rules: Rules, args: argparse.Namespace) -> list[ConceptTask]:
    """One task per concept drawn by at least ``min_families`` families by name (the renders decide later)."""
    by_concept: dict[str, dict[str, list[tuple[str, str, str]]]] = defaultdict(lambda: defaultdict(list))
    for prefix in sorted(sets):
        for icon, svg in icon_svgs(sets[prefix]["data"]):
            by_concept[rules.concept(icon)][rules.family(prefix)].append((prefix, icon, svg))
    return [
        ConceptTask(
            concept,
            {family: sorted(options) for family, options in sorted(families.items())},
            args.seed,
            args.size,
            args.max_images,
            args.min_families,
            args.dedup_threshold,
        )
        for concept, families in sorted(by_concept.items())
        if len(families) >= args.min_families
    ]


def split_concepts(concepts: list[str], seed: int, test_fraction: float, val_fraction: float) -> dict[str, str]:
    """concept → "train" / "val" / "test": a seeded permutation of the sorted concepts; the first
    ``round(test_fraction · n)`` are test, the next ``round(val_fraction · n)`` validation, the rest train."""
    ordered = sorted(concepts)
    order = np.random.default_rng([seed, 1]).permutation(len(ordered))
    n_test, n_val = round(test_fraction * len(ordered)), round(val_fraction * len(ordered))
    splits = {}
    for rank, index in enumerate(order):
        splits[ordered[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return splits


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dataset(
    output: Path, chosen: list[tuple[str, list[tuple[str, str, str, bytes]]]], splits: Mapping[str, str], sets
) -> dict[str, Any]:
    """Write the images, icons.csv and sources.csv; return the counts and hashes for the manifest."""
    images_dir = output / "images"
    if images_dir.exists():
        # Only a previous build's images are replaced: never delete a folder this script did not write.
        if not (output / "manifest.json").is_file():
            raise ValueError(f"{images_dir} exists but {output} holds no manifest.json; choose an empty --output")
        shutil.rmtree(images_dir)
    rows, sources = [], []
    for concept, images in chosen:
        (images_dir / concept).mkdir(parents=True)
        for family, prefix, icon, png in images:
            relative = f"images/{concept}/{prefix}--{icon}.png"
            (output / relative).write_bytes(png)
            rows.append((relative, concept, splits[concept]))
            licence = sets[prefix]["info"]["license"]["spdx"]
            sources.append((relative, prefix, icon, family, licence))
    order = {"train": 0, "val": 1, "test": 2}
    rows.sort(key=lambda row: (order[row[2]], row[1], row[0]))
    with open(output / "icons.csv", "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    with open(output / "sources.csv", "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["path", "set", "icon", "family", "licence"])
        writer.writerows(sorted(sources))
    image_digest = hashlib.sha256()
    for path, _, _ in sorted(rows):
        image_digest.update(f"{path} {sha256_file(output / path)}\n".encode())
    counts = {
        split: {
            "concepts": len({label for _, label, s in rows if s == split}),
            "images": sum(1 for _, _, s in rows if s == split),
        }
        for split in order
    }
    return {
        "counts": counts,
        "families_used": len({family for _, images in chosen for family, *_ in images}),
        "sha256": {"icons.csv": sha256_file(output / "icons.csv"), "images": image_digest.hexdigest()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="folder fetch.sh filled (npm packages)")
    parser.add_argument("--output", type=Path, required=True, help="folder to write the data set to")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the family draw and the split")
    parser.add_argument("--max-images", type=int, default=12, help="images (families) per concept at most")
    parser.add_argument("--min-families", type=int, default=6, help="families per concept at least")
    parser.add_argument("--dedup-threshold", type=float, default=0.03, help="near-duplicate mean abs difference")
    parser.add_argument("--test-fraction", type=float, default=0.5, help="share of concepts for test")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of concepts for validation")
    parser.add_argument("--processes", type=int, default=2, help="rendering processes (at most 2 here)")
    parser.add_argument("--families", type=Path, default=FAMILIES_FILE, help="the family map and filters")
    args = parser.parse_args(argv)
    if args.size < DEDUP_SIZE:
        parser.error(f"--size must be at least {DEDUP_SIZE}, got {args.size}")
    if not 1 <= args.min_families <= args.max_images:
        parser.error("need 1 <= --min-families <= --max-images")
    if not (0 < args.test_fraction and 0 <= args.val_fraction and args.test_fraction + args.val_fraction < 1):
        parser.error("need 0 < --test-fraction, 0 <= --val-fraction and their sum below 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    args = parse_args(argv)
    rules = Rules.load(args.families)
    all_sets = read_icon_sets(args.source)
    if not all_sets:
        sys.exit(f"error: no icon sets under {args.source}; run benchmarks/icons/fetch.sh first")
    excluded = {p: why for p in sorted(all_sets) if (why := rules.why_excluded(p, all_sets[p]["info"]))}
    sets = {p: s for p, s in all_sets.items() if p not in excluded}
    tasks = concept_tasks(sets, rules, args)
    with Pool(min(args.processes, 2)) as pool:
        results = list(
            tqdm(pool.imap(choose_images, tasks, chunksize=8), total=len(tasks), desc="concepts", unit="concept")
        )
    chosen = [(concept, images) for concept, images in results if images]
    splits = split_concepts([c for c, _ in chosen], args.seed, args.test_fraction, args.val_fraction)
    args.output.mkdir(parents=True, exist_ok=True)
    written = write_dataset(args.output, chosen, splits, sets)
    manifest = {
        "packages": sorted({s["package"] for s in all_sets.values()}),
        "parameters": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in sorted(vars(args).items())
            if k not in ("source", "output", "processes", "families")
        },  # fmt: skip
        "families_sha256": sha256_file(args.families),
        "sets_used": {p: sets[p]["info"]["license"]["spdx"] for p in sorted(sets)},
        "sets_left_out": excluded,
        "concepts_by_name": len(tasks),
        **written,
    }
    (args.output / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"counts": manifest["counts"], "sha256": manifest["sha256"]}, indent=1))
    return manifest


if __name__ == "__main__":
    main()

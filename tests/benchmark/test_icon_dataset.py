"""benchmarks/icons/build.py: the icon-concept data set, on constructed icons and on a small real slice.

The real slice is 19 single-set npm packages (``bash benchmarks/icons/fetch.sh --small DIR``, ~2 MB of icon
tarballs): 13 design families, two of them split over two sets (famicons = ion, heroicons-outline/-solid), a
non-commercial set (ps) and a logo set (brandico) that must be left out. ``PML_RECALLK_ICONS_TEST_NPM=DIR``
points at it (default ``~/.cache/pml-recallk/icons-small``); the tests on it skip when it is absent, and fail in CI
(``CI=true``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cairosvg")

REPO = Path(__file__).resolve().parents[2]
NPM_ENV = "PML_RECALLK_ICONS_TEST_NPM"


def _load_builder():
    spec = importlib.util.spec_from_file_location("icons_build", REPO / "benchmarks/icons/build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and worker processes look the module up by name
    spec.loader.exec_module(module)
    return module


build = _load_builder()
RULES = build.Rules.load()


def _view32(png_or_path) -> np.ndarray:
    """Grey in [0, 1] at 32 px by 2×2 (or s×s) block means, written out here rather than taken from the builder."""
    image = Image.open(io.BytesIO(png_or_path) if isinstance(png_or_path, bytes) else png_or_path).convert("L")
    pixels = np.asarray(image, dtype=np.float64) / 255
    block = pixels.shape[0] // 32
    return pixels.reshape(32, block, 32, block).mean(axis=(1, 3))


# --- constructed icons -------------------------------------------------------------------------------------------

SQUARE = '<path fill="currentColor" d="M4 4h16v16H4z"/>'
SQUARE_SHIFTED = '<path fill="currentColor" d="M4 4h16v16.2H4z"/>'  # a near-duplicate (a hair taller)
CROSS = '<path fill="none" stroke="currentColor" stroke-width="2" d="M4 4l16 16M20 4L4 20"/>'
CORNER = '<path fill="currentColor" d="M2 2h10v4H6v10H2z"/>'  # asymmetric: flips and turns are visible


def _svg(body: str) -> str:
    return build._to_svg({"body": body}, {"width": 24, "height": 24})


def _task(candidates: dict[str, list[tuple[str, str, str]]], min_families: int = 1, max_images: int = 12):
    return build.ConceptTask("thing", candidates, seed=0, size=64, max_images=max_images,
                             min_families=min_families, dedup_threshold=0.03)  # fmt: skip


def test_near_duplicate_of_a_kept_image_is_dropped():
    candidates = {
        "fam-a": [("a", "thing", _svg(SQUARE))],
        "fam-b": [("b", "thing", _svg(SQUARE_SHIFTED))],
        "fam-c": [("c", "thing", _svg(CROSS))],
    }
    square, shifted, cross = (_view32(_png(_svg(body))) for body in (SQUARE, SQUARE_SHIFTED, CROSS))
    assert np.abs(square - shifted).mean() < 0.03  # a near-duplicate pair by the definition
    assert np.abs(square - cross).mean() >= 0.03 and np.abs(shifted - cross).mean() >= 0.03
    _, kept = build.choose_images(_task(candidates))
    families = sorted(family for family, *_ in kept)
    assert len(kept) == 2 and "fam-c" in families and ("fam-a" in families) != ("fam-b" in families)


def _png(svg: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(build.render(svg, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_blank_drawing_falls_back_to_the_familys_next_candidate():
    blank = _svg('<path fill="none" stroke="currentColor" d=""/>')
    candidates = {"fam-a": [("a", "thing-1", blank), ("a", "thing-2", _svg(CROSS))]}
    _, kept = build.choose_images(_task(candidates))
    assert [(prefix, icon) for _, prefix, icon, _ in kept] == [("a", "thing-2")]


def test_too_few_families_drop_the_concept_and_the_cap_holds():
    shapes = [SQUARE, CROSS, CORNER]
    candidates = {f"fam-{i}": [(f"s{i}", "thing", _svg(body))] for i, body in enumerate(shapes)}
    assert build.choose_images(_task(candidates, min_families=4))[1] == []
    _, kept = build.choose_images(_task(candidates, min_families=1, max_images=2))
    assert len(kept) == 2 and len({family for family, *_ in kept}) == 2


def test_flips_and_rotation_follow_iconify():
    # An alias with hFlip is the mirror image of its parent; rotate=1 turns it a quarter clockwise.
    data = {"width": 24, "height": 24, "icons": {"corner": {"body": CORNER}},
            "aliases": {"mirrored": {"parent": "corner", "hFlip": True},
                        "turned": {"parent": "corner", "rotate": 1},
                        "both": {"parent": "mirrored", "vFlip": True}}}  # fmt: skip
    images = {name: build.render(svg, 64).astype(int) for name, svg in build.icon_svgs(data)}
    corner = images["corner"]
    assert np.abs(images["mirrored"] - corner[:, ::-1]).mean() < 1
    assert np.abs(images["turned"] - np.rot90(corner, k=-1)).mean() < 1
    assert np.abs(images["both"] - corner[::-1, ::-1]).mean() < 1
    assert np.abs(images["turned"] - corner).mean() > 10  # the shape is not symmetric: the checks can fail


@pytest.mark.parametrize(
    ("name", "concept"),
    [("outline-home-24-regular", "home"), ("alarm-bold-duotone", "alarm"), ("heart-o", "heart"),
     ("arrow-left-16-filled", "arrow-left"), ("line", "line"), ("light-bulb", "light-bulb"),
     ("user-two-tone", "user")],
)  # fmt: skip
def test_concept_names(name, concept):
    assert RULES.concept(name) == concept


@pytest.mark.parametrize(
    ("info", "reason"),
    [({"license": {"spdx": "CC-BY-NC-4.0"}, "category": "UI 24px"}, "non-commercial"),
     ({"license": {"spdx": "CC-BY-NC-SA-4.0"}, "category": "UI 24px"}, "non-commercial"),
     ({"license": {}, "category": "UI 24px"}, "no SPDX"),
     ({"license": {"spdx": "MIT"}, "category": "Emoji"}, "not a UI-type category"),
     ({"license": {"spdx": "MIT"}}, "not a UI-type category")],
)  # fmt: skip
def test_sets_left_out(info, reason):
    assert reason in RULES.why_excluded("some-set", info)
    assert RULES.why_excluded("some-set", {"license": {"spdx": "CC-BY-SA-4.0"}, "category": "UI 24px"}) is None


def test_a_set_in_two_families_is_an_error(tmp_path):
    text = (REPO / "benchmarks/icons/families.toml").read_text() + '\nagain = ["lucide"]\n'
    (tmp_path / "families.toml").write_text(text)
    with pytest.raises(ValueError, match="'lucide' is in families 'lucide' and 'again'"):
        build.Rules.load(tmp_path / "families.toml")


def test_split_is_seeded_and_disjoint():
    concepts = [f"c{i}" for i in range(200)]
    splits = build.split_concepts(concepts, seed=0, test_fraction=0.5, val_fraction=0.1)
    counts = {split: sum(1 for s in splits.values() if s == split) for split in ("train", "val", "test")}
    assert counts == {"train": 80, "val": 20, "test": 100}
    assert splits == build.split_concepts(list(reversed(concepts)), seed=0, test_fraction=0.5, val_fraction=0.1)
    assert splits != build.split_concepts(concepts, seed=1, test_fraction=0.5, val_fraction=0.1)


def test_an_images_folder_the_builder_did_not_write_is_left_alone(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="no manifest.json"):
        build.write_dataset(tmp_path, [], {}, {})
    assert (tmp_path / "images" / "mine.txt").read_text() == "keep"


# --- the real slice ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slice_folder() -> Path:
    folder = os.environ.get(NPM_ENV)
    path = Path(folder).expanduser() if folder else Path.home() / ".cache" / "pml-recallk" / "icons-small"
    if not any(path.glob("iconify-json-*/package/icons.json")):
        message = f"no icon slice in {path}: run `bash benchmarks/icons/fetch.sh --small DIR` and set {NPM_ENV}=DIR"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def built(slice_folder, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("icons")
    build.main(["--source", str(slice_folder), "--output", str(output), "--processes", "2"])
    return output


def _rows(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / name) as file:
        return list(csv.DictReader(file))


def test_slice_family_map_and_licences(built):
    sources = _rows(built, "sources.csv")
    sets_by_concept = defaultdict(set)
    families_by_concept = defaultdict(list)
    for row in sources:
        concept = row["path"].split("/")[1]
        sets_by_concept[concept].add(row["set"])
        families_by_concept[concept].append(row["family"])
    for concept, families in families_by_concept.items():
        assert len(families) == len(set(families)), concept  # one image per family
        assert not {"ion", "famicons"} <= sets_by_concept[concept], concept
        assert not {"heroicons-outline", "heroicons-solid"} <= sets_by_concept[concept], concept
    used = {row["set"] for row in sources}
    assert {"ion", "famicons"} & used and {"heroicons-outline", "heroicons-solid"} & used  # not vacuous
    assert not {"ps", "brandico"} & used
    manifest = json.loads((built / "manifest.json").read_text())
    assert "non-commercial" in manifest["sets_left_out"]["ps"]
    assert "Logos" in manifest["sets_left_out"]["brandico"]
    assert all("-NC" not in licence for licence in manifest["sets_used"].values())


def test_slice_caps_blanks_and_near_duplicates(built):
    by_concept = defaultdict(list)
    for row in _rows(built, "icons.csv"):
        by_concept[row["label"]].append(built / row["path"])
    assert len(by_concept) > 50
    for concept, paths in by_concept.items():
        assert 6 <= len(paths) <= 12, concept
        views = [_view32(path) for path in paths]
        assert all(view.max() - view.min() >= 0.1 for view in views), concept
        for i in range(len(views)):
            for j in range(i):
                assert np.abs(views[i] - views[j]).mean() >= 0.03, (concept, paths[i].name, paths[j].name)


def test_slice_splits_are_class_disjoint(built):
    rows = _rows(built, "icons.csv")
    concepts = {split: {row["label"] for row in rows if row["split"] == split} for split in ("train", "val", "test")}
    assert all(concepts.values())
    assert not (concepts["train"] & concepts["val"] or concepts["train"] & concepts["test"])
    assert not concepts["val"] & concepts["test"]
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    assert all((built / row["path"]).is_file() and not Path(row["path"]).is_absolute() for row in rows)


def test_slice_rebuild_gives_the_same_files(built, slice_folder, tmp_path):
    build.main(["--source", str(slice_folder), "--output", str(tmp_path), "--processes", "1"])
    first, second = (json.loads((folder / "manifest.json").read_text()) for folder in (built, tmp_path))
    assert first["sha256"] == second["sha256"]
    assert (built / "icons.csv").read_bytes() == (tmp_path / "icons.csv").read_bytes()
    other_seed = tmp_path / "seed1"
    build.main(["--source", str(slice_folder), "--output", str(other_seed), "--seed", "1"])
    assert json.loads((other_seed / "manifest.json").read_text())["sha256"] != first["sha256"]

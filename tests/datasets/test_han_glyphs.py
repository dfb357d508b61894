"""HanGlyphs on real fonts: the small CI set of Debian's CJK packages (``fetch_han_fonts.sh --small``).

The set holds a trap for each filter: Korean BM fonts that map every hanja to an empty glyph, Guseul (hanja
drawn as hangul, larger than the em), Ume S4/S5 faces that FreeType cannot run, and one design under several
names (Droid Sans Fallback = WenQuanYi Micro Hei, IPA Gothic = Takao Gothic, MMCedar = Motoya L Cedar).
Locally the tests skip when the set is absent; in CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import bz2
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pml_recallk.datasets import HanGlyphs
from pml_recallk.datasets.glyphs import han_table as han_table_module
from pml_recallk.datasets.glyphs.han_faces import IMAGE_SIZES

FONTS_ENV = "PML_RECALLK_HAN_TEST_FONTS"
FETCH = "bash benchmarks/fetch_han_fonts.sh --small DIR"

# The files the tests render (about 70k glyphs): each trap once, and enough designs for two-sided splits.
TEST_FILES = {
    "fonts-arphic-gbsn00lp": ["gbsn00lp.ttf"],
    "fonts-arphic-gkai00mp": ["gkai00mp.ttf"],
    "fonts-droid-fallback": ["DroidSansFallbackFull.ttf"],
    "fonts-wqy-microhei": ["wqy-microhei.ttc"],
    "fonts-ipafont-gothic": ["ipag.ttf"],
    "fonts-takao-gothic": ["TakaoGothic.ttf"],
    "fonts-motoya-l-cedar": ["MTLc3m.ttf"],
    "fonts-mmcedar": ["MMCedar.ttf"],
    "fonts-sawarabi-mincho": ["sawarabi-mincho-medium.ttf"],
    "fonts-smiley-sans": ["SmileySans-Oblique.ttf"],
    "fonts-horai-umefont": ["ume-pgs4.ttf", "ume-tmo3.ttf"],
    "fonts-woowa-bm": ["BMJUA_ttf.ttf"],
    "fonts-alee": ["Guseul.ttf"],
    "unicode-data": ["Unihan_OtherMappings.txt.bz2"],
}


def _small_set() -> Path:
    folder = os.environ.get(FONTS_ENV)
    path = Path(folder).expanduser() if folder else Path.home() / ".cache" / "pml-recallk" / "han-fonts-small"
    if not (path / "pkgs").is_dir():
        message = f"the small CJK font set is absent: run {FETCH} and set {FONTS_ENV}=DIR (looked in {path})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _link_files(source: Path, dest: Path, packages: dict[str, list[str]], copy: bool = False) -> Path:
    for package, names in packages.items():
        for name in names:
            found = sorted((source / "pkgs" / package).rglob(name))
            assert found, f"{name} is missing from {source}/pkgs/{package}: refetch with {FETCH}"
            target = dest / "pkgs" / package / found[0].relative_to(source / "pkgs" / package)
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(found[0], target)
            else:
                target.symlink_to(found[0])
    return dest


@pytest.fixture(scope="session")
def font_dir(tmp_path_factory) -> Path:
    return _link_files(_small_set(), tmp_path_factory.mktemp("han-fonts"), TEST_FILES)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("han-cache")


@pytest.fixture(scope="session")
def splits(font_dir, cache_dir) -> dict[str, HanGlyphs]:
    out = {s: HanGlyphs(s, font_dir=font_dir, cache_dir=cache_dir) for s in HanGlyphs.splits}
    out.update({f"{s}-all": HanGlyphs(s, font_dir=font_dir, cache_dir=cache_dir, images_per_class=None) for s in out})
    return out


def _tgh_positions(font_dir: Path) -> dict[str, int]:
    """The kTGH list position of each character, read plainly from the Unihan file."""
    path = next(font_dir.rglob("Unihan_OtherMappings.txt.bz2"))
    positions = {}
    for line in bz2.open(path, "rt", encoding="utf-8"):
        fields = line.rstrip("\n").split("\t")
        if len(fields) == 3 and fields[1] == "kTGH":
            positions[chr(int(fields[0][2:], 16))] = int(fields[2].split()[0].split(":")[1])
    return positions


def _normalised_l1(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.abs(a - b).sum() / (a.sum() + b.sum()))


# --- the filters, on real fonts ---


def test_traps_are_filtered(splits):
    dropped_faces = splits["train"].dropped_faces
    by_file = {Path(k.split("#")[0]).name: v for k, v in dropped_faces.items()}
    assert by_file["ume-pgs4.ttf"] == "FreeType fails on every glyph"
    assert by_file["BMJUA_ttf.ttf"] == "no usable render"  # every hanja it maps is blank
    assert "Guseul.ttf" in by_file  # its glyphs are hangul drawn beyond the em: none fits
    dropped = splits["train"].dropped
    assert dropped["blank"] >= 2000
    # Droid Sans Fallback and WenQuanYi Micro Hei draw most characters alike: one copy of each stays.
    assert dropped["same render as another face"] + dropped["near-duplicate of another face's render"] >= 5000
    files = {Path(p.split("#")[0]).name for s in splits.values() for p in s.font_paths}
    assert files.isdisjoint({"ume-pgs4.ttf", "BMJUA_ttf.ttf", "Guseul.ttf"})
    assert {"gbsn00lp.ttf", "ume-tmo3.ttf", "sawarabi-mincho-medium.ttf"} <= files


@pytest.mark.parametrize("split", ["train-all", "test-all", "pretrain-all"])
def test_images_have_ink_and_are_distinct(splits, split):
    data = splits[split]
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (32, 32)
    assert (data.images.max(axis=(1, 2)) >= 64).all()
    # Brute force: every two images of one class differ by at least 0.03 in normalised L1.
    rng = np.random.default_rng(0)
    for label in rng.choice(data.num_classes, 150, replace=False):
        rows = np.flatnonzero(data.labels == label)
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                assert _normalised_l1(data.images[rows[i]], data.images[rows[j]]) >= 0.03


def test_one_design_under_several_names_is_one_group(font_dir, cache_dir, splits):
    table = han_table_module.han_table(font_dir, 32, cache_dir)
    group_of = {Path(p.split("#")[0]).name: g for p, g in zip(table.face_paths, table.face_group)}
    assert group_of["DroidSansFallbackFull.ttf"] == group_of["wqy-microhei.ttc"]
    assert group_of["ipag.ttf"] == group_of["TakaoGothic.ttf"]
    assert group_of["MMCedar.ttf"] == group_of["MTLc3m.ttf"]
    assert group_of["gbsn00lp.ttf"] != group_of["gkai00mp.ttf"]  # Song and Kai: two designs
    assert len(set(group_of.values())) == len(table.group_names)


def test_consensus_flags_a_face_that_draws_other_characters(font_dir, cache_dir):
    """Real renders of the test fonts, plus a face that draws each character as another one."""
    table = han_table_module.han_table(font_dir, 32, cache_dir)
    chars, images, groups = [], [], []
    for face in np.unique(table.face_index):
        rows = np.flatnonzero(table.face_index == face)
        chars.append(table.char_index[rows])
        images.append(table.images[rows])
        groups.append(table.face_group[face])
    shuffled = np.random.default_rng(0).permutation(len(chars[0]))
    chars.append(chars[0])
    images.append(images[0][shuffled])
    groups.append(max(groups) + 1)
    scores = han_table_module.consensus_score(chars, images, np.array(groups), len(table.characters))
    assert (scores[:-1] >= han_table_module.MIN_CONSENSUS_SCORE).all(), scores
    assert abs(scores[-1] - 0.5) < 0.1


# --- the splits ---


def test_characters_and_designs_are_disjoint(splits, font_dir):
    positions = _tgh_positions(font_dir)
    chars = {s: set(splits[s].characters) for s in HanGlyphs.splits}
    groups = {s: set(splits[f"{s}-all"].group_ids.tolist()) for s in HanGlyphs.splits}
    assert not chars["train"] & chars["test"]
    assert not chars["pretrain"] & (chars["train"] | chars["test"])
    assert all(positions[c] <= 3500 for c in chars["train"] | chars["test"])
    assert all(3500 < positions[c] <= 8105 for c in chars["pretrain"])
    assert len(chars["train"]) + len(chars["test"]) >= 3000
    assert not groups["train"] & groups["test"]
    assert groups["pretrain"] <= groups["train"]
    for s in HanGlyphs.splits:  # group ids and group names agree
        data = splits[s]
        assert len({(g, n) for g, n in zip(data.group_ids.tolist(), data.design_groups)}) == len(set(data.group_ids))


@pytest.mark.parametrize("split", HanGlyphs.splits)
def test_labels_and_items(splits, split):
    data = splits[split]
    assert data.labels.dtype == np.int64
    assert set(np.unique(data.labels)) == set(range(data.num_classes)) and np.all(np.diff(data.labels) >= 0)
    assert isinstance(data.characters, tuple) and all(isinstance(c, str) and len(c) == 1 for c in data.characters)
    assert np.bincount(data.labels).min() >= 2
    image, label = data[len(data) // 2]
    assert image.mode == "L" and image.size == (32, 32) and label == data.labels[len(data) // 2]
    assert np.array_equal(np.asarray(image), data.images[len(data) // 2])


@pytest.mark.parametrize("split", HanGlyphs.splits)
@pytest.mark.parametrize("cap", [2, 3, 8])
def test_cap_takes_distinct_design_groups_first(splits, font_dir, cache_dir, split, cap):
    full = splits[f"{split}-all"]
    capped = (
        splits[split] if cap == 8 else HanGlyphs(split, font_dir=font_dir, cache_dir=cache_dir, images_per_class=cap)
    )
    assert capped.characters == full.characters
    full_rows = {img.tobytes(): i for i, img in enumerate(full.images)}
    for label in range(full.num_classes):
        available = full.group_ids[full.labels == label]
        chosen = np.flatnonzero(capped.labels == label)
        assert len(chosen) == min(cap, len(available))
        assert len(set(capped.group_ids[chosen])) == min(len(chosen), len(set(available)))
        for i in chosen:  # every capped image is one of the uncapped ones, of the same class
            assert full.labels[full_rows[capped.images[i].tobytes()]] == label


def test_seed_decides_the_split(font_dir, cache_dir, splits):
    again = HanGlyphs("test", font_dir=font_dir, cache_dir=cache_dir, seed=0)
    assert again.characters == splits["test"].characters
    assert np.array_equal(again.images, splits["test"].images) and np.array_equal(again.labels, splits["test"].labels)
    other = HanGlyphs("test", font_dir=font_dir, cache_dir=cache_dir, seed=1)
    assert other.characters != splits["test"].characters


# --- the cache ---


@pytest.fixture
def tiny_fonts(tmp_path) -> Path:
    """Three small copied faces (so that touching one changes nothing shared) and the Unihan file."""
    names = ("fonts-sawarabi-mincho", "fonts-ipafont-gothic", "fonts-motoya-l-cedar", "unicode-data")
    files = {k: TEST_FILES[k] for k in names}
    return _link_files(_small_set(), tmp_path / "fonts", files, copy=True)


@pytest.fixture
def render_calls(monkeypatch) -> list[str]:
    calls = []
    real = han_table_module.render_face

    def counting(font_dir, face_path, *args):
        calls.append(Path(face_path).name)
        return real(font_dir, face_path, *args)

    monkeypatch.setattr(han_table_module, "render_face", counting)
    monkeypatch.setattr(han_table_module, "_LAST_TABLE", {})
    return calls


def test_cache_is_reused_and_invalidated(tiny_fonts, tmp_path, render_calls, monkeypatch):
    cache = tmp_path / "cache"
    first = HanGlyphs("train", font_dir=tiny_fonts, cache_dir=cache, num_workers=1)
    assert sorted(render_calls) == ["MTLc3m.ttf", "ipag.ttf", "sawarabi-mincho-medium.ttf"]
    han_table_module._LAST_TABLE.clear()
    again = HanGlyphs("train", font_dir=tiny_fonts, cache_dir=cache, num_workers=1, seed=3, images_per_class=2)
    assert len(render_calls) == 3  # another seed and cap: read from the cache
    assert len(list(cache.glob("table-*.npz"))) == 1
    assert set(again.characters) != set(first.characters)

    ipag = next(tiny_fonts.rglob("ipag.ttf"))
    os.utime(ipag, ns=(ipag.stat().st_atime_ns, ipag.stat().st_mtime_ns + 10**9))
    HanGlyphs("train", font_dir=tiny_fonts, cache_dir=cache, num_workers=1)
    assert render_calls[3:] == ["ipag.ttf"]  # only the touched face renders again
    assert len(list(cache.glob("table-*.npz"))) == 2

    monkeypatch.setattr(han_table_module, "DUPLICATE_L1", 0.02)
    HanGlyphs("train", font_dir=tiny_fonts, cache_dir=cache, num_workers=1)
    assert len(render_calls) == 4 and len(list(cache.glob("table-*.npz"))) == 3  # new table, no new render

    big = HanGlyphs("train", font_dir=tiny_fonts, cache_dir=cache, num_workers=1, image_size=48)
    assert len(render_calls) == 7 and big.images.shape[1:] == (48, 48) and big[0][0].size == (48, 48)


def test_default_folders_come_from_the_environment(font_dir, cache_dir, splits, tmp_path, monkeypatch, render_calls):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "han-glyphs").symlink_to(cache_dir)
    monkeypatch.setenv("PML_RECALLK_HAN_FONTS", str(font_dir))
    monkeypatch.setenv("PML_RECALLK_CACHE", str(tmp_path / "cache"))
    data = HanGlyphs("test")
    assert data.font_dir == font_dir and not render_calls  # read from the session's cache, through the link
    assert np.array_equal(data.images, splits["test"].images)


# --- bad input ---


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"images_per_class": 1}, ValueError, "images_per_class must be >= 2"),
        ({"images_per_class": 2.5}, TypeError, "images_per_class must be an int"),
        ({"image_size": 64}, ValueError, r"image_size must be one of \(32, 48\)"),
        ({"image_size": "32"}, TypeError, "image_size must be an int"),
        ({"seed": "0"}, TypeError, "seed must be an int"),
        ({"seed": 1.0}, TypeError, "seed must be an int"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"images_per_class": True}, TypeError, "images_per_class must be an int"),
        ({"split": "val"}, ValueError, "split must be one of"),
        ({"transform": "resize"}, TypeError, "transform must be callable"),
        ({"font_dir": 3}, TypeError, "font_dir must be a folder path"),
    ],
)
def test_bad_arguments(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        HanGlyphs(**{"font_dir": tmp_path, "cache_dir": tmp_path, **kwargs})


def test_missing_or_empty_font_folder_names_the_fetch_script(tmp_path):
    for folder in (tmp_path / "absent", tmp_path):
        with pytest.raises(FileNotFoundError, match=r"bash \S*pml_recallk/scripts/fetch_han_fonts\.sh") as info:
            HanGlyphs(font_dir=folder, cache_dir=tmp_path / "cache")
        assert "\n" not in str(info.value)


def test_foreign_font_folder(tmp_path, font_dir):
    from pml_recallk.datasets.glyphs.fonts import matplotlib_font_dir

    shutil.copy(matplotlib_font_dir() / "DejaVuSans.ttf", tmp_path / "DejaVuSans.ttf")
    with pytest.raises(FileNotFoundError, match="no Unihan kTGH list"):
        HanGlyphs(font_dir=tmp_path, cache_dir=tmp_path / "cache")
    shutil.copy(next(font_dir.rglob("Unihan_OtherMappings.txt.bz2")), tmp_path)
    with pytest.raises(ValueError, match="not a CJK font folder"):
        HanGlyphs(font_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_protocol_attributes():
    assert HanGlyphs.splits == ("train", "test", "pretrain")
    assert HanGlyphs.recall_k_values == (1, 2, 4, 8, 16, 32)
    assert IMAGE_SIZES == (32, 48)


@pytest.mark.parametrize("args", [["--bogus", "x"], ["a", "b"], ["--where", "a"]])  # none: the default folder
def test_fetch_script_refuses_bad_arguments(args):
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fetch_han_fonts.sh"
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr

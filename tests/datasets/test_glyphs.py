"""Glyphs: the embedded data set rendered from matplotlib's fonts (no system fonts needed).

Renders are checked with plain PIL code written here (ink boxes, crops, pixel distances), not with the
module's own helpers.
"""

import os
import shutil
import unicodedata
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import pml_recallk.datasets.glyphs.latin as glyphs_module
from pml_recallk.datasets import Glyphs
from pml_recallk.datasets.glyphs import fonts as font_files
from pml_recallk.datasets.glyphs import latin_faces as fonts
from pml_recallk.datasets.glyphs import render
from pml_recallk.datasets.glyphs import table as table_module
from pml_recallk.datasets.glyphs.latin import DEFAULT_CHARACTERS, LATIN_LOWER, LATIN_UPPER, LOOKALIKES

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("glyph_cache")


@pytest.fixture(scope="module")
def splits(cache_dir):
    return {split: Glyphs(split, cache_dir=cache_dir) for split in ("train", "test")}


def ink_box(image: np.ndarray, level: int = 128) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(image >= level)
    return rows.min(), rows.max(), cols.min(), cols.max()


def ink_crop(image: np.ndarray) -> np.ndarray | None:
    rows, cols = np.nonzero(image > 0)
    return image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] if len(rows) else None


def distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a - b) ** 2).sum() / ((a**2).sum() + (b**2).sum()))


def draw(font: ImageFont.FreeTypeFont, char: str, size: int = 48) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).text((size // 2, 3 * size // 4), char, fill=255, font=font, anchor="ms")
    return np.asarray(image)


# --- the split ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_characters_are_disjoint_between_splits(cache_dir, seed):
    train, test = (Glyphs(split, seed=seed, cache_dir=cache_dir) for split in ("train", "test"))
    assert set(train.characters).isdisjoint(test.characters)
    assert set(train.characters) | set(test.characters) <= set(DEFAULT_CHARACTERS)
    # about 60/40, and every script and case on both sides
    assert 0.5 < len(train.characters) / (len(train.characters) + len(test.characters)) < 0.7
    for characters in (train.characters, test.characters):
        kinds = {(unicodedata.name(c).split()[0], unicodedata.category(c)) for c in characters}
        assert len(kinds) == 7  # Latin/Greek/Cyrillic × capital/small, digits


def test_same_seed_same_data_and_other_seed_other_split(tmp_path, cache_dir, splits):
    # A fresh cache renders everything again: the arrays must come out identical.
    again = Glyphs("train", cache_dir=tmp_path)
    assert np.array_equal(again.images, splits["train"].images)
    assert np.array_equal(again.labels, splits["train"].labels)
    assert again.fonts == splits["train"].fonts and again.characters == splits["train"].characters
    other = Glyphs("train", seed=1, cache_dir=cache_dir)
    assert other.characters != splits["train"].characters


def test_matplotlib_families_are_shared_and_few(splits):
    # 7 families < MIN_FAMILIES_FOR_DISJOINT_SPLIT: both splits draw from all faces.
    train, test = splits["train"], splits["test"]
    assert not train.disjoint_families and not test.disjoint_families
    assert set(train.families) == set(test.families)
    assert len(set(train.families)) == 7
    assert {"DejaVu Sans", "DejaVu Sans Mono", "DejaVu Serif", "STIXGeneral"} <= set(train.families)


def test_forced_disjoint_families(cache_dir):
    train, test = (Glyphs(split, cache_dir=cache_dir, disjoint_families=True) for split in ("train", "test"))
    assert train.disjoint_families
    assert set(train.families).isdisjoint(test.families)
    assert set(train.characters).isdisjoint(test.characters)
    assert min(np.bincount(train.labels).min(), np.bincount(test.labels).min()) >= 4


def test_families_split_automatically_when_there_are_enough(cache_dir, monkeypatch):
    monkeypatch.setattr(glyphs_module, "MIN_FAMILIES_FOR_DISJOINT_SPLIT", 4)
    train, test = (Glyphs(split, cache_dir=cache_dir) for split in ("train", "test"))
    assert train.disjoint_families
    assert set(train.families).isdisjoint(test.families)


def test_styles_of_a_design_are_one_family(splits):
    family_of = dict(zip(splits["train"].fonts, splits["train"].families))
    assert family_of["DejaVu Sans Bold"] == family_of["DejaVu Sans Book"] == family_of["DejaVu Sans Oblique"]
    assert family_of["DejaVu Sans Mono Book"] != family_of["DejaVu Sans Book"]
    assert family_of["Computer Modern Roman Bold"] == family_of["Computer Modern Roman Regular"]


@pytest.mark.parametrize("one_face_per_family", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_class_has_at_least_four_samples(cache_dir, split, one_face_per_family):
    data = Glyphs(split, cache_dir=cache_dir, one_face_per_family=one_face_per_family)
    counts = np.bincount(data.labels, minlength=data.num_classes)
    assert counts.min() >= 4


def test_one_face_per_family_keeps_the_plain_style(cache_dir):
    data = Glyphs("train", cache_dir=cache_dir, one_face_per_family=True)
    face_of = dict(zip(data.families, data.fonts))
    assert len(set(data.fonts)) == len(set(data.families)) == 7
    assert face_of["DejaVu Sans"] == "DejaVu Sans Book"
    assert face_of["Computer Modern Roman"] == "Computer Modern Roman Regular"


# --- items and labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_attribute_matches_items(splits, split):
    data = splits[split]
    assert isinstance(data.labels, np.ndarray) and data.labels.dtype == np.int64 and data.labels.ndim == 1
    assert len(data.labels) == len(data) == len(data.fonts) == len(data.families) == len(data.images)
    assert set(data.labels.tolist()) == set(range(data.num_classes)) and data.num_classes == len(data.characters)
    for i in range(0, len(data), 7):
        image, label = data[i]
        assert label == data.labels[i] and isinstance(label, int)
        assert image.mode == "L" and image.size == (32, 32)
        assert np.array_equal(np.asarray(image), data.images[i])


def test_transform_is_applied(cache_dir):
    data = Glyphs("test", cache_dir=cache_dir, transform=lambda image: np.asarray(image, dtype=np.float32) / 255)
    image, _ = data[0]
    assert image.dtype == np.float32 and image.shape == (32, 32) and image.max() == pytest.approx(1.0)


@pytest.mark.parametrize("image_size", [24, 48])
def test_image_size(cache_dir, image_size):
    data = Glyphs("test", cache_dir=cache_dir, image_size=image_size)
    assert data.images.shape[1:] == (image_size, image_size) and data[0][0].size == (image_size, image_size)


# --- what the renders look like ------------------------------------------------------------------------------


def test_no_look_alikes_in_the_default_alphabet():
    """No two default characters render alike in any matplotlib text face; the dropped ones do."""
    faces = sorted(MPL_FONTS.glob("DejaVuSans*.ttf")) + sorted(MPL_FONTS.glob("DejaVuSerif*.ttf"))
    faces = [f for f in faces + sorted(MPL_FONTS.glob("STIXGeneral*.ttf")) if "Display" not in f.name]
    assert len(faces) == 16
    chars = DEFAULT_CHARACTERS + "".join(LOOKALIKES)
    closest = np.ones((len(chars), len(chars)))
    for path in faces:
        font = ImageFont.truetype(str(path), 28, layout_engine=ImageFont.Layout.BASIC)
        x = np.stack([draw(font, c).ravel() for c in chars]).astype(np.float64)
        energy = (x**2).sum(1)
        # ‖a − b‖² / (‖a‖² + ‖b‖²) for all pairs at once
        pairwise = (energy[:, None] + energy[None, :] - 2 * x @ x.T) / (energy[:, None] + energy[None, :])
        closest = np.minimum(closest, pairwise)
    np.fill_diagonal(closest, 1.0)
    n = len(DEFAULT_CHARACTERS)
    # Distinct letters such as Ш and Щ stay above 0.01; identical drawings give 0.
    assert closest[:n, :n].min() > 0.005
    # The check can fail: Latin A and Greek Α, Cyrillic а and Latin a are drawn identically.
    assert closest[chars.index("A"), chars.index("Α")] < 0.005 and closest[chars.index("a"), chars.index("а")] < 0.005
    sans = ImageFont.truetype(str(MPL_FONTS / "DejaVuSans.ttf"), 28, layout_engine=ImageFont.Layout.BASIC)
    assert distance(draw(sans, "A"), draw(sans, "Α")) < 0.005 < distance(draw(sans, "Ш"), draw(sans, "Щ"))
    for dropped, kept_char in LOOKALIKES.items():
        assert dropped not in DEFAULT_CHARACTERS and kept_char in DEFAULT_CHARACTERS


def test_default_alphabet_contents():
    assert len(DEFAULT_CHARACTERS) == len(set(DEFAULT_CHARACTERS)) == 121
    assert set(LATIN_UPPER) <= set(DEFAULT_CHARACTERS) and "l" not in DEFAULT_CHARACTERS
    assert {"0", "1", "Α", "А", "о", "ο"}.isdisjoint(DEFAULT_CHARACTERS)


@pytest.mark.parametrize("split", ["train", "test"])
def test_samples_are_neither_blank_nor_placeholder_boxes(splits, split):
    data = splits[split]
    notdef = {}
    for path in set(data.font_paths):
        font = ImageFont.truetype(path, 22, layout_engine=ImageFont.Layout.BASIC)
        notdef[path] = ink_crop(draw(font, "\U0010fffd"))  # private use: the face's .notdef box
    for image, path in zip(data.images, data.font_paths):
        assert (image >= 128).sum() >= 4
        crop, box = ink_crop(image), notdef[path]
        assert box is None or crop.shape != box.shape or np.abs(crop.astype(int) - box).max() > 64
    # Within a face no two characters are drawn the same (tofu would repeat one box for all).
    by_face = {}
    for image, font in zip(data.images, data.fonts):
        by_face.setdefault(font, set()).add(image.tobytes())
    assert sum(len(v) for v in by_face.values()) == len(data)


def test_symbol_maths_and_placeholder_faces_are_left_out(splits):
    faces = set(splits["train"].fonts) | set(splits["test"].fonts)
    assert len(faces) == 21  # 12 DejaVu, 4 STIXGeneral, cmr/cmb/cmti/cmss/cmtt
    for name in faces:
        assert not any(bad in name for bad in ("cmex", "cmsy", "cmmi", "STIXSize", "NonUni", "Last Resort"))
        assert "Display" not in name  # DejaVu's Display faces only hold a few maths glyphs


def test_fixed_size_and_baseline(tmp_path):
    """Case and size stay visible: one baseline for all glyphs, small letters lower than capitals."""
    chars = LATIN_UPPER + LATIN_LOWER
    data = {s: Glyphs(s, cache_dir=tmp_path, characters=chars, disjoint_families=False) for s in ("train", "test")}
    boxes = {}
    for part in data.values():
        for image, label, font in zip(part.images, part.labels, part.fonts):
            if font == "DejaVu Sans Book":
                boxes[part.characters[label]] = ink_box(image)
    assert len(boxes) == 52
    flat = [c for c in "ABDEFHIKLMNPRTUVWXYZabdefhiklmnrtuvwxz" if c in boxes]  # no overshoot, no descender
    baseline = boxes["H"][1]
    assert all(abs(boxes[c][1] - baseline) <= 1 for c in flat)
    assert all(boxes[c][1] >= baseline + 3 for c in "gjpqy")
    assert all(boxes[c][0] >= boxes["H"][0] + 3 for c in "acemnorsuvwxz")  # x-height below cap height
    assert boxes["o"][1] - boxes["o"][0] < boxes["O"][1] - boxes["O"][0] - 2  # "o" is not a scaled "O"


# --- cache -----------------------------------------------------------------------------------------------------


class _NoRendering:
    def __init__(self, *args, **kwargs):
        raise AssertionError("rendered although the cache holds the table")


def test_cache_is_used_on_the_second_construction(cache_dir, splits, monkeypatch, tmp_path):
    assert len(list(Path(cache_dir).glob("glyphs-32px-*.npz"))) == 1
    assert not list(Path(cache_dir).glob("*.tmp"))
    monkeypatch.setattr(fonts, "FaceRenderer", _NoRendering)
    again = Glyphs("train", cache_dir=cache_dir)
    assert np.array_equal(again.images, splits["train"].images)
    Glyphs("test", seed=3, cache_dir=cache_dir, one_face_per_family=True)  # any split and seed: same table
    with pytest.raises(AssertionError, match="rendered although"):  # the patch is effective
        Glyphs("train", cache_dir=tmp_path)


def test_cache_location_from_environment(cache_dir, splits, monkeypatch, tmp_path):
    (tmp_path / "glyphs").mkdir()
    for path in Path(cache_dir).glob("glyphs-32px-*.npz"):
        shutil.copy(path, tmp_path / "glyphs" / path.name)
    monkeypatch.setenv("PML_RECALLK_CACHE", str(tmp_path))
    monkeypatch.setattr(fonts, "FaceRenderer", _NoRendering)
    assert np.array_equal(Glyphs("train").labels, splits["train"].labels)


def test_damaged_cache_file_is_rendered_again(cache_dir, splits, tmp_path):
    for path in Path(cache_dir).glob("glyphs-32px-*.npz"):
        (tmp_path / path.name).write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = Glyphs("train", cache_dir=tmp_path)
    assert np.array_equal(again.images, splits["train"].images)


# --- font folders ----------------------------------------------------------------------------------------------


def test_font_folder_with_links_and_copies(tmp_path, cache_dir):
    fonts = tmp_path / "fonts"
    (fonts / "sub").mkdir(parents=True)
    os.symlink(MPL_FONTS / "DejaVuSans.ttf", fonts / "DejaVuSans.ttf")
    shutil.copy(MPL_FONTS / "DejaVuSans.ttf", fonts / "sub" / "copy-of-DejaVuSans.ttf")
    for name in ("DejaVuSerif.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf", "cmex10.ttf", "cmsy10.ttf"):
        os.symlink(MPL_FONTS / name, fonts / "sub" / name)
    kwargs = {"cache_dir": cache_dir, "disjoint_families": True, "min_faces_per_character": 1}
    data = Glyphs("train", font_dirs=[fonts], **kwargs)
    test = Glyphs("test", font_dirs=str(fonts), **kwargs)  # a single folder may be given as a string
    assert set(data.fonts) | set(test.fonts) == {
        "DejaVu Sans Book", "DejaVu Serif Book", "DejaVu Sans Mono Book", "STIXGeneral Regular"
    }  # fmt: skip
    assert set(data.families).isdisjoint(test.families)
    assert sum(data.dropped_faces.values()) == 3  # the copy, cmex10, cmsy10


def _derived_font(tmp_path: Path, family: str, remap: dict[str, str]) -> None:
    """A copy of DejaVu Sans named ``family`` whose characters ``remap`` keys draw the glyph of the values."""
    from fontTools.ttLib import TTFont

    font = TTFont(MPL_FONTS / "DejaVuSans.ttf")
    for table in font["cmap"].tables:
        if table.isUnicode():
            for char, source in remap.items():
                if ord(source) in table.cmap:
                    table.cmap[ord(char)] = table.cmap[ord(source)]
    for record in font["name"].names:
        if record.nameID in (1, 4, 16):
            record.string = family
        elif record.nameID == 6:
            record.string = family.replace(" ", "")
    font.save(tmp_path / f"{family.replace(' ', '')}.ttf")


def test_caps_symbol_and_placeholder_faces_are_filtered(tmp_path):
    pytest.importorskip("fontTools")
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(MPL_FONTS / "DejaVuSans.ttf", fonts)
    small_capitals = "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘqʀꜱᴛᴜᴠᴡxʏᴢ"
    _derived_font(fonts, "Alpha Test", dict(zip(LATIN_LOWER, LATIN_UPPER)))  # all capitals
    _derived_font(fonts, "Beta Test", dict(zip(LATIN_LOWER, small_capitals)))  # small capitals
    _derived_font(fonts, "Gamma Test", dict(zip(LATIN_LOWER, "αβψδεφγηιξκλμνοπ;ρστθωςχυζ")))  # symbol-like names
    cyrillic = [c for c in DEFAULT_CHARACTERS if "CYRILLIC" in unicodedata.name(c)]
    _derived_font(fonts, "Delta Test", dict.fromkeys(cyrillic, "■"))  # one box for every Cyrillic letter

    kwargs = {"font_dirs": fonts, "cache_dir": tmp_path, "disjoint_families": False, "min_faces_per_character": 1}
    data = [Glyphs(split, **kwargs) for split in ("train", "test")]
    assert set(data[0].fonts) == {"DejaVu Sans Book", "Delta Test Book"}
    reasons = " | ".join(data[0].dropped_faces)
    assert "Latin letters" in reasons and "capitals" in reasons and "symbol" in reasons
    for part in data:
        delta = [part.characters[label] for label, font in zip(part.labels, part.fonts) if font == "Delta Test Book"]
        assert delta and not any("CYRILLIC" in unicodedata.name(c) for c in delta)


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "val"}, ValueError, "split must be one of"),
        ({"image_size": 8}, ValueError, "image_size"),
        ({"image_size": 32.0}, TypeError, "image_size"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": None}, TypeError, "seed"),  # None would draw a random split
        ({"test_fraction": float("nan")}, ValueError, "test_fraction"),
        ({"test_fraction": "0.4"}, TypeError, "test_fraction"),
        ({"min_faces_per_character": 2.0}, TypeError, "min_faces_per_character"),
        ({"one_face_per_family": 1}, TypeError, "one_face_per_family"),
        ({"disjoint_families": "yes"}, TypeError, "disjoint_families"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"min_faces_per_character": 0}, ValueError, "min_faces_per_character"),
        ({"characters": "AAB"}, ValueError, "must not repeat"),
        ({"characters": ["A", "BC"]}, TypeError, "single-character"),
        ({"characters": "A B"}, ValueError, "visible"),
        ({"transform": "resize"}, TypeError, "transform"),
        ({"font_dirs": []}, ValueError, "font_dirs is empty"),
        ({"min_faces_per_character": 30}, ValueError, "min_faces_per_character"),
    ],
)
def test_bad_arguments(cache_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        Glyphs(**{"cache_dir": cache_dir, **kwargs})


def test_missing_empty_and_unusable_font_folders(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        Glyphs(font_dirs=[tmp_path / "missing"], cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no fonts here")
    with pytest.raises(ValueError, match="no .ttf/.otf/.ttc font files"):
        Glyphs(font_dirs=[tmp_path / "empty"], cache_dir=tmp_path)
    (tmp_path / "symbols").mkdir()
    for name in ("cmex10.ttf", "cmsy10.ttf", "STIXSizOneSymReg.ttf"):
        shutil.copy(MPL_FONTS / name, tmp_path / "symbols")
    with pytest.raises(ValueError, match="usable Latin text face"):
        Glyphs(font_dirs=[tmp_path / "symbols"], cache_dir=tmp_path)
    (tmp_path / "one_family").mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"):
        shutil.copy(MPL_FONTS / name, tmp_path / "one_family")
    with pytest.raises(ValueError, match="at least 2 font families"):
        Glyphs(font_dirs=[tmp_path / "one_family"], cache_dir=tmp_path, disjoint_families=True)


def test_docstring_examples(cache_dir, monkeypatch, tmp_path):
    import doctest

    (tmp_path / "glyphs").mkdir()
    for path in Path(cache_dir).glob("glyphs-32px-*.npz"):
        shutil.copy(path, tmp_path / "glyphs" / path.name)
    monkeypatch.setenv("PML_RECALLK_CACHE", str(tmp_path))  # the examples use the default cache
    for module in (glyphs_module, fonts, font_files, render, table_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0

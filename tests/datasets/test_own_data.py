"""A user's own images (pml_recallk.datasets.generic, .images): both formats, image modes, and every bad-data case."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from own_data import make_tree, write_csv
from PIL import Image

from pml_recallk.datasets import CsvImages, ImageFolder, dataset_class, load_image
from pml_recallk.datasets.images import check_images, to_rgb_or_l


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_RECALLK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")


# ----------------------------------------------------------------------------------------- image modes


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, size=(30, 40)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)  # the full 16-bit range → 0..255
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert len(np.unique(np.asarray(image))) > 200  # PIL's convert("L") would leave a few values (case L14)


def test_32_bit_float_image_is_scaled_from_0_1(tmp_path):
    values = np.random.default_rng(1).random((8, 9)).astype(np.float32)
    image = to_rgb_or_l(Image.fromarray(values, mode="F"))
    np.testing.assert_array_equal(np.asarray(image), np.rint(values.astype(np.float64) * 255).astype(np.uint8))


def test_cmyk_is_converted_like_the_cmyk_formula(tmp_path):
    cmyk = np.random.default_rng(2).integers(0, 256, size=(6, 7, 4)).astype(np.uint8)
    image = load_image(_saved(Image.fromarray(cmyk, mode="CMYK"), tmp_path / "c.tif"))
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    # Without a colour profile: R = (255 − C)(255 − K) / 255, likewise G from M and B from Y.
    expected = np.stack([(255 - x) * (255 - k) / 255 for x in (c, m, y)], axis=-1)
    assert image.mode == "RGB"
    np.testing.assert_allclose(np.asarray(image).astype(np.float64), expected, atol=1)


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, size=(5, 6, 4)).astype(np.uint8)
    image = load_image(_saved(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    alpha = rgba[..., 3:].astype(np.float64) / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
    np.testing.assert_allclose(np.asarray(image).astype(np.float64), expected, atol=1)
    la = rgba[..., [0, 3]]
    gray = load_image(_saved(Image.fromarray(la, "LA"), tmp_path / "b.png"))
    expected = la[..., 0] * (la[..., 1] / 255) + 255 * (1 - la[..., 1] / 255)
    assert gray.mode == "L"
    np.testing.assert_allclose(np.asarray(gray).astype(np.float64), expected, atol=1)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    palette = [255, 0, 0, 0, 0, 255, 10, 20, 30]  # red, blue, dark
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.info["transparency"] = 1  # blue is transparent
    loaded = load_image(_saved(image, tmp_path / "p.png"))
    colours = np.array(palette).reshape(3, 3)
    expected = colours[indices]
    expected[indices == 1] = 255  # the transparent entry shows the white background
    np.testing.assert_array_equal(np.asarray(loaded), expected)


def _saved(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------- image folder


def test_image_folder_with_train_test_and_val(tmp_path):
    rows = make_tree(tmp_path / "d", classes=6, val=True)
    train, val, test = (ImageFolder(tmp_path / "d", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (10, 5, 15)
    assert train.class_names == ["class_00", "class_01"] and val.class_names == ["class_02"]
    assert ImageFolder.available_splits({"root": str(tmp_path / "d")}) == ("train", "test", "val")
    image, label = test[0]
    assert image.mode == "RGB" and label == 0
    assert [p.relative_to(tmp_path / "d").as_posix() for p in test.image_paths] == [
        r[0] for r in rows if r[2] == "test"
    ]


def test_flat_image_folder_is_split_by_a_seeded_rule(tmp_path):
    make_tree(tmp_path / "d", classes=8, layout="flat")
    train = ImageFolder(tmp_path / "d", "train", test_fraction=0.25, seed=3)
    test = ImageFolder(tmp_path / "d", "test", test_fraction=0.25, seed=3)
    # The rule, written out: the sorted class names permuted by default_rng(seed), the first round(0.25 × 8) to test.
    names = sorted(f"class_{c:02d}" for c in range(8))
    order = np.random.default_rng(3).permutation(8)
    assert test.class_names == sorted(names[i] for i in order[:2])
    assert set(train.class_names) == set(names) - set(test.class_names)
    assert ImageFolder(tmp_path / "d", "test", test_fraction=0.25, seed=4).class_names != test.class_names or True


def test_hidden_files_and_other_extensions_are_ignored_and_case_does_not_matter(tmp_path):
    make_tree(tmp_path / "d", classes=4, per_class=2)
    folder = tmp_path / "d" / "train" / "class_00"
    Image.new("RGB", (8, 8)).save(folder / "UPPER.JPG")
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    (tmp_path / "d" / "train" / ".thumbnails").mkdir()
    data = ImageFolder(tmp_path / "d", "train")
    assert sorted(p.name for p in data.image_paths if p.parent == folder) == ["UPPER.JPG", "img_0.png", "img_1.png"]


def test_grayscale_collection_has_one_channel_and_rgb_three(tmp_path):
    make_tree(tmp_path / "gray", mode="L")
    make_tree(tmp_path / "rgb", mode="RGB")
    assert ImageFolder.data_channels({"root": str(tmp_path / "gray")}) == 1
    assert ImageFolder.data_channels({"root": str(tmp_path / "rgb")}) == 3
    assert ImageFolder(tmp_path / "gray", "train")[0][0].mode == "L"


def test_a_class_in_train_and_test_is_refused(tmp_path):
    make_tree(tmp_path / "d")
    (tmp_path / "d" / "test" / "class_00").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "test" / "class_00" / "x.png")
    with pytest.raises(ValueError, match=r"in both the 'train' and the 'test' split \('class_00'\)"):
        ImageFolder(tmp_path / "d", "train")


def test_train_without_test_folder_is_refused(tmp_path):
    make_tree(tmp_path / "d")
    (tmp_path / "d" / "test").rename(tmp_path / "d" / "testing")
    with pytest.raises(FileNotFoundError, match="has a train/ folder but no test/"):
        ImageFolder(tmp_path / "d", "train")


# ----------------------------------------------------------------------------------------------- csv


def test_csv_reads_paths_relative_to_its_folder_with_string_labels(tmp_path):
    rows = make_tree(tmp_path / "d")
    listing = write_csv(tmp_path / "d" / "listing.csv", rows)
    test = CsvImages(listing, "test")
    assert test.class_names == ["class_03", "class_04", "class_05"]
    assert [p.relative_to(tmp_path / "d").as_posix() for p in test.image_paths] == [
        r[0] for r in rows if r[2] == "test"
    ]
    assert test.is_query is None
    assert CsvImages.available_splits({"root": str(listing)}) == ("train", "test")


def test_csv_query_and_gallery_columns(tmp_path):
    rows = make_tree(tmp_path / "d")
    is_query = ["true" if r[2] == "test" and r[0].endswith(("0.png", "1.png")) else "false" for r in rows]
    is_gallery = ["0" if q == "true" and r[0].endswith("0.png") else "1" for q, r in zip(is_query, rows)]
    listing = write_csv(tmp_path / "l.csv", rows, "d/", {"is_query": is_query, "is_gallery": is_gallery})
    test = CsvImages(listing, "test")
    flags = [(q, g) for q, g, r in zip(is_query, is_gallery, rows) if r[2] == "test"]
    assert test.is_query.tolist() == [q == "true" for q, _ in flags]
    assert test.is_gallery.tolist() == [g == "1" for _, g in flags]
    assert CsvImages(listing, "train").is_query is None  # the training split trains on every row


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,label\na.png,x\n", r"line 1: the header path,label lacks the column\(s\) split"),
        ("path,label,split\na.png,x\n", "line 2: 2 fields, the header has 3"),
        ("path,label,split\na.png,,train\n", "line 2: the label field is empty"),
        ("path,label,split,is_query\na.png,x,test,1\n", "give both is_query and is_gallery"),
        ("path,label,split,is_query,is_gallery\na.png,x,test,maybe,1\n", "line 2: is_query must be true or false"),
        ("path,label,split,is_query,is_gallery\na.png,x,test,0,0\n", "line 2: is_query and is_gallery are both false"),
    ],
)
def test_malformed_csv_names_the_file_and_line(tmp_path, text, message):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        CsvImages(tmp_path / "l.csv", "train")


def test_non_utf8_csv_names_the_file_and_line(tmp_path):
    rows = make_tree(tmp_path / "d")
    listing = write_csv(tmp_path / "d" / "l.csv", rows)
    listing.write_bytes(listing.read_bytes() + "é.png,x,train\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"l\.csv, line {len(rows) + 2}: not UTF-8 text"):
        CsvImages(listing, "train")


def test_a_split_the_file_lacks_says_which_splits_it_has(tmp_path):
    listing = write_csv(tmp_path / "d" / "l.csv", make_tree(tmp_path / "d"))
    with pytest.raises(
        ValueError, match=r"no row of .*l\.csv is in the 'val' split; its splits are \['train', 'test'\]"
    ):
        CsvImages(listing, "val")


def test_a_csv_class_in_two_splits_is_refused(tmp_path):
    rows = make_tree(tmp_path / "d")
    rows[-1] = (rows[-1][0], "class_00", "test")
    with pytest.raises(ValueError, match="1 classes of .* are in both the 'train' and the 'test' split"):
        CsvImages(write_csv(tmp_path / "d" / "l.csv", rows), "test")


def test_a_file_listed_twice_is_refused_with_both_lines(tmp_path):
    rows = make_tree(tmp_path / "d")
    rows.append(("test/class_03/../class_03/img_0.png", "class_03", "test"))  # the same file, spelled otherwise
    with pytest.raises(ValueError, match=r"lists the image .* twice \(lines 17 and 32\)"):
        CsvImages(write_csv(tmp_path / "d" / "l.csv", rows), "test")


def test_classes_with_one_image_are_counted_and_kept_as_distractors(tmp_path):
    rows = make_tree(tmp_path / "d")
    rows.append(("lone.png", "lonely", "test"))
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "lone.png")
    with pytest.warns(
        UserWarning, match="1 of the 4 classes of the 'test' split .* have one image; they are kept as gallery"
    ):
        test = CsvImages(write_csv(tmp_path / "d" / "l.csv", rows), "test")
    assert "lonely" in test.class_names and len(test) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CsvImages(tmp_path / "d" / "l.csv", "train")  # no lone class there: no warning


# ---------------------------------------------------------------------------------------- damaged images


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "folder":
        path.unlink()
        path.mkdir()
    elif how == "symlink_loop":
        path.unlink()
        os.symlink(path.name, path)


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "cannot be read"),
        ("corrupt", "is not an image PIL can read"),
        ("empty", r"is empty \(0 bytes\)"),
        ("folder", "is a folder, not an image file"),
        ("symlink_loop", "cannot be read: Too many levels of symbolic links"),
    ],
)
@pytest.mark.parametrize("fmt", ["image_folder", "csv"])
def test_damaged_images_fail_at_construction_naming_the_file(tmp_path, how, message, fmt):
    if fmt == "image_folder" and how == "folder":
        pytest.skip("in an image folder a folder is a folder (a nested one is searched), not a listed image")
    rows = make_tree(tmp_path / "d", size=48)
    bad = tmp_path / "d" / "test" / "class_04" / "img_2.png"
    _damage(bad, how)
    with pytest.raises(ValueError, match=f"{bad.name}.*{message}|{message}.*{bad.name}") as info:
        if fmt == "csv":
            CsvImages(write_csv(tmp_path / "d" / "l.csv", rows), "test")
        else:
            ImageFolder(tmp_path / "d", "test")
    assert str(bad) in str(info.value)


def test_the_check_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    rows = make_tree(tmp_path / "d")
    paths = [tmp_path / "d" / r[0] for r in rows]
    opened = []
    import pml_recallk.datasets.images as images

    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda p: opened.append(p) or real(p))
    check_images(paths, tmp_path / "d", "t")
    assert len(opened) == len(paths)
    check_images(paths, tmp_path / "d", "t")
    assert len(opened) == len(paths)  # all from the cache
    Image.new("RGB", (9, 9)).save(paths[3])  # changed: size and mtime differ
    check_images(paths, tmp_path / "d", "t")
    assert opened[len(paths) :] == [paths[3]]
    assert list((tmp_path / "cache" / "image-checks").glob("*.json"))


def test_the_splits_and_the_channel_count_share_one_check(tmp_path, monkeypatch):
    make_tree(tmp_path / "d")
    opened = []
    import pml_recallk.datasets.images as images

    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda p: opened.append(p) or real(p))
    assert ImageFolder.data_channels({"root": str(tmp_path / "d")}) == 3  # decodes all 30 images
    ImageFolder(tmp_path / "d", "train")
    ImageFolder(tmp_path / "d", "test")
    assert len(opened) == 30  # the splits' checks found every image in the cache


# ------------------------------------------------------------------------- the paper loaders share the checks


def _cub_tree(root: Path, per_class: int = 2) -> None:
    lines, labels = [], []
    for class_id in (1, 2, 101, 102):
        folder = root / "images" / f"{class_id:03d}.Bird"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (class_id, i, 0)).save(folder / f"img_{i}.jpg")
            image_id = len(lines) + 1
            lines.append(f"{image_id} {folder.name}/img_{i}.jpg")
            labels.append(f"{image_id} {class_id}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")


def test_cub_refuses_one_file_under_two_ids(tmp_path):
    _cub_tree(tmp_path)
    with open(tmp_path / "images.txt", "a") as f:
        f.write("9 101.Bird/img_0.jpg\n")
    with open(tmp_path / "image_class_labels.txt", "a") as f:
        f.write("9 101\n")
    with pytest.raises(ValueError, match=r"lists the image .*101\.Bird/img_0\.jpg twice"):
        dataset_class("cub")(tmp_path, "test")


def test_sop_refuses_a_repeated_line(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "a" / f"{i}.JPG")
    lines = ["image_id class_id super_class_id path"] + [f"{i + 1} {i // 2 + 1} 1 a/{i}.JPG" for i in range(4)]
    (tmp_path / "Ebay_train.txt").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"lists the image .*0\.JPG twice \(lines 2 and 6\)"):
        dataset_class("sop")(tmp_path, "train")


def test_non_utf8_listing_names_the_file_and_line(tmp_path):
    _cub_tree(tmp_path)
    with open(tmp_path / "images.txt", "ab") as f:
        f.write("9 101.Bird/caf\u00e9.jpg\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"images\.txt, line 9: not UTF-8 text \(byte 0xe9"):
        dataset_class("cub")(tmp_path, "test")


def test_cub_with_no_image_of_a_split_says_so(tmp_path):
    _cub_tree(tmp_path)
    keep = [line for line in (tmp_path / "images.txt").read_text().splitlines() if int(line.split()[0]) <= 4]
    (tmp_path / "images.txt").write_text("\n".join(keep) + "\n")
    labels = (tmp_path / "image_class_labels.txt").read_text().splitlines()[:4]
    (tmp_path / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    with pytest.raises(ValueError, match=r"no image of .*images\.txt is in the 'test' split"):
        dataset_class("cub")(tmp_path, "test")


def test_the_paper_loaders_use_the_one_image_loader(tmp_path):
    _cub_tree(tmp_path)
    path = tmp_path / "images" / "101.Bird" / "img_0.jpg"
    values = np.random.default_rng(0).integers(0, 65536, size=(8, 8)).astype(np.uint16)
    path.unlink()
    Image.fromarray(values).save(path.with_suffix(".png"))
    path.with_suffix(".png").rename(path)  # a 16-bit PNG under a .jpg name, as a real listing may hold
    image, _ = dataset_class("cub")(tmp_path, "test")[0]
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image)[..., 0], expected)


def test_every_data_set_declares_the_protocol():
    for name in ("glyphs", "han_glyphs", "cub", "cars196", "sop", "inaturalist", "vehicleid", "image_folder", "csv"):
        cls = dataset_class(name)
        assert cls.channels in (0, 1, 3) and isinstance(cls.needs_root, bool) and 1 in cls.recall_k_values
        assert callable(cls.from_config) and callable(cls.available_splits) and callable(cls.data_channels)
    assert dataset_class("glyphs").channels == 1 and not dataset_class("glyphs").needs_root
    assert dataset_class("csv").channels == 0 and dataset_class("csv").needs_root


def test_a_csv_row_whose_image_is_missing_names_it_and_the_listing(tmp_path):
    rows = make_tree(tmp_path / "d")
    rows.append(("test/class_03/gone.png", "class_03", "test"))
    listing = write_csv(tmp_path / "d" / "l.csv", rows)
    with pytest.raises(FileNotFoundError, match=r"image .*gone\.png \(listed in .*l\.csv\) is missing"):
        CsvImages(listing, "test")

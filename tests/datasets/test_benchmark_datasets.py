"""The five benchmark loaders on small fake trees in each standard layout.

Every fake image is a solid colour unique to its file (PNG bytes, whatever the extension says: PIL reads the
content), so reading item i's pixel tells which file the loader opened. What each split must contain is
written plainly from the published protocol (e.g. CUB classes 1–100 train) in each tree builder below.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pml_recallk._checks import check_k_values
from pml_recallk.datasets import (
    CUB200,
    DATASET_CLASSES,
    Cars196,
    INaturalist2018,
    StanfordOnlineProducts,
    VehicleID,
    dataset_class,
    recall_k_values,
)
from pml_recallk.datasets.common import missing_files


@dataclass
class FakeTree:
    root: Path
    expected: dict[str, list[tuple[Path, int]]]  # split → [(image path, original class id)]
    colours: dict[Path, tuple[int, int, int]] = field(default_factory=dict)
    listing: dict[str, Path] = field(default_factory=dict)  # split → the file a bad line goes into


_colour_counter = itertools.count(1)


def write_image(tree: FakeTree, path: Path, grayscale: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = next(_colour_counter)
    if grayscale:  # an L-mode file must still come back as RGB
        colour = (n % 256,) * 3
        Image.new("L", (5, 4), colour[0]).save(path, format="PNG")
    else:
        colour = (n % 256, (n // 256) % 256, 77)
        Image.new("RGB", (5, 4), colour).save(path, format="PNG")
    tree.colours[path] = colour


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------------------------- tree builders


def make_cub(tmp_path: Path) -> FakeTree:
    root = tmp_path / "CUB_200_2011"
    tree = FakeTree(root, {"train": [], "test": []})
    images, labels = [], []
    image_id = 0
    for class_id, count in [(1, 3), (2, 1), (57, 2), (100, 2), (101, 2), (150, 1), (200, 3)]:
        folder = f"{class_id:03d}.Bird_{class_id}"
        for i in range(count):
            image_id += 1
            relative = f"{folder}/Bird_{class_id}_{i:04d}_{image_id}.jpg"
            write_image(tree, root / "images" / relative, grayscale=image_id == 2)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            tree.expected["train" if class_id <= 100 else "test"].append((root / "images" / relative, class_id))
    write_lines(root / "images.txt", images)
    write_lines(root / "image_class_labels.txt", labels[::-1])  # another order: the loader must join on ids
    tree.listing = {"train": root / "image_class_labels.txt", "test": root / "image_class_labels.txt"}
    return tree


def make_cars(tmp_path: Path) -> FakeTree:
    from scipy.io import savemat

    root = tmp_path / "cars196"
    tree = FakeTree(root, {"train": [], "test": []})
    records = []
    for class_id, count, test_flag in [(1, 2, 0), (5, 1, 1), (98, 2, 1), (99, 3, 0), (120, 1, 1), (196, 2, 0)]:
        for _ in range(count):
            relative = f"car_ims/{len(records) + 1:06d}.jpg"
            write_image(tree, root / relative)
            records.append((relative, class_id, test_flag))
            # The annotation's own test flag is the classification split; metric learning splits by class.
            tree.expected["train" if class_id <= 98 else "test"].append((root / relative, class_id))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(records)), dtype=[(name, "O") for name in fields])
    for i, (relative, class_id, test_flag) in enumerate(records):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 4, 3)]
        annotations[0, i] = (
            relative,
            *box,
            np.array([[class_id]], dtype=np.uint8),
            np.array([[test_flag]], dtype=np.uint8),
        )
    class_names = np.array([f"Car model {c}" for c in range(1, 197)], dtype=object)
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return tree


def make_sop(tmp_path: Path) -> FakeTree:
    root = tmp_path / "Stanford_Online_Products"
    tree = FakeTree(root, {"train": [], "test": []})
    spec = {
        "train": [(1, 1, "bicycle", 2), (2, 1, "bicycle", 1), (7, 3, "chair", 3)],
        "test": [(11319, 1, "bicycle", 2), (11400, 4, "mug", 1), (22634, 12, "toaster", 2)],
    }
    image_id = 0
    for split, classes in spec.items():
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_class_id, name, count in classes:
            for i in range(count):
                image_id += 1
                relative = f"{name}_final/{class_id}{i:04d}_{i}.JPG"
                write_image(tree, root / relative)
                lines.append(f"{image_id} {class_id} {super_class_id} {relative}")
                tree.expected[split].append((root / relative, class_id))
        tree.listing[split] = root / f"Ebay_{split}.txt"
        write_lines(tree.listing[split], lines)
    return tree


def make_inaturalist(tmp_path: Path) -> FakeTree:
    root = tmp_path / "inaturalist2018"
    tree = FakeTree(root, {"train": [], "test": []})
    spec = {
        "train": [("Plantae", 7477, 2), ("Plantae", 7480, 1), ("Aves", 3, 2)],
        "test": [("Insecta", 1200, 1), ("Aves", 4, 3), ("Fungi", 9000, 2)],
    }
    for split, categories in spec.items():
        lines = []
        for supercategory, category, count in categories:
            for i in range(count):
                relative = f"train_val2018/{supercategory}/{category}/{category:x}{i:030x}.jpg"
                write_image(tree, root / relative)
                lines.append(relative)
                tree.expected[split].append((root / relative, category))
        tree.listing[split] = root / f"Inaturalist_{split}_set1.txt"
        write_lines(tree.listing[split], lines[::2] + lines[1::2])  # interleaved classes, as in the real files
    return tree


def make_vehicle_id(tmp_path: Path) -> FakeTree:
    root = tmp_path / "VehicleID_V1.0"
    spec = {
        "train": ("train_list.txt", [(1, 2), (3, 1), (10, 2)]),
        "test_small": ("test_list_800.txt", [(20, 2), (21, 1)]),
        "test_medium": ("test_list_1600.txt", [(20, 2), (21, 1), (35, 2)]),
        "test_large": ("test_list_2400.txt", [(20, 2), (21, 1), (35, 2), (40, 3)]),
    }
    tree = FakeTree(root, {split: [] for split in spec})
    for split, (file_name, vehicles) in spec.items():
        lines = []
        for vehicle_id, count in vehicles:
            for i in range(count):
                name = f"{vehicle_id:04d}{i:03d}"
                if not (root / "image" / f"{name}.jpg").exists():
                    write_image(tree, root / "image" / f"{name}.jpg")
                lines.append(f"{name} {vehicle_id}")
                tree.expected[split].append((root / "image" / f"{name}.jpg", vehicle_id))
        tree.listing[split] = root / "train_test_split" / file_name
        write_lines(tree.listing[split], lines)
    return tree


LOADERS = {
    "cub": (CUB200, make_cub),
    "cars196": (Cars196, make_cars),
    "sop": (StanfordOnlineProducts, make_sop),
    "inaturalist": (INaturalist2018, make_inaturalist),
    "vehicleid": (VehicleID, make_vehicle_id),
}
SPLITS = {
    "cub": ["train", "test"],
    "cars196": ["train", "test"],
    "sop": ["train", "test"],
    "inaturalist": ["train", "test"],
    "vehicleid": ["train", "test_small", "test_medium", "test_large"],
}
CASES = [(name, split) for name, splits in SPLITS.items() for split in splits]


# ------------------------------------------------------------------------------------------ what is read


@pytest.mark.parametrize("name, split", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_split_contents_labels_and_images(tmp_path, name, split):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    dataset = loader(tree.root, split)
    expected = tree.expected[split]

    assert len(dataset) == len(expected)
    assert sorted(zip(dataset.image_paths, dataset.class_ids.tolist())) == sorted(expected)
    # labels: the original ids ranked 0..C-1 in increasing order
    rank = {class_id: r for r, class_id in enumerate(sorted({c for _, c in expected}))}
    assert isinstance(dataset.labels, np.ndarray) and dataset.labels.dtype == np.int64 and dataset.labels.ndim == 1
    assert dataset.labels.tolist() == [rank[c] for c in dataset.class_ids.tolist()]
    assert dataset.num_classes == len(rank)
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert image.getpixel((0, 0)) == tree.colours[dataset.image_paths[i]]
        assert label == dataset.labels[i] and isinstance(label, int)


@pytest.mark.parametrize("name", list(LOADERS))
def test_test_classes_are_disjoint_from_train_classes(tmp_path, name):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    train = set(loader(tree.root, "train").class_ids.tolist())
    for split in SPLITS[name][1:]:
        assert train.isdisjoint(loader(tree.root, split).class_ids.tolist())


@pytest.mark.parametrize("name", list(LOADERS))
def test_transform_is_applied_to_the_pil_image(tmp_path, name):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    dataset = loader(tree.root, "train", transform=lambda image: ("seen", image.size, image.mode))
    assert dataset[0] == (("seen", (5, 4), "RGB"), dataset.labels[0])


def test_cub_grayscale_file_is_converted_to_rgb(tmp_path):
    tree = make_cub(tmp_path)
    dataset = CUB200(tree.root, "train")
    gray = [i for i, path in enumerate(dataset.image_paths) if Image.open(path).mode == "L"]
    assert len(gray) == 1
    image, _ = dataset[gray[0]]
    assert image.mode == "RGB" and len(set(image.getpixel((0, 0)))) == 1


def test_sop_keeps_super_class_ids(tmp_path):
    tree = make_sop(tmp_path)
    dataset = StanfordOnlineProducts(tree.root, "test")
    by_class = dict(zip(dataset.class_ids.tolist(), dataset.super_class_ids.tolist()))
    assert by_class == {11319: 1, 11400: 4, 22634: 12}


def test_cars_ignores_the_annotation_test_flag(tmp_path):
    # make_cars gives test=1 to some classes <= 98 and test=0 to some > 98; they follow the class rule.
    tree = make_cars(tmp_path)
    assert set(Cars196(tree.root, "train").class_ids.tolist()) == {1, 5, 98}
    assert set(Cars196(tree.root, "test").class_ids.tolist()) == {99, 120, 196}


# ------------------------------------------------------------------------------------------ bad layouts


@pytest.mark.parametrize("name", list(LOADERS))
def test_missing_root_names_the_path(tmp_path, name):
    loader, _ = LOADERS[name]
    missing = tmp_path / "not_here"
    with pytest.raises(FileNotFoundError, match="not_here"):
        loader(missing, SPLITS[name][0])


MISSING_FILES = [
    ("cub", "train", "images.txt"),
    ("cub", "test", "image_class_labels.txt"),
    ("cub", "train", "images"),
    ("cars196", "train", "cars_annos.mat"),
    ("sop", "train", "Ebay_train.txt"),
    ("sop", "test", "Ebay_test.txt"),
    ("inaturalist", "train", "Inaturalist_train_set1.txt"),
    ("inaturalist", "test", "Inaturalist_test_set1.txt"),
    ("vehicleid", "train", "train_test_split/train_list.txt"),
    ("vehicleid", "test_small", "train_test_split/test_list_800.txt"),
    ("vehicleid", "test_medium", "train_test_split/test_list_1600.txt"),
    ("vehicleid", "test_large", "train_test_split/test_list_2400.txt"),
    ("vehicleid", "train", "image"),
]


@pytest.mark.parametrize("name, split, relative", MISSING_FILES)
def test_missing_listing_names_the_expected_file(tmp_path, name, split, relative):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    target = tree.root / relative
    target.rename(target.with_name(target.name + ".moved"))
    with pytest.raises(FileNotFoundError) as error:
        loader(tree.root, split)
    assert str(target) in str(error.value)


def image_listing(name: str, tree: FakeTree, split: str) -> Path:
    """The file that names the split's image paths (for CUB: images.txt, not the labels file)."""
    if name == "cub":
        return tree.root / "images.txt"
    if name == "cars196":
        return tree.root / "cars_annos.mat"
    return tree.listing[split]


@pytest.mark.parametrize("name, split", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_missing_image_is_reported_at_construction_with_its_listing(tmp_path, name, split):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    lost = tree.expected[split][-1][0]
    lost.unlink()
    with pytest.raises(FileNotFoundError) as error:
        loader(tree.root, split)
    message = str(error.value)
    assert str(lost) in message and str(image_listing(name, tree, split)) in message
    assert "image_class_labels" not in message  # CUB: the labels file does not name images


@pytest.mark.parametrize("name", list(LOADERS))
def test_many_missing_images_are_counted_and_a_few_named(tmp_path, name):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    expected = [path for path, _ in tree.expected["train"]]
    for path in expected:
        path.unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=f"{len(expected)} of the {len(expected)} images") as error:
        loader(tree.root, "train")
    assert str(expected[0]) in str(error.value)


def test_a_missing_image_folder_is_reported(tmp_path):
    tree = make_inaturalist(tmp_path)
    folder = tree.root / "train_val2018" / "Aves"
    shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError, match="2 of the 5 images") as error:
        INaturalist2018(tree.root, "train")
    assert str(folder) in str(error.value)


@pytest.mark.parametrize("name", list(LOADERS))
def test_missing_image_is_reported_when_read(tmp_path, name):
    # Deleted after construction: reading it still names the image and its listing.
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    dataset = loader(tree.root, "train")
    dataset.image_paths[0].unlink()
    with pytest.raises(FileNotFoundError, match=str(dataset.image_paths[0].name)) as error:
        dataset[0]
    assert str(image_listing(name, tree, "train")) in str(error.value)


def test_cub_labels_file_lacking_images_is_an_error(tmp_path):
    tree = make_cub(tmp_path)
    labels_txt = tree.root / "image_class_labels.txt"
    lines = labels_txt.read_text().splitlines()
    kept = [line for line in lines if line.split()[0] not in {"3", "11"}]
    write_lines(labels_txt, kept)
    with pytest.raises(ValueError, match="2 of the 14 image ids") as error:
        CUB200(tree.root, "train")  # image 11 is a test image: the files must agree whatever the split
    message = str(error.value)
    assert str(labels_txt) in message and str(tree.root / "images.txt") in message and "3, 11" in message


@pytest.mark.parametrize("file_name", ["images.txt", "image_class_labels.txt"])
def test_cub_repeated_image_id_names_file_and_line(tmp_path, file_name):
    tree = make_cub(tmp_path)
    listing = tree.root / file_name
    lines = listing.read_text().splitlines()
    write_lines(listing, [*lines, lines[0]])
    with pytest.raises(ValueError, match=f"line {len(lines) + 1}: image_id .* listed twice") as error:
        CUB200(tree.root, "train")
    assert str(listing) in str(error.value)


def test_cub_items_follow_images_txt_order(tmp_path):
    tree = make_cub(tmp_path)  # image_class_labels.txt is written in reverse order
    dataset = CUB200(tree.root, "test")
    assert dataset.image_paths == [path for path, _ in tree.expected["test"]]


def _reference_missing(paths):
    return [path for path in paths if not os.path.exists(path)]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_missing_files_equals_checking_each_path(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("tree")
    folders = [root / f"d{i}" for i in range(data.draw(st.integers(1, 4)))]
    paths = [folder / f"f{j}.jpg" for folder in folders for j in range(data.draw(st.integers(0, 4)))]
    present = data.draw(st.lists(st.booleans(), min_size=len(paths), max_size=len(paths)))
    for path, keep in zip(paths, present):
        if keep:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"")
    (root / "plain_file").write_bytes(b"")
    paths += [root / "plain_file" / "under_a_file.jpg", root / "plain_file", root / "no_such_dir" / "x.jpg"]
    order = data.draw(st.permutations(range(len(paths))))
    paths = [paths[i] for i in order]
    assert missing_files(paths) == _reference_missing(paths)


@pytest.mark.parametrize("name", list(LOADERS))
def test_unknown_split_lists_the_valid_ones(tmp_path, name):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    with pytest.raises(ValueError) as error:
        loader(tree.root, "validation")
    for split in SPLITS[name]:
        assert repr(split) in str(error.value)


@pytest.mark.parametrize("name", list(LOADERS))
def test_wrong_argument_types(tmp_path, name):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    with pytest.raises(TypeError, match="split must be a string"):
        loader(tree.root, 0)
    with pytest.raises(TypeError, match="transform must be callable"):
        loader(tree.root, "train", transform="resize")


BAD_LINES = [
    ("cub", "train", "12 1 extra"),  # three fields in image_class_labels.txt
    ("cub", "test", "twelve 1"),
    ("cub", "train", "1 201"),  # class out of range
    ("cub", "train", "999 3"),  # image id not in images.txt
    ("sop", "train", "1 2 3"),
    ("sop", "test", "9 x 1 mug_final/a.JPG"),
    ("inaturalist", "train", "train_val2018/Plantae/notanumber/a.jpg"),
    ("inaturalist", "test", "justafile.jpg"),
    ("vehicleid", "train", "0001000"),
    ("vehicleid", "test_large", "0001000 abc"),
]


@pytest.mark.parametrize("name, split, bad_line", BAD_LINES)
def test_malformed_line_names_file_and_line_number(tmp_path, name, split, bad_line):
    loader, make_tree = LOADERS[name]
    tree = make_tree(tmp_path)
    listing = tree.listing[split]
    lines = listing.read_text().splitlines()
    lines.insert(1, bad_line)  # becomes line 2
    write_lines(listing, lines)
    with pytest.raises(ValueError, match="line 2") as error:
        loader(tree.root, split)
    assert str(listing) in str(error.value)


def test_sop_wrong_header_is_reported(tmp_path):
    tree = make_sop(tmp_path)
    listing = tree.listing["train"]
    write_lines(listing, listing.read_text().splitlines()[1:])
    with pytest.raises(ValueError, match="header") as error:
        StanfordOnlineProducts(tree.root, "train")
    assert str(listing) in str(error.value)


def test_empty_listing_is_reported(tmp_path):
    tree = make_inaturalist(tmp_path)
    write_lines(tree.listing["train"], [])
    with pytest.raises(ValueError, match="lists no images"):
        INaturalist2018(tree.root, "train")


def test_cars_bad_annotation_file_is_reported(tmp_path):
    from scipy.io import savemat

    tree = make_cars(tmp_path)
    mat = tree.root / "cars_annos.mat"
    mat.write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="cars_annos.mat"):
        Cars196(tree.root, "train")
    savemat(mat, {"something_else": np.zeros(3)})
    with pytest.raises(ValueError, match="annotations"):
        Cars196(tree.root, "train")
    savemat(mat, {"annotations": np.zeros((1, 2), dtype=[("relative_im_path", "O"), ("test", "O")])})
    with pytest.raises(ValueError, match="class"):
        Cars196(tree.root, "train")


def test_cars_class_out_of_range_names_the_annotation(tmp_path):
    from scipy.io import savemat

    tree = make_cars(tmp_path)
    annotations = np.zeros((1, 2), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    annotations[0, 0] = ("car_ims/000001.jpg", 3, 0)
    annotations[0, 1] = ("car_ims/000002.jpg", 197, 0)
    savemat(tree.root / "cars_annos.mat", {"annotations": annotations})
    with pytest.raises(ValueError, match="annotation 2"):
        Cars196(tree.root, "train")


# ------------------------------------------------------------------------------------------ names and protocols

# docs/method.md §5: the k of the Recall@k each benchmark's papers report.
PAPER_K_VALUES = {
    "cub": (1, 2, 4, 8),
    "cars196": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inaturalist": (1, 4, 16, 32),
    "vehicleid": (1, 5),
}


@pytest.mark.parametrize("name", list(LOADERS))
def test_recall_k_values_are_the_papers(name):
    loader, _ = LOADERS[name]
    assert loader.recall_k_values == PAPER_K_VALUES[name]
    assert recall_k_values(name) == recall_k_values(name.upper()) == PAPER_K_VALUES[name]
    assert dataset_class(name) is dataset_class(name.title()) is loader
    assert list(loader.splits) == SPLITS[name]


@pytest.mark.parametrize("name", sorted(DATASET_CLASSES))
def test_every_named_dataset_has_splits_and_valid_k_values(name):
    cls = dataset_class(name)
    assert cls is DATASET_CLASSES[name] and cls.__module__.startswith("pml_recallk.datasets.")
    assert check_k_values(list(cls.recall_k_values)) == sorted(cls.recall_k_values)
    assert 1 in cls.recall_k_values  # Recall@1 chooses the best epoch
    assert "train" in cls.splits and len(cls.splits) >= 2


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="cifar") as error:
        recall_k_values("cifar")
    for name in DATASET_CLASSES:
        assert repr(name) in str(error.value)
    with pytest.raises(TypeError, match="string"):
        dataset_class(3)

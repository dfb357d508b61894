"""A user's own images: a folder of class folders (:class:`ImageFolder`) or a CSV table of paths (:class:`CsvImages`).

Both are :class:`~.common.ImageListDataset` s, so they share the benchmark loaders' checks (every listed image
exists, no file is listed twice) and image loading (:func:`~.images.load_image`, which converts 16-bit, CMYK,
palette and alpha images faithfully). Their channels come from the data: 1 when every image is single-band,
else 3 (:func:`~.images.listing_channels`). Labels may be any strings; ``class_names[label]`` gives them back.

Shared rules, each a ValueError naming the file (and line) at fault:

* a class in two splits (the protocol is class-disjoint: a test class seen in training inflates Recall@k);
* a file listed twice;
* a requested split with no image.

Classes with one image are kept, and said so by a warning: in an evaluated split they are gallery distractors (they
are never queries, since they have no match; the Recall@k calculator leaves such queries out), in the training
split each batch repeats their image under different augmentations.

Example:
    >>> data = ImageFolder("my_photos", "train")  # doctest: +SKIP
    >>> data.class_names[:3], data.num_classes  # doctest: +SKIP
    (['cat', 'dog', 'fox'], 12)
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_fraction, check_int
from .common import ImageListDataset, check_split, decode_line
from .images import IMAGE_EXTENSIONS, check_images, listing_channels

__all__ = ["CsvImages", "ImageFolder"]

# Not a paper benchmark: CUB's k (1, 2, 4, 8), which suits collections of tens to hundreds of images per split;
# set eval.k_values for a large gallery (SOP-sized data reports 1, 10, 100, 1000).
GENERIC_RECALL_K = (1, 2, 4, 8)


class _GenericImages(ImageListDataset):
    """What both generic formats share: string labels, per-instance splits, channels from the data."""

    recall_k_values = GENERIC_RECALL_K
    channels = 0  # from the data: data_channels()
    image_mode = None  # "L" stays "L": a grayscale collection trains a one-channel model

    def _setup(
        self,
        root: Path,
        items: Sequence[tuple[Path, str, int]],
        split: str,
        transform: Callable[[Any], Any] | None,
        listing: Path,
        check: bool,
    ) -> None:
        """``items``: ``(path, label, line number)`` of this split's images."""
        names = sorted({label for _, label, _ in items})
        index = {name: i for i, name in enumerate(names)}
        super().__init__(
            root,
            [path for path, _, _ in items],
            [index[label] for _, label, _ in items],
            transform,
            listing=listing,
            split=split,
            line_numbers=[line for _, _, line in items],
        )
        self.split = split
        self.class_names = names
        counts = np.bincount(self.labels, minlength=len(names))
        lone = int((counts == 1).sum())
        if lone:
            use = (
                "each of their batches repeats the image under different augmentations"
                if split == "train"
                else "they are kept as gallery distractors and are never queries (they have no match)"
            )
            warnings.warn(
                f"{type(self).__name__}: {lone} of the {len(names)} classes of the {split!r} split of {listing} have "
                f"one image; {use}",
                stacklevel=3,
            )
        if check:
            self.check_images()

    @classmethod
    def data_channels(cls, data: Mapping[str, Any]) -> int:
        """1 when every image of the data set (every split) is single-band, else 3; decodes them (cached)."""
        listing, paths = cls._all_images(data)
        root = listing if listing.is_dir() else listing.parent  # the datasets' root: one cache file for all
        return listing_channels(check_images(paths, listing, cls.__name__, cache_key=root))

    @classmethod
    def _all_images(cls, data: Mapping[str, Any]) -> tuple[Path, list[Path]]:
        raise NotImplementedError


def _check_class_disjoint(classes_of: Mapping[str, set[str]], listing: Path, name: str) -> None:
    splits = list(classes_of)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            shared = sorted(classes_of[a] & classes_of[b])
            if shared:
                shown = ", ".join(repr(c) for c in shared[:5]) + (" ..." if len(shared) > 5 else "")
                raise ValueError(
                    f"{name}: {len(shared)} classes of {listing} are in both the {a!r} and the {b!r} split ({shown}); "
                    "metric learning is evaluated on classes never seen in training: give each class one split"
                )


# --------------------------------------------------------------------------------------------- image folder


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (any depth), sorted; hidden files and folders are skipped."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir():
            found.append(path)
        elif path.is_symlink() and not path.exists() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path)  # a broken link is reported by the existence check, not skipped
    return sorted(found)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolder(_GenericImages):
    """Images in one folder per class: ``root/<split>/<class>/*`` or a flat ``root/<class>/*``.

    With ``root/train`` and ``root/test`` (and optionally ``root/val``, then the validation split), each split's
    classes are its class folders. Otherwise every folder of ``root`` is a class, and the classes are split into
    train and test by a seeded rule: the class names sorted, shuffled with ``numpy.random.default_rng(seed)``, the
    first ``round(test_fraction × C)`` (at least 1, at most C − 1) to test. Images are the files ending in
    jpg, jpeg, png, bmp, gif, webp, tif or tiff (any case) at any depth of a class folder; hidden files are ignored.

    Args:
        root: the folder.
        split: ``"train"``, ``"test"``, or ``"val"`` when ``root/val`` exists.
        transform: applied to each PIL image (mode ``"L"`` or ``"RGB"``).
        test_fraction: the flat layout: fraction of the classes for test.
        seed: the flat layout: seed of the class split.
        check_images: decode every image of the split now (cached), so a damaged file fails here.

    Example:
        >>> data = ImageFolder("photos", "test", test_fraction=0.5, seed=0)  # doctest: +SKIP
    """

    splits = ("train", "test", "val")
    config_fields = {
        "test_fraction": ("float", 0.5, "image_folder without train/ and test/: fraction of the classes for test"),
    }

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        test_fraction: float = 0.5,
        seed: int = 0,
        check_images: bool = True,
    ):
        root = Path(root)
        layout = _folder_layout(root)
        check_split("ImageFolder", split, tuple(layout))
        classes_of = {name: {c.name for c in folders} for name, folders in layout.items()}
        if "train" in layout and "test" in layout and root.joinpath("train").is_dir():
            _check_class_disjoint(classes_of, root, "ImageFolder")
            folders = layout[split]
        else:
            folders = _flat_split(layout["train"], check_fraction(test_fraction, "test_fraction"), seed)[split]
        items = []
        for folder in folders:
            files = _image_files(folder)
            if not files:
                raise ValueError(f"ImageFolder: class folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            items += [(path, folder.name, 0) for path in files]
        self._setup(root, items, split, transform, root / split if (root / split).is_dir() else root, check_images)

    @classmethod
    def available_splits(cls, data: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(_folder_layout(Path(data["root"])))

    @classmethod
    def from_config(cls, data: Mapping[str, Any], split: str) -> ImageFolder:
        return cls(data["root"], split, test_fraction=data["test_fraction"], seed=data["split_seed"])

    @classmethod
    def _all_images(cls, data: Mapping[str, Any]) -> tuple[Path, list[Path]]:
        root = Path(data["root"])
        layout = _folder_layout(root)
        folders = [f for split_folders in layout.values() for f in split_folders]
        return root, [path for folder in folders for path in _image_files(folder)]


def _folder_layout(root: Path) -> dict[str, list[Path]]:
    """``{split: class folders}``: the split folders' classes, or (flat layout) ``{"train": all, "test": all}``."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"ImageFolder: {root} is not a folder (expected root/<class>/* or root/train/<class>/*)"
        )
    train, test, val = root / "train", root / "test", root / "val"
    if train.is_dir() or test.is_dir():
        if not (train.is_dir() and test.is_dir()):
            missing = test if train.is_dir() else train
            raise FileNotFoundError(
                f"ImageFolder: {root} has a {'train' if train.is_dir() else 'test'}/ folder but no {missing.name}/; "
                "give both train/ and test/ (val/ optional), or only class folders"
            )
        layout = {"train": _class_folders(train), "test": _class_folders(test)}
        if val.is_dir():
            layout["val"] = _class_folders(val)
        for name, folders in layout.items():
            if not folders:
                raise ValueError(f"ImageFolder: {root / name} holds no class folder")
        return layout
    classes = _class_folders(root)
    if len(classes) < 2:
        raise ValueError(f"ImageFolder: {root} needs at least 2 class folders (found {len(classes)})")
    return {"train": classes, "test": classes}


def _flat_split(classes: list[Path], test_fraction: float, seed: int) -> dict[str, list[Path]]:
    seed = check_int(seed, "seed", minimum=0)
    num_test = min(max(round(test_fraction * len(classes)), 1), len(classes) - 1)
    order = np.random.default_rng(seed).permutation(len(classes))
    test = set(order[:num_test].tolist())
    return {
        "train": [c for i, c in enumerate(classes) if i not in test],
        "test": [c for i, c in enumerate(classes) if i in test],
    }


# ------------------------------------------------------------------------------------------------------ csv

_REQUIRED = ("path", "label", "split")
_FLAGS = ("is_query", "is_gallery")
_TRUE, _FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f"}


class _Row:
    __slots__ = ("gallery", "label", "line", "path", "query", "split")

    def __init__(self, path: Path, label: str, split: str, line: int, query: bool, gallery: bool):
        self.path, self.label, self.split, self.line, self.query, self.gallery = (
            path,
            label,
            split,
            line,
            query,
            gallery,
        )


def _read_csv(listing: Path) -> tuple[list[_Row], bool]:
    """The rows of a CSV listing and whether it has the query/gallery columns; a bad row names its line."""
    if not listing.is_file():
        what = "is a folder" if listing.is_dir() else "does not exist"
        raise FileNotFoundError(f"CsvImages: {listing} {what}; give a CSV file with columns path,label,split")
    with open(listing, "rb") as f:
        lines = [decode_line(raw, listing, number) for number, raw in enumerate(f, start=1)]
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ValueError(
            f"{listing}, line 1: the header {','.join(header) or '(empty)'} lacks the column(s) {', '.join(missing)}; "
            f"a listing needs path,label,split (and optionally {','.join(_FLAGS)})"
        )
    flags = [f for f in _FLAGS if f in header]
    if len(flags) == 1:
        raise ValueError(f"{listing}, line 1: give both {' and '.join(_FLAGS)} columns, or neither")
    column = {name: header.index(name) for name in (*_REQUIRED, *flags)}
    rows = []
    for fields in reader:
        number = reader.line_num
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            raise ValueError(f"{listing}, line {number}: {len(fields)} fields, the header has {len(header)}")
        values = {name: fields[i].strip() for name, i in column.items()}
        for name in _REQUIRED:
            if not values[name]:
                raise ValueError(f"{listing}, line {number}: the {name} field is empty")
        query = gallery = True
        if flags:
            query, gallery = (_boolean(values[name], listing, number, name) for name in _FLAGS)
            if not (query or gallery):
                raise ValueError(f"{listing}, line {number}: is_query and is_gallery are both false; drop the row")
        path = Path(values["path"])
        rows.append(_Row(path if path.is_absolute() else listing.parent / path, values["label"], values["split"],
                         number, query, gallery))  # fmt: skip
    if not rows:
        raise ValueError(f"CsvImages: {listing} lists no images")
    return rows, bool(flags)


def _boolean(text: str, listing: Path, line: int, name: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"{listing}, line {line}: {name} must be true or false (or 1/0), got {text!r}")


class CsvImages(_GenericImages):
    """Images listed in a CSV file with the columns ``path,label,split`` (and optionally ``is_query,is_gallery``).

    ``path`` is relative to the CSV file's folder (or absolute), ``label`` any string, ``split`` any name: ``train``
    and ``test`` are expected, ``val`` (if present) is the validation split, other names are extra test splits.
    With ``is_query`` / ``is_gallery`` (true/false, 1/0, yes/no), a split is evaluated as its queries against its
    gallery (an item in both is left out of its own neighbours); without them every item is a query against the
    rest of its split. Extra columns are ignored. The file is read as UTF-8.

    Args:
        listing: the CSV file.
        split: a split name of the file.
        transform: applied to each PIL image (mode ``"L"`` or ``"RGB"``).
        check_images: decode every image of the split now (cached), so a damaged file fails here.

    Attributes:
        is_query, is_gallery: (N,) bool arrays, or None when the file has no such columns.

    Example:
        >>> test = CsvImages("data/listing.csv", "test")  # doctest: +SKIP
        >>> int(test.is_query.sum()), int(test.is_gallery.sum())  # doctest: +SKIP
        (40, 200)
    """

    splits = ("train", "test", "val")

    def __init__(
        self,
        listing: str | Path,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        check_images: bool = True,
    ):
        listing = Path(listing)
        rows, flags = _read_csv(listing)
        names = list(dict.fromkeys(row.split for row in rows))
        if not isinstance(split, str) or split not in names:
            raise ValueError(f"CsvImages: no row of {listing} is in the {split!r} split; its splits are {names}")
        classes_of: dict[str, set[str]] = {}
        for row in rows:
            classes_of.setdefault(row.split, set()).add(row.label)
        _check_class_disjoint(classes_of, listing, "CsvImages")
        mine = [row for row in rows if row.split == split]
        self._setup(listing.parent, [(r.path, r.label, r.line) for r in mine], split, transform, listing, check_images)
        # The training split's flags mean nothing (it trains on every row, and a validation part carved from it
        # is evaluated every item against the rest).
        flags = flags and split != "train"
        self.is_query = np.array([r.query for r in mine]) if flags else None
        self.is_gallery = np.array([r.gallery for r in mine]) if flags else None
        if flags:
            _check_query_gallery(self, listing, split)

    @classmethod
    def available_splits(cls, data: Mapping[str, Any]) -> tuple[str, ...]:
        rows, _ = _read_csv(Path(data["root"]))
        return tuple(dict.fromkeys(row.split for row in rows))

    @classmethod
    def from_config(cls, data: Mapping[str, Any], split: str) -> CsvImages:
        return cls(data["root"], split)

    @classmethod
    def _all_images(cls, data: Mapping[str, Any]) -> tuple[Path, list[Path]]:
        listing = Path(data["root"])
        return listing, [row.path for row in _read_csv(listing)[0]]


def _check_query_gallery(data: CsvImages, listing: Path, split: str) -> None:
    if not data.is_query.any() or not data.is_gallery.any():
        raise ValueError(f"CsvImages: the {split!r} split of {listing} needs at least one query and one gallery item")

"""What the benchmark loaders share: an image-list dataset, layout checks, and class-disjoint splitting.

Every benchmark loader reads a listing (a text file or a ``.mat`` annotation) from a local ``root``, turns it
into a list of image paths and original class ids, and hands both to :class:`ImageListDataset`. Nothing is
downloaded. A missing root or listing raises :class:`FileNotFoundError` naming the expected path; a malformed
line raises :class:`ValueError` naming the file and the line number; listed images that are not on disk raise
:class:`FileNotFoundError` at construction, naming them and the listing that names them, so that a run fails
before it starts rather than in the middle of an epoch.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from .._checks import check_fraction, check_int


def check_split(dataset_name: str, split: str, valid_splits: Sequence[str]) -> None:
    """Raise TypeError unless ``split`` is a string, ValueError unless it is one of ``valid_splits``."""
    if not isinstance(split, str):
        raise TypeError(f"{dataset_name}: split must be a string, one of {list(valid_splits)}, got {split!r}")
    if split not in valid_splits:
        raise ValueError(f"{dataset_name}: split must be one of {list(valid_splits)}, got {split!r}")


def require_path(path: Path, dataset_name: str, layout: str) -> Path:
    """Return ``path`` if it exists, else raise FileNotFoundError naming it and the expected ``layout``."""
    if not path.exists():
        raise FileNotFoundError(f"{dataset_name}: expected {path} but it does not exist. {layout}")
    return path


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, stripped_line)`` for the non-blank lines of a UTF-8 text file (numbers start at 1).

    A line that is not UTF-8 is a ValueError naming the file and the line (a listing written in latin-1, or a
    binary file where a listing was expected), not a bare ``UnicodeDecodeError``.
    """
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = decode_line(raw, path, line_number).strip()
            if line:
                yield line_number, line


def decode_line(raw: bytes, path: Path, line_number: int) -> str:
    """``raw`` decoded as UTF-8 (a byte-order mark on line 1 dropped), or a ValueError naming the file and line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}, line {line_number}: not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1}); "
            "save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff") if line_number == 1 else text


def parse_int(text: str, path: Path, line_number: int, what: str) -> int:
    """``int(text)``, or a ValueError that points at the file and line."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}, line {line_number}: {what} must be an integer, got {text!r}") from None


def missing_files(paths: Iterable[Path]) -> list[Path]:
    """The ``paths`` that do not exist, in the given order.

    One ``os.listdir`` per folder instead of one ``stat`` per file (iNaturalist lists 461,939 images in 8,142
    folders; on a network file system each ``stat`` is a round trip). A name the folder listing lacks is
    confirmed with ``os.path.exists``, so case-insensitive file systems and unreadable folders give the same
    answer as checking each file.
    """
    paths = list(paths)
    by_folder: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for index, path in enumerate(paths):
        folder, name = os.path.split(os.fspath(path))
        by_folder[folder].append((index, name))
    missing = []
    for folder, entries in by_folder.items():
        try:
            names = set(os.listdir(folder or "."))
        except OSError:  # no such folder, not a folder, or not readable: ask about each file
            names = set()
        missing += [index for index, name in entries if name not in names and not os.path.exists(paths[index])]
    return [paths[index] for index in sorted(missing)]


def check_images_exist(image_paths: Sequence[Path], listing: Path, dataset_name: str) -> None:
    """Raise FileNotFoundError naming the missing images of ``image_paths`` and the ``listing`` they come from."""
    missing = missing_files(image_paths)
    if not missing:
        return
    if len(missing) == 1:
        raise FileNotFoundError(f"{dataset_name}: image {missing[0]} (listed in {listing}) is missing")
    shown = ", ".join(str(path) for path in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise FileNotFoundError(
        f"{dataset_name}: {len(missing)} of the {len(image_paths)} images listed in {listing} are missing: "
        f"{shown}{more}. Restore them (an incomplete download or extraction?), or remove their lines from {listing}"
    )


def remap_labels(class_ids: np.ndarray) -> np.ndarray:
    """Map class ids to ``0..C-1`` in increasing order of the original id (int64)."""
    _, labels = np.unique(class_ids, return_inverse=True)
    return labels.astype(np.int64).reshape(-1)


class ConfigurableDataset:
    """What a data set declares so that the application (``pml-recallk``) can use it without knowing its name.

    Class attributes (override them in the data set's class):

    * ``splits``: the splits it can load (:meth:`available_splits` may narrow them by the data, e.g. a CSV file);
    * ``recall_k_values``: its Recall@k preset, the k reported for it;
    * ``channels``: image channels of its images, 1 or 3; 0 means "from the data" (:meth:`data_channels`);
    * ``needs_root``: whether it is read from ``data.root`` (a folder or a file);
    * ``config_fields``: the ``[data]`` keys it reads beyond the shared ones, ``{key: (kind, default, help)}``
      with kind one of ``int``, ``float``, ``bool``, ``str``, ``list[str]``;

    and :meth:`from_config`, which builds one split from the ``[data]`` table.

    Example:
        >>> from pml_recallk.datasets import dataset_class
        >>> cls = dataset_class("cub")
        >>> cls.needs_root, cls.channels, cls.available_splits({"root": "/data/CUB_200_2011"})
        (True, 3, ('train', 'test'))
    """

    splits: tuple[str, ...] = ("train", "test")
    recall_k_values: tuple[int, ...] = (1, 2, 4, 8)
    channels: int = 3
    needs_root: bool = True
    config_fields: dict[str, tuple[str, Any, str]] = {}

    @classmethod
    def available_splits(cls, data: Mapping[str, Any]) -> tuple[str, ...]:
        """The splits of the data the ``[data]`` table describes (default: ``splits``)."""
        return tuple(cls.splits)

    @classmethod
    def data_channels(cls, data: Mapping[str, Any]) -> int:
        """Image channels (1 or 3) of the data the ``[data]`` table describes (default: ``channels``)."""
        return cls.channels

    @classmethod
    def from_config(cls, data: Mapping[str, Any], split: str) -> Dataset:
        """Split ``split`` of the data set, from the ``[data]`` table (default: ``cls(data["root"], split)``)."""
        return cls(data["root"], split=split)


class ImageListDataset(ConfigurableDataset, Dataset):
    """A list of image files with one class id each, opened lazily with :func:`~.images.load_image`.

    Construction checks that every listed image exists (:func:`check_images_exist`) and that no file is listed
    twice (under one id or two: a duplicated test image finds itself and inflates Recall@k); :meth:`check_images`
    decodes them all (once per data root, cached).

    Attributes:
        root: the folder the image paths are relative to.
        image_paths: absolute path of every image, in listing order.
        class_ids: the dataset's own class id of every image (1-D int64), e.g. 101..200 for the CUB test split.
        labels: the class ids remapped to ``0..C-1`` within this split, in increasing order of ``class_ids``
            (1-D int64). ``dataset[i]`` returns ``labels[i]``.
        transform: applied to the PIL image; ``None`` returns the PIL image itself.
        image_mode: the mode every image is converted to (``"RGB"`` for the paper's benchmarks); ``None`` keeps
            what :func:`~.images.load_image` returns (``"L"`` or ``"RGB"``).
    """

    image_mode: str | None = "RGB"

    def __init__(
        self,
        root: Path,
        image_paths: Sequence[Path],
        class_ids: Sequence[int],
        transform: Callable[[Any], Any] | None,
        listing: Path,
        split: str | None = None,
        line_numbers: Sequence[int] | None = None,
    ) -> None:
        name = type(self).__name__
        if transform is not None and not callable(transform):
            raise TypeError(f"{name}: transform must be callable or None, got {type(transform).__name__}")
        if len(image_paths) == 0:
            where = f"no image of {listing} is in the {split!r} split" if split else f"{listing} lists no images"
            raise ValueError(f"{name}: {where}")
        check_images_exist(image_paths, listing, name)
        check_listed_once(image_paths, listing, name, line_numbers)
        self.root = root
        self.image_paths = list(image_paths)
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.labels = remap_labels(self.class_ids)
        self.transform = transform
        self.listing = listing

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def check_images(self, progress: bool = True) -> list[int]:
        """Decode every image once (:func:`~.images.check_images`): a bad file is an error naming it; return the
        bands of each image."""
        from .images import check_images

        return check_images(self.image_paths, self.listing, type(self).__name__, progress, cache_key=self.root)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from .images import load_image

        path = self.image_paths[index]
        try:
            image = load_image(path)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"{type(self).__name__}: {error} (listed in {self.listing})") from None
        if self.image_mode is not None and image.mode != self.image_mode:
            image = image.convert(self.image_mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, classes={self.num_classes})"


def check_listed_once(
    image_paths: Sequence[Path], listing: Path, dataset_name: str, line_numbers: Sequence[int] | None = None
) -> None:
    """Raise ValueError if one file appears twice in ``image_paths`` (compared after resolving ``..`` and links)."""
    first: dict[str, int] = {}
    for index, path in enumerate(image_paths):
        key = os.path.realpath(path)
        if key in first:
            where = ""
            if line_numbers is not None:
                where = f" (lines {line_numbers[first[key]]} and {line_numbers[index]})"
            raise ValueError(
                f"{dataset_name}: {listing} lists the image {path} twice{where}; a duplicated image finds itself "
                "as its nearest neighbour and inflates Recall@k. Remove one of the two entries"
            )
        first[key] = index


class ClassSubset(Subset):
    """A :class:`torch.utils.data.Subset` whose labels are remapped to ``0..C-1`` within the subset.

    ``labels`` (1-D int64) is the remapped label of every item, ``class_ids`` the parent's label of every item;
    ``subset[i]`` returns ``(image, labels[i])``.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        super().__init__(dataset, list(indices))
        self.class_ids = np.asarray(dataset.labels, dtype=np.int64)[np.asarray(indices, dtype=np.int64)]
        self.labels = remap_labels(self.class_ids)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, _ = self.dataset[self.indices[index]]
        return image, int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, int]]:
        # DataLoader's batched fetch; Subset's own version would return the parent's labels.
        return [self[index] for index in indices]


def class_disjoint_split(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[ClassSubset, ClassSubset]:
    """Split a dataset into train and validation parts that share no class.

    ``round(val_fraction * C)`` of the ``C`` classes (at least 1, at most ``C - 1``), drawn with
    ``numpy.random.default_rng(seed)``, go to validation with all their images; the rest go to train. Items keep
    their order within each part, and each part's labels are remapped to ``0..C_part-1``.

    Args:
        dataset: any dataset with a ``labels`` attribute (1-D integer class ids, one per item).
        val_fraction: fraction of the classes put in the validation part, in (0, 1).
        seed: the same seed gives the same split.

    Returns:
        ``(train, val)`` :class:`ClassSubset` objects, each with a ``labels`` attribute.

    Example:
        >>> import numpy as np
        >>> from torch.utils.data import TensorDataset
        >>> import torch
        >>> data = TensorDataset(torch.arange(12))
        >>> data.labels = np.repeat(np.arange(6), 2)
        >>> train, val = class_disjoint_split(data, val_fraction=0.5, seed=0)
        >>> len(train), len(val), val.labels.tolist()
        (6, 6, [0, 0, 1, 1, 2, 2])
    """
    val_fraction = check_fraction(val_fraction, "val_fraction")
    seed = check_int(seed, "seed", minimum=0)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError("class_disjoint_split needs a dataset with a `labels` attribute (one class id per item)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(dataset):
        raise ValueError(
            f"dataset.labels must be 1-D with one entry per item, got shape {labels.shape} for {len(dataset)} items"
        )
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"class_disjoint_split needs at least 2 classes, the dataset has {len(classes)}")
    num_val = min(max(round(val_fraction * len(classes)), 1), len(classes) - 1)
    val_classes = np.random.default_rng(seed).permutation(classes)[:num_val]
    in_val = np.isin(labels, val_classes)
    return ClassSubset(dataset, np.flatnonzero(~in_val)), ClassSubset(dataset, np.flatnonzero(in_val))


class GlyphImages(ConfigurableDataset, Dataset):
    """What the glyph data sets share: ``images`` ((N, s, s) uint8), ``labels``, ``characters`` and ``transform``.

    Rendered in the package, one channel: ``channels = 1``, ``needs_root = False``.

    ``dataset[i]`` is ``(PIL image of mode "L", int label)``, the image passed through ``transform`` if set.
    """

    channels = 1
    needs_root = False
    images: np.ndarray
    labels: np.ndarray
    characters: tuple[str, ...]
    transform: Callable[[Any], Any] | None

    @property
    def num_classes(self) -> int:
        return len(self.characters)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        # Pillow is imported here, not at the top: it is optional (the cli extra), and the benchmark loaders that
        # share this module must import without it.
        from PIL import Image

        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

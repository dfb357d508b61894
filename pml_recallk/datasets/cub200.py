"""CUB-200-2011 read from its standard folder, split by class as in metric learning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import ImageListDataset, check_split, parse_int, read_lines, require_path

_LAYOUT = (
    "root must be the CUB_200_2011 folder, holding images.txt ('<image_id> <relative path>' lines), "
    "image_class_labels.txt ('<image_id> <class_id>' lines) and images/."
)


class CUB200(ImageListDataset):
    """Caltech-UCSD Birds-200-2011 with the class-disjoint split: classes 1–100 train, 101–200 test.

    Reads ``root/images.txt`` and ``root/image_class_labels.txt`` (joined on the image id) and opens
    ``root/images/<relative path>``; nothing is downloaded. ``labels`` are the class ids remapped to ``0..99``
    in each split; ``class_ids`` keeps the original 1–200 ids. Items come in ``images.txt`` order.

    Construction checks that the two files list the same image ids, each once, and that every image of the
    split exists, naming the file and the ids or images at fault. ``train_test_split.txt`` is not read: it is
    the classification split, which the class-disjoint protocol ignores.

    Args:
        root: the ``CUB_200_2011`` folder.
        split: ``"train"`` (classes 1–100) or ``"test"`` (classes 101–200).
        transform: applied to each RGB PIL image.

    Example:
        >>> data = CUB200("/data/CUB_200_2011", "train")  # doctest: +SKIP
        >>> len(data), data.num_classes  # doctest: +SKIP
        (5864, 100)
    """

    splits = ("train", "test")
    # The k of the Recall@k reported for this benchmark (docs/method.md §5).
    recall_k_values = (1, 2, 4, 8)

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[[Any], Any] | None = None):
        check_split("CUB200", split, self.splits)
        root = require_path(Path(root), "CUB200", _LAYOUT)
        images_txt = require_path(root / "images.txt", "CUB200", _LAYOUT)
        labels_txt = require_path(root / "image_class_labels.txt", "CUB200", _LAYOUT)
        images_dir = require_path(root / "images", "CUB200", _LAYOUT)

        relative_paths = _read_image_paths(images_txt)
        class_of_image = _read_class_labels(labels_txt, images_txt, relative_paths)
        unlabelled = [image_id for image_id in relative_paths if image_id not in class_of_image]
        if unlabelled:
            shown = ", ".join(map(str, unlabelled[:10])) + (" ..." if len(unlabelled) > 10 else "")
            raise ValueError(
                f"CUB200: {labels_txt} gives no class to {len(unlabelled)} of the {len(relative_paths)} image ids "
                f"of {images_txt} ({shown}); the two files must list the same images (an incomplete download?)"
            )
        in_split = [i for i in relative_paths if (class_of_image[i] <= 100) == (split == "train")]
        image_paths = [images_dir / relative_paths[i] for i in in_split]
        class_ids = [class_of_image[i] for i in in_split]
        super().__init__(root, image_paths, class_ids, transform, listing=images_txt, split=split)


def _read_image_paths(images_txt: Path) -> dict[int, str]:
    """``images.txt``: image id → path relative to ``images/``, in file order; a repeated id is an error."""
    relative_paths: dict[int, str] = {}
    for line_number, line in read_lines(images_txt):
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(f"{images_txt}, line {line_number}: expected '<image_id> <path>', got {line!r}")
        image_id = parse_int(fields[0], images_txt, line_number, "image_id")
        if image_id in relative_paths:
            raise ValueError(f"{images_txt}, line {line_number}: image_id {image_id} is listed twice")
        relative_paths[image_id] = fields[1]
    return relative_paths


def _read_class_labels(labels_txt: Path, images_txt: Path, relative_paths: dict[int, str]) -> dict[int, int]:
    """``image_class_labels.txt``: image id → class id in 1..200, for ids that ``images.txt`` lists, each once."""
    class_of_image: dict[int, int] = {}
    for line_number, line in read_lines(labels_txt):
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{labels_txt}, line {line_number}: expected '<image_id> <class_id>', got {line!r}")
        image_id = parse_int(fields[0], labels_txt, line_number, "image_id")
        class_id = parse_int(fields[1], labels_txt, line_number, "class_id")
        if not 1 <= class_id <= 200:
            raise ValueError(f"{labels_txt}, line {line_number}: class_id must be in 1..200, got {class_id}")
        if image_id not in relative_paths:
            raise ValueError(f"{labels_txt}, line {line_number}: image_id {image_id} is not in {images_txt}")
        if image_id in class_of_image:
            raise ValueError(f"{labels_txt}, line {line_number}: image_id {image_id} is listed twice")
        class_of_image[image_id] = class_id
    return class_of_image

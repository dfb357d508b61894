"""iNaturalist 2018 with the Smooth-AP class-disjoint split files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from .common import ImageListDataset, check_split, parse_int, read_lines, require_path

_LAYOUT = (
    "root must hold the Smooth-AP split files Inaturalist_train_set1.txt and Inaturalist_test_set1.txt (one "
    "image path relative to root per line, e.g. train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg) "
    "and the image folders they name."
)


class INaturalist2018(ImageListDataset):
    """iNaturalist 2018 with the Smooth-AP split (5,690 train / 2,452 test classes).

    Reads ``root/Inaturalist_train_set1.txt`` or ``root/Inaturalist_test_set1.txt``: one relative image path per
    line, such as ``train_val2018/Plantae/7477/3b60….jpg``. The class is the category folder, i.e. the path
    component right before the file name (``7477``), which must be an integer. ``labels`` are the category ids
    remapped to ``0..C-1`` in the split; ``class_ids`` keeps the category ids. Nothing is downloaded.

    Args:
        root: the folder holding the split files and ``train_val2018/``.
        split: ``"train"`` or ``"test"``.
        transform: applied to each RGB PIL image.

    Example:
        >>> data = INaturalist2018("/data/inaturalist2018", "test")  # doctest: +SKIP
        >>> data.num_classes  # doctest: +SKIP
        2452
    """

    splits = ("train", "test")
    # The k of the Recall@k reported for this benchmark (docs/method.md §5).
    recall_k_values = (1, 4, 16, 32)

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[[Any], Any] | None = None):
        check_split("INaturalist2018", split, self.splits)
        root = require_path(Path(root), "INaturalist2018", _LAYOUT)
        listing = root / f"Inaturalist_{split}_set1.txt"
        require_path(listing, "INaturalist2018", _LAYOUT)

        image_paths, class_ids = [], []
        for line_number, line in read_lines(listing):
            parts = PurePosixPath(line).parts
            if len(parts) < 2 or len(line.split()) != 1:
                raise ValueError(
                    f"{listing}, line {line_number}: expected one path '<...>/<category id>/<file name>', got {line!r}"
                )
            class_ids.append(parse_int(parts[-2], listing, line_number, "the category folder"))
            image_paths.append(root.joinpath(*parts))
        super().__init__(root, image_paths, class_ids, transform, listing=listing)

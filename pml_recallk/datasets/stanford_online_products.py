"""Stanford Online Products read from its standard folder (Ebay_train.txt / Ebay_test.txt)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import ImageListDataset, check_split, parse_int, read_lines, require_path

_HEADER = ["image_id", "class_id", "super_class_id", "path"]
_LAYOUT = (
    "root must be the Stanford_Online_Products folder, holding Ebay_train.txt and Ebay_test.txt (header "
    "'image_id class_id super_class_id path', paths relative to root such as bicycle_final/111085122871_0.JPG)."
)


class StanfordOnlineProducts(ImageListDataset):
    """Stanford Online Products (SOP): 11,318 training and 11,316 test product classes.

    Reads ``root/Ebay_train.txt`` or ``root/Ebay_test.txt`` and opens ``root/<path>``; nothing is downloaded.
    ``labels`` are the ``class_id`` column remapped to ``0..C-1`` in the split; ``class_ids`` keeps the file's
    ids and ``super_class_ids`` the ``super_class_id`` column.

    Args:
        root: the ``Stanford_Online_Products`` folder.
        split: ``"train"`` (``Ebay_train.txt``) or ``"test"`` (``Ebay_test.txt``).
        transform: applied to each RGB PIL image.

    Example:
        >>> data = StanfordOnlineProducts("/data/Stanford_Online_Products", "test")  # doctest: +SKIP
        >>> len(data), data.num_classes  # doctest: +SKIP
        (60502, 11316)
    """

    splits = ("train", "test")
    # The k of the Recall@k reported for this benchmark (docs/method.md §5).
    recall_k_values = (1, 10, 100, 1000)

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[[Any], Any] | None = None):
        check_split("StanfordOnlineProducts", split, self.splits)
        root = require_path(Path(root), "StanfordOnlineProducts", _LAYOUT)
        listing = root / ("Ebay_train.txt" if split == "train" else "Ebay_test.txt")
        require_path(listing, "StanfordOnlineProducts", _LAYOUT)

        lines = read_lines(listing)
        first = next(lines, None)
        if first is None or first[1].split() != _HEADER:
            found = "an empty file" if first is None else repr(first[1])
            raise ValueError(f"{listing}, line 1: expected the header {' '.join(_HEADER)!r}, found {found}")
        image_paths, class_ids, super_class_ids, line_numbers = [], [], [], []
        for line_number, line in lines:
            fields = line.split()
            if len(fields) != 4:
                raise ValueError(
                    f"{listing}, line {line_number}: expected '<image_id> <class_id> <super_class_id> <path>', "
                    f"got {line!r}"
                )
            class_ids.append(parse_int(fields[1], listing, line_number, "class_id"))
            super_class_ids.append(parse_int(fields[2], listing, line_number, "super_class_id"))
            image_paths.append(root / fields[3])
            line_numbers.append(line_number)
        super().__init__(root, image_paths, class_ids, transform, listing=listing, line_numbers=line_numbers)
        self.super_class_ids = np.asarray(super_class_ids, dtype=np.int64)

"""PKU VehicleID with its train list and the small / medium / large test lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import ImageListDataset, check_split, parse_int, read_lines, require_path

_LISTS = {
    "train": "train_list.txt",
    "test_small": "test_list_800.txt",
    "test_medium": "test_list_1600.txt",
    "test_large": "test_list_2400.txt",
}
_LAYOUT = (
    "root must be the VehicleID folder, holding train_test_split/{train_list,test_list_800,test_list_1600,"
    "test_list_2400}.txt ('<image_name> <vehicle_id>' lines) and image/<image_name>.jpg."
)


class VehicleID(ImageListDataset):
    """PKU VehicleID: a train list of 13,134 vehicles and test lists of 800, 1,600 and 2,400 vehicles.

    Reads ``root/train_test_split/<list>`` (lines ``<image_name> <vehicle_id>``) and opens
    ``root/image/<image_name>.jpg``; nothing is downloaded. ``labels`` are the vehicle ids remapped to
    ``0..C-1`` in the split; ``class_ids`` keeps the vehicle ids. The paper evaluates each test list on its own,
    every image a query against all others.

    Args:
        root: the ``VehicleID`` folder (``VehicleID_V1.0``).
        split: ``"train"`` (``train_list.txt``), ``"test_small"`` (``test_list_800.txt``), ``"test_medium"``
            (``test_list_1600.txt``) or ``"test_large"`` (``test_list_2400.txt``).
        transform: applied to each RGB PIL image.

    Example:
        >>> data = VehicleID("/data/VehicleID_V1.0", "test_large")  # doctest: +SKIP
        >>> data.num_classes  # doctest: +SKIP
        2400
    """

    splits = tuple(_LISTS)
    # The k of the Recall@k reported on each of the three test lists (docs/method.md §5).
    recall_k_values = (1, 5)

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[[Any], Any] | None = None):
        check_split("VehicleID", split, self.splits)
        root = require_path(Path(root), "VehicleID", _LAYOUT)
        listing = require_path(root / "train_test_split" / _LISTS[split], "VehicleID", _LAYOUT)
        images_dir = require_path(root / "image", "VehicleID", _LAYOUT)

        image_paths, class_ids = [], []
        for line_number, line in read_lines(listing):
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{listing}, line {line_number}: expected '<image_name> <vehicle_id>', got {line!r}")
            image_paths.append(images_dir / f"{fields[0]}.jpg")
            class_ids.append(parse_int(fields[1], listing, line_number, "vehicle_id"))
        super().__init__(root, image_paths, class_ids, transform, listing=listing)

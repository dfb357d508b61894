"""Stanford Cars (Cars196) read from cars_annos.mat, split by class as in metric learning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import ImageListDataset, check_split, require_path

_LAYOUT = (
    "root must hold cars_annos.mat (a struct array 'annotations' with fields relative_im_path, class, test) "
    "and the car_ims/ folder it refers to."
)
_REQUIRED_FIELDS = ("relative_im_path", "class")


def _load_annotations(path: Path) -> np.ndarray:
    from scipy.io import loadmat  # scipy is needed by this loader only

    try:
        contents = loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises several types for a damaged or foreign file
        raise ValueError(f"{path} is not a readable MATLAB .mat file ({error})") from error
    if "annotations" not in contents:
        keys = sorted(k for k in contents if not k.startswith("__"))
        raise ValueError(f"{path} has no 'annotations' struct array (found {keys})")
    annotations = np.atleast_1d(contents["annotations"])
    fields = annotations.dtype.names or ()
    missing = [name for name in _REQUIRED_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"{path}: 'annotations' lacks the field(s) {missing} (found {list(fields)})")
    return annotations


class Cars196(ImageListDataset):
    """Stanford Cars with the class-disjoint split: classes 1–98 train, 99–196 test.

    Reads ``root/cars_annos.mat`` (fields ``relative_im_path`` such as ``car_ims/000001.jpg`` and ``class`` in
    1..196) and opens ``root/<relative_im_path>``; nothing is downloaded. The annotation's own ``test`` flag
    (the classification split) is ignored, as the metric-learning protocol does. ``labels`` are the class ids
    remapped to ``0..97`` in each split; ``class_ids`` keeps the original 1–196 ids. Needs scipy.

    Args:
        root: the folder holding ``cars_annos.mat`` and ``car_ims/``.
        split: ``"train"`` (classes 1–98) or ``"test"`` (classes 99–196).
        transform: applied to each RGB PIL image.

    Example:
        >>> data = Cars196("/data/cars196", "test")  # doctest: +SKIP
        >>> len(data), data.num_classes  # doctest: +SKIP
        (8131, 98)
    """

    splits = ("train", "test")
    # The k of the Recall@k reported for this benchmark (docs/method.md §5).
    recall_k_values = (1, 2, 4, 8)

    def __init__(self, root: str | Path, split: str = "train", transform: Callable[[Any], Any] | None = None):
        check_split("Cars196", split, self.splits)
        root = require_path(Path(root), "Cars196", _LAYOUT)
        annotations_file = require_path(root / "cars_annos.mat", "Cars196", _LAYOUT)
        annotations = _load_annotations(annotations_file)

        image_paths, class_ids = [], []
        for number, record in enumerate(annotations, start=1):
            relative_path = str(record["relative_im_path"]).strip()
            try:
                class_id = int(record["class"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{annotations_file}, annotation {number}: class must be an integer, got {record['class']!r}"
                ) from None
            if not 1 <= class_id <= 196:
                raise ValueError(f"{annotations_file}, annotation {number}: class must be in 1..196, got {class_id}")
            if (class_id <= 98) == (split == "train"):
                image_paths.append(root / relative_path)
                class_ids.append(class_id)
        super().__init__(root, image_paths, class_ids, transform, listing=annotations_file, split=split)

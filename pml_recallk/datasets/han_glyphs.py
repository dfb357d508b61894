"""HanGlyphs: 3,500 Han characters, each in dozens of typeface designs from Debian's CJK font packages.

A many-class real data set shaped like Stanford Online Products (docs/method.md §7): each class is a character of
level 1 of the *General Standard Chinese Characters* list, each image that character in one design. Train and
test share no character and no design group; ``pretrain`` holds the list's other characters (levels 2–3) in
the training design groups only. Fonts come from ``benchmarks/fetch_han_fonts.sh``; the filters and the design
groups are in :mod:`~pml_recallk.datasets.han_table`, the rendering in :mod:`~pml_recallk.datasets.han_fonts`.
See ``docs/han_glyphs.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_int
from .common import GlyphImages, check_split
from .han_fonts import IMAGE_SIZES, TGH_LEVEL_1, TGH_LEVELS_2_3
from .han_table import HanTable, default_cache_dir, default_font_dir, han_table

MIN_IMAGES_PER_CLASS = 2  # a class needs a positive pair


def _check_folder(value: Any, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"HanGlyphs: {name} must be a folder path (str or os.PathLike) or None, got {value!r}")
    return Path(value).expanduser()


def split_designs_and_characters(table: HanTable, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (character positions into table.characters, design group ids)}`` for a seed.

    Level-1 characters are shuffled and halved (test gets ``floor(n/2)``); design groups likewise (at least one
    on each side). ``pretrain`` is the level-2–3 characters with the train groups.
    """
    rng = np.random.default_rng([seed, 0])
    level_1 = np.arange(len(TGH_LEVEL_1))
    levels_2_3 = np.arange(len(TGH_LEVEL_1), len(TGH_LEVEL_1) + len(TGH_LEVELS_2_3))
    chars = rng.permutation(level_1)
    groups = rng.permutation(len(table.group_names))
    if len(groups) < 2:
        raise ValueError(
            f"HanGlyphs: the fonts make {len(groups)} design group, and train and test need one each; add fonts "
            "(bash benchmarks/fetch_han_fonts.sh DIR)"
        )
    num_test_groups = min(max(len(groups) // 2, 1), len(groups) - 1)
    test_groups, train_groups = np.sort(groups[:num_test_groups]), np.sort(groups[num_test_groups:])
    half = len(chars) // 2
    return {
        "train": (np.sort(chars[half:]), train_groups),
        "test": (np.sort(chars[:half]), test_groups),
        "pretrain": (levels_2_3, train_groups),
    }


def select_images(
    table: HanTable, chars: np.ndarray, groups: np.ndarray, images_per_class: int | None, seed: int
) -> np.ndarray:
    """Table rows of the split: the renders of ``chars`` in faces of ``groups``, of the characters with at least
    ``MIN_IMAGES_PER_CLASS`` of them, at most ``images_per_class`` per character, drawn from distinct design
    groups first (a random render per group, random groups; a second render of a group only when the character
    has fewer groups than the cap). Rows come sorted by character, then face."""
    row_group = table.face_group[table.face_index]
    rows = np.flatnonzero(np.isin(table.char_index, chars) & np.isin(row_group, groups))
    counts = np.bincount(table.char_index[rows], minlength=len(table.characters))
    rows = rows[counts[table.char_index[rows]] >= MIN_IMAGES_PER_CLASS]
    if images_per_class is None or len(rows) == 0:
        return rows
    rng = np.random.default_rng([seed, 1])
    shuffled = rows[rng.permutation(len(rows))]
    # Rank of each render within its (character, group): 0 for the first one in the shuffled order.
    key = table.char_index[shuffled] * (len(table.group_names) + 1) + row_group[shuffled]
    by_key = np.argsort(key, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(key[by_key])) + 1]
    rank = np.empty(len(shuffled), np.int64)
    rank[by_key] = np.arange(len(shuffled)) - np.repeat(starts, np.diff(np.r_[starts, len(shuffled)]))
    chosen = shuffled[np.lexsort((rank, table.char_index[shuffled]))]  # per character: all rank 0, then 1, ...
    char_of = table.char_index[chosen]
    first = np.r_[0, np.flatnonzero(np.diff(char_of)) + 1]
    position = np.arange(len(chosen)) - np.repeat(first, np.diff(np.r_[first, len(chosen)]))
    return np.sort(chosen[position < images_per_class])


class HanGlyphs(GlyphImages):
    """Han characters in many typeface designs: class = character, image = that character in one design.

    Images are ``image_size`` × ``image_size`` grayscale (PIL mode ``"L"``), white glyph on black as in
    :class:`~pml_recallk.datasets.Glyphs`: a 56 px font on a 64 px canvas, baseline at row 53, the middle of the
    advance at the middle, reduced by area averaging. Only distinct renders are kept: no blank, ``.notdef``,
    placeholder, wrong or failing glyph, and no two renders of a character within normalised L1 0.03.

    Splits, deterministic for a ``seed`` (``docs/han_glyphs.md`` has the numbers):

    * ``"train"`` / ``"test"``: the 3,500 level-1 characters (kTGH positions 1–3500) halved at random, and the
      design groups (one design under several family names is one group) halved at random: no character and
      no design is in both. Carve validation classes from ``"train"`` (e.g. ``class_disjoint_split``); none is
      carved here.
    * ``"pretrain"``: the 4,605 characters of levels 2–3 (positions 3501–8105) in the *train* design groups
      only, so that pretraining never sees a test design. The split depends on ``seed``: keep the data seed fixed
      across training seeds when one pretrained checkpoint serves them all.

    Characters with fewer than 2 images in a split are left out of it.

    Args:
        split: ``"train"``, ``"test"`` or ``"pretrain"``.
        font_dir: the folder ``bash benchmarks/fetch_han_fonts.sh DIR`` filled; default ``$PML_RECALLK_HAN_FONTS``
            or ``~/.cache/pml-recallk/han-fonts``.
        image_size: 32 or 48.
        images_per_class: at most this many images per class (>= 2), from distinct design groups; ``None`` keeps
            every image.
        seed: seed of the character split, the design-group split and the capped choice.
        cache_dir: where the renders are cached; default ``$PML_RECALLK_CACHE/han-glyphs`` or
            ``~/.cache/pml-recallk/han-glyphs``.
        transform: applied to each PIL image; ``None`` returns the PIL image.
        num_workers: processes that render (the first time only); default: every CPU.

    Attributes:
        images: (N, image_size, image_size) uint8, sorted by label.
        labels: (N,) int64 class ids ``0..C-1``; ``characters[label]`` is the character.
        characters: tuple of the split's characters, in list order.
        fonts: the face of each image ("Noto Serif CJK SC Bold"); ``design_groups``: its design group's name.
        group_ids: (N,) int64 design group of each image (ids shared by every split of one font folder).

    Example:
        >>> from pml_recallk.datasets import HanGlyphs
        >>> train = HanGlyphs("train")  # doctest: +SKIP
        >>> image, label = train[0]  # doctest: +SKIP
        >>> image.mode, image.size, train.characters[label]  # doctest: +SKIP
        ('L', (32, 32), '一')
    """

    splits = ("train", "test", "pretrain")
    recall_k_values = (1, 2, 4, 8, 16, 32)
    config_fields = {
        "han_font_dir": ("str", "", 'han_glyphs: folder of the fetched CJK fonts ("" = the default)'),
        "images_per_class": ("int", 0, "han_glyphs: cap on images per class (0 = the class's default)"),
        "glyphs_cache_dir": ("str", "", 'glyph sets: where rendered images are cached ("" = the default)'),
    }

    @classmethod
    def from_config(cls, data: dict[str, Any], split: str) -> HanGlyphs:
        """The split from a ``[data]`` table (``image_size``, ``split_seed``, ``han_font_dir``, ...)."""
        kwargs = {"images_per_class": data["images_per_class"]} if data["images_per_class"] else {}
        return cls(
            split,
            font_dir=data["han_font_dir"] or None,
            image_size=data["image_size"],
            seed=data["split_seed"],
            cache_dir=data["glyphs_cache_dir"] or None,
            **kwargs,
        )

    def __init__(
        self,
        split: str = "train",
        font_dir: str | os.PathLike | None = None,
        image_size: int = 32,
        images_per_class: int | None = 8,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        transform: Callable[[Any], Any] | None = None,
        num_workers: int | None = None,
    ):
        check_split("HanGlyphs", split, self.splits)
        image_size = check_int(image_size, "HanGlyphs: image_size")
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"HanGlyphs: image_size must be one of {IMAGE_SIZES} (pixels), got {image_size}")
        if images_per_class is not None:
            images_per_class = check_int(images_per_class, "HanGlyphs: images_per_class", minimum=2)
        seed = check_int(seed, "HanGlyphs: seed", minimum=0)
        if num_workers is not None:
            num_workers = check_int(num_workers, "HanGlyphs: num_workers", minimum=1)
        if transform is not None and not callable(transform):
            raise TypeError(f"HanGlyphs: transform must be callable or None, got {type(transform).__name__}")
        font_dir = _check_folder(font_dir, "font_dir") or default_font_dir()
        cache_dir = _check_folder(cache_dir, "cache_dir") or default_cache_dir()

        table = han_table(font_dir, image_size, cache_dir, num_workers)
        chars, groups = split_designs_and_characters(table, seed)[split]
        rows = select_images(table, chars, groups, images_per_class, seed)
        if len(rows) == 0:
            raise ValueError(f"HanGlyphs: the {split!r} split is empty for the fonts under {font_dir}; add fonts")
        split_chars = np.unique(table.char_index[rows])
        label_of = np.full(len(table.characters), -1, np.int64)
        label_of[split_chars] = np.arange(len(split_chars))

        self.split = split
        self.image_size = image_size
        self.images_per_class = images_per_class
        self.seed = seed
        self.font_dir = font_dir
        self.transform = transform
        self.images = table.images[rows]
        self.labels = label_of[table.char_index[rows]]
        self.characters = tuple(table.characters[c] for c in split_chars)
        face = table.face_index[rows]
        self.fonts = table.face_names[face].tolist()
        self.font_paths = table.face_paths[face].tolist()
        self.group_ids = table.face_group[face]
        self.design_groups = table.group_names[self.group_ids].tolist()
        self.dropped = dict(table.dropped)
        self.dropped_faces = dict(table.dropped_faces)

    def __repr__(self) -> str:
        return (
            f"HanGlyphs(split={self.split!r}, classes={self.num_classes}, images={len(self)}, "
            f"design_groups={len(set(self.group_ids.tolist()))}, image_size={self.image_size}, "
            f"images_per_class={self.images_per_class}, seed={self.seed})"
        )

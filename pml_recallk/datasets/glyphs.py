"""Glyphs: characters rendered from real fonts, the data set that needs no download.

Each class is one character and each sample is that character in one face (a typeface style), rendered at a
fixed size and baseline, so case and size are part of the class ("o" and "O" differ by size). Train and test
share no character and, when there are enough font families, no family. The first construction renders every
usable (character, face) pair of the font collection and caches the result on disk; later constructions, for
either split and any seed, only read that cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import features

from .._checks import check_bool, check_fraction, check_int, check_positive_int
from .._io import save_npz_atomic
from .common import GlyphImages, check_split
from .fonts import (
    LATIN_LETTERS,
    FontFace,
    find_font_files,
    group_families,
    read_faces,
    render_face,
    rendered_face_problem,
)

LATIN_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LATIN_LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
GREEK_UPPER = "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"
GREEK_LOWER = "αβγδεζηθικλμνξοπρςστυφχψω"
CYRILLIC_UPPER = "АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
CYRILLIC_LOWER = "абвгдежзийклмнопрстуфхцчшщъыьэюя"

# Characters left out because they look like another character of the alphabet, mapped to that character.
# Each entry renders identically or nearly so (up to serifs) in common faces; the glyph survey that chose them
# is in docs/glyphs.md. The Cyrillic и, п, т are upright-distinct but their italic forms are the italic
# u, n, m; б is the digit 6 in many faces, г the Latin r in sans faces.
LOOKALIKES: dict[str, str] = {
    # Latin and digits
    "l": "I", "1": "I", "0": "O",
    # Greek capitals
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Greek small letters
    "γ": "y", "ι": "i", "ν": "v", "ο": "o", "ρ": "p", "υ": "u", "χ": "x",
    # Cyrillic capitals
    "А": "A", "В": "B", "Г": "Γ", "Е": "E", "З": "3", "К": "K", "М": "M", "Н": "H", "О": "O", "П": "Π",
    "Р": "P", "С": "C", "Т": "T", "У": "Y", "Ф": "Φ", "Х": "X",
    # Cyrillic small letters
    "а": "a", "б": "6", "г": "r", "е": "e", "и": "u", "к": "κ", "о": "o", "п": "π", "р": "p", "с": "c",
    "т": "τ", "у": "y", "ф": "φ", "х": "x",
}  # fmt: skip

_CANDIDATES = LATIN_UPPER + LATIN_LOWER + DIGITS + GREEK_UPPER + GREEK_LOWER + CYRILLIC_UPPER + CYRILLIC_LOWER
DEFAULT_CHARACTERS = "".join(c for c in _CANDIDATES if c not in LOOKALIKES)
"""The default alphabet, 121 characters: Latin capitals (26) and small letters without l (25), digits 2–9 (8),
Greek capitals (10) and small letters (18), Cyrillic capitals (16) and small letters (18) that are no
look-alike of another character in :data:`LOOKALIKES`."""

# Family-disjoint splits need enough families that each split sees several designs: with 8, a test fraction
# of 0.4 gives 3 test and 5 train families. Matplotlib's own fonts make 7 families, so the default data set
# shares its families between the splits (its characters are still disjoint).
MIN_FAMILIES_FOR_DISJOINT_SPLIT = 8

_RENDER_VERSION = 1  # bump when rendering or filtering changes, so old caches are not reused


@dataclass
class GlyphTable:
    """Every usable render of a font collection, before any split (what the cache holds).

    ``images[i]`` is character ``characters[char_index[i]]`` in face ``face_names[face_index[i]]``; faces
    belong to families ``family_names[face_family[f]]``, whose plain upright face is
    ``family_representative[g]``. ``dropped`` counts faces left out, by reason.
    """

    characters: str
    images: np.ndarray
    char_index: np.ndarray
    face_index: np.ndarray
    face_names: np.ndarray
    face_paths: np.ndarray
    face_family: np.ndarray
    family_names: np.ndarray
    family_representative: np.ndarray
    dropped: dict[str, int]

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically (a temporary file, then a rename), so readers never see half a file."""
        save_npz_atomic(
            path,
            characters=np.array(self.characters),
            images=self.images,
            char_index=self.char_index,
            face_index=self.face_index,
            face_names=self.face_names,
            face_paths=self.face_paths,
            face_family=self.face_family,
            family_names=self.family_names,
            family_representative=self.family_representative,
            dropped=np.array(json.dumps(self.dropped)),
        )

    @classmethod
    def load(cls, path: Path) -> GlyphTable:
        with np.load(path, allow_pickle=False) as f:
            fields = {k: f[k] for k in f.files}
        return cls(
            characters=str(fields.pop("characters")),
            dropped=json.loads(str(fields.pop("dropped"))),
            **fields,
        )


def default_cache_dir() -> Path:
    """``$PML_RECALLK_CACHE/glyphs`` if that variable is set, else ``~/.cache/pml_recallk/glyphs``."""
    root = os.environ.get("PML_RECALLK_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "pml_recallk") / "glyphs"


def glyph_table(
    font_dirs: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    characters: str = DEFAULT_CHARACTERS,
    image_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
) -> GlyphTable:
    """The renders of ``characters`` in every usable face under ``font_dirs``, from the cache when present.

    The cache file name holds a hash of the font files (path, size, modification time), the characters, the
    image size and the PIL/FreeType versions, so any change renders again.
    """
    font_files = find_font_files(font_dirs)
    key = {
        "version": _RENDER_VERSION,
        "characters": characters,
        "image_size": image_size,
        "pil": PIL.__version__,
        "freetype": features.version("freetype2"),
        "fonts": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in font_files],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"glyphs-{image_size}px-{digest}.npz"
    if path.exists():
        try:
            return GlyphTable.load(path)
        except Exception as error:  # a damaged cache file is rebuilt rather than trusted
            warnings.warn(f"Glyphs: ignoring unreadable cache file {path} ({error}); rendering again", stacklevel=3)
    table = build_glyph_table(font_files, characters, image_size)
    try:
        table.save(path)
    except OSError as error:
        warnings.warn(f"Glyphs: could not write the cache file {path} ({error})", stacklevel=3)
    return table


def build_glyph_table(font_files: Sequence[Path], characters: str, image_size: int) -> GlyphTable:
    """Render and filter (no cache). The filters, in order:

    1. faces: by name (symbol, maths, small caps), character map (all of A–Z a–z) and glyph names (symbol
       encodings), see :func:`~pml_recallk.datasets.fonts.read_faces`;
    2. samples: characters the face does not map, renders that are blank, do not fit at the fixed size and
       baseline, equal the face's .notdef box, or equal another character of the same face;
    3. faces: fewer than ``MIN_LATIN_LETTERS`` distinct Latin letters, small letters drawn as capitals
       (``CAPS_SHAPE_RATIO``), letters drawn as filled boxes (``MAX_INK_DENSITY``), or renders identical to
       an earlier face (the same font installed twice).
    """
    probe = "".join(dict.fromkeys(LATIN_LETTERS + characters))
    dropped: dict[str, int] = {}
    kept: list[tuple[FontFace, dict[str, np.ndarray]]] = []
    seen_renders: set[bytes] = set()
    for path in font_files:
        for face, charmap, problem in read_faces(path):
            if problem is None:
                renders = render_face(face, charmap, probe, image_size)
                problem = rendered_face_problem(renders)
            if problem is None:
                fingerprint = hashlib.sha256(b"".join(renders[c].tobytes() for c in sorted(renders))).digest()
                if fingerprint in seen_renders:
                    problem = "same renders as another face (a font installed twice)"
                seen_renders.add(fingerprint)
            if problem is not None:
                dropped[problem] = dropped.get(problem, 0) + 1
                continue
            kept.append((face, renders))
    if not kept:
        raise ValueError(
            f"none of the {len(font_files)} font files holds a usable Latin text face "
            f"(left out: {dropped}); give folders of ordinary text fonts, or font_dirs=None for matplotlib's"
        )

    face_family, family_names, family_representative = group_families(kept)
    images, char_index, face_index = [], [], []
    for f, (_, renders) in enumerate(kept):
        for c, char in enumerate(characters):
            if char in renders:
                images.append(renders[char])
                char_index.append(c)
                face_index.append(f)
    size = (0, image_size, image_size)
    return GlyphTable(
        characters=characters,
        images=np.stack(images) if images else np.zeros(size, np.uint8),
        char_index=np.asarray(char_index, dtype=np.int64),
        face_index=np.asarray(face_index, dtype=np.int64),
        face_names=np.array([f.name for f, _ in kept]),
        face_paths=np.array([f"{f.path}#{f.index}" if f.index else f.path for f, _ in kept]),
        face_family=face_family,
        family_names=family_names,
        family_representative=family_representative,
        dropped=dropped,
    )


def _character_group(char: str) -> str:
    """Script and case of a character ("LATIN Lu", "DIGIT Nd"), so that splits keep every kind of character."""
    return f"{unicodedata.name(char, '?').split()[0]} {unicodedata.category(char)}"


class Glyphs(GlyphImages):
    """Characters rendered from real fonts: each class is a character, each sample that character in one face.

    Images are ``image_size`` × ``image_size`` grayscale, white glyph on black, drawn with the em size at 0.7
    of the side and the baseline at 0.75 of the side for every glyph (centred horizontally on the ink), so
    case and size are part of the class: ``"o"`` is smaller than ``"O"`` and ``"p"`` descends below the
    baseline. With ``font_dirs=None`` the faces are the ones matplotlib ships (DejaVu, STIX, Computer Modern:
    21 usable faces in 7 families); ``font_dirs=["/usr/share/fonts"]`` after ``benchmarks/setup_fonts.sh``
    gives hundreds (811 faces in 149 families on Debian 12). See ``docs/glyphs.md``.

    The split, deterministic for a ``seed``:

    * characters: those with at least ``min_faces_per_character`` samples on both sides are shuffled and a
      ``test_fraction`` of each script and case (Latin capitals, Greek small letters, digits, ...) goes to
      test, the rest to train; no character is in both splits;
    * families (a family is a design in all its weights, slants and widths, with renamed clones merged):
      when there are at least ``MIN_FAMILIES_FOR_DISJOINT_SPLIT`` (8) families, or ``disjoint_families=True``,
      a ``test_fraction`` of them (at least one) is drawn for test and the rest for train, so test samples are
      drawn in unseen typefaces. With fewer families (matplotlib's 7) both splits use all faces.

    Left out: look-alike characters (:data:`LOOKALIKES`, e.g. Greek Α and Cyrillic А of Latin A), symbol,
    maths, small-caps, all-caps and inverted faces, and renders that are blank, do not fit, are the face's
    placeholder box or equal another character of the same face.

    Args:
        split: ``"train"`` or ``"test"``.
        font_dirs: folders searched recursively for ``.ttf``/``.otf``/``.ttc`` files; ``None`` for
            matplotlib's fonts.
        image_size: side of the square images in pixels (at least 16).
        seed: seed of the character and family split.
        cache_dir: where the rendered table is cached; default ``$PML_RECALLK_CACHE/glyphs`` or
            ``~/.cache/pml_recallk/glyphs``.
        transform: applied to each PIL image (mode ``"L"``); ``None`` returns the PIL image.
        characters: the alphabet (a string or an iterable of single characters); default
            :data:`DEFAULT_CHARACTERS`.
        one_face_per_family: keep only each family's plain upright face (e.g. DejaVu Sans Book, not Bold), so
            that no two samples of a class are styles of one design.
        test_fraction: fraction of the characters (per script and case) and of the families that go to test.
        min_faces_per_character: a character is used only if it has at least this many samples in each split's
            faces (4 lets ``MPerClassSampler(m=4)`` draw every class).
        disjoint_families: ``None`` decides by the number of families as above; ``True`` forces disjoint
            families (needs at least 2); ``False`` shares all faces between the splits.

    Attributes:
        images: (N, image_size, image_size) uint8 array, the samples in label order.
        labels: (N,) int64 class ids ``0..C-1`` within the split; ``dataset[i]`` returns ``labels[i]``.
        characters: the split's characters, ``characters[label]`` is the character of a label.
        fonts: the face of each sample, e.g. ``"DejaVu Sans Bold"``.
        font_paths: the font file of each sample (``"<path>#<index>"`` for faces after the first of a
            ``.ttc`` collection).
        families: the family of each sample, e.g. ``"DejaVu Sans"``.
        num_classes: ``C``.
        disjoint_families: whether train and test use disjoint families.

    Example:
        >>> from pml_recallk.datasets import Glyphs
        >>> train, test = Glyphs("train"), Glyphs("test")
        >>> set(train.characters) & set(test.characters)
        set()
        >>> image, label = train[0]
        >>> image.mode, image.size, train.characters[label] == train.characters[train.labels[0]]
        ('L', (32, 32), True)
    """

    splits = ("train", "test")
    # Not a paper benchmark: CUB's k, as the default test split (47 classes) is of the size of CUB's (100).
    recall_k_values = (1, 2, 4, 8)
    config_fields = {
        "glyphs_font_dirs": ("list[str]", [], "glyphs: font folders to render from ([] = matplotlib's fonts)"),
        "glyphs_one_face_per_family": (
            "bool", False, "glyphs: only each family's plain upright face (no two samples are styles of one design)"
        ),
        "glyphs_cache_dir": ("str", "", 'glyph sets: where rendered images are cached ("" = the default)'),
    }  # fmt: skip

    @classmethod
    def from_config(cls, data: dict[str, Any], split: str) -> Glyphs:
        """The split from a ``[data]`` table (``image_size`` and the ``glyphs_*`` keys)."""
        return cls(
            split,
            font_dirs=data["glyphs_font_dirs"] or None,
            image_size=data["image_size"],
            cache_dir=data["glyphs_cache_dir"] or None,
            one_face_per_family=data["glyphs_one_face_per_family"],
        )

    def __init__(
        self,
        split: str = "train",
        font_dirs: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        image_size: int = 32,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        transform: Callable[[Any], Any] | None = None,
        characters: str | Iterable[str] | None = None,
        one_face_per_family: bool = False,
        test_fraction: float = 0.4,
        min_faces_per_character: int = 4,
        disjoint_families: bool | None = None,
    ):
        check_split("Glyphs", split, self.splits)
        image_size = check_int(image_size, "image_size", minimum=16)
        options = _SplitOptions(
            seed=check_int(seed, "seed", minimum=0),
            test_fraction=check_fraction(test_fraction, "test_fraction"),
            min_faces_per_character=check_positive_int(min_faces_per_character, "min_faces_per_character"),
            one_face_per_family=check_bool(one_face_per_family, "one_face_per_family"),
            disjoint_families=None if disjoint_families is None else check_bool(disjoint_families, "disjoint_families"),
        )
        if transform is not None and not callable(transform):
            raise TypeError(f"Glyphs: transform must be callable or None, got {type(transform).__name__}")
        alphabet = _check_characters(characters)

        table = glyph_table(font_dirs, alphabet, image_size, cache_dir)
        rng = np.random.default_rng(options.seed)  # families are drawn first, then characters: keep this order
        split_faces, self.disjoint_families = _split_faces(table, options, rng)
        split_chars = _split_characters(table, alphabet, split_faces, options, rng)
        chars = split_chars[split]
        keep, labels = _samples_of(table, chars, split_faces[split])

        self.split = split
        self.image_size = image_size
        self.transform = transform
        self.images = table.images[keep]
        self.labels = labels
        self.characters = tuple(alphabet[c] for c in chars)
        self.fonts = table.face_names[table.face_index[keep]].tolist()
        self.font_paths = table.face_paths[table.face_index[keep]].tolist()
        self.families = table.family_names[table.face_family[table.face_index[keep]]].tolist()
        self.dropped_faces = dict(table.dropped)

    def __repr__(self) -> str:
        return (
            f"Glyphs(split={self.split!r}, classes={self.num_classes}, samples={len(self)}, "
            f"faces={len(set(self.fonts))}, families={len(set(self.families))}, "
            f"disjoint_families={self.disjoint_families})"
        )


@dataclass(frozen=True)
class _SplitOptions:
    """The checked arguments of :class:`Glyphs` that decide the split."""

    seed: int
    test_fraction: float
    min_faces_per_character: int
    one_face_per_family: bool
    disjoint_families: bool | None


def _split_faces(
    table: GlyphTable, options: _SplitOptions, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], bool]:
    """The faces of each split, and whether they are family-disjoint (see :class:`Glyphs`)."""
    faces = np.arange(len(table.face_names))
    if options.one_face_per_family:
        faces = np.sort(table.family_representative)
    families = np.unique(table.face_family[faces])
    disjoint = options.disjoint_families
    if disjoint is None:
        disjoint = len(families) >= MIN_FAMILIES_FOR_DISJOINT_SPLIT
    if not disjoint:
        return {"train": faces, "test": faces}, False
    if len(families) < 2:
        raise ValueError(
            f"Glyphs: disjoint_families=True needs at least 2 font families, found {len(families)} "
            f"({list(table.family_names[families])}); add font_dirs or pass disjoint_families=False"
        )
    num_test = min(max(round(options.test_fraction * len(families)), 1), len(families) - 1)
    test_families = rng.permutation(families)[:num_test]
    in_test = np.isin(table.face_family[faces], test_families)
    return {"train": faces[~in_test], "test": faces[in_test]}, True


def _split_characters(
    table: GlyphTable,
    alphabet: str,
    split_faces: dict[str, np.ndarray],
    options: _SplitOptions,
    rng: np.random.Generator,
) -> dict[str, list[int]]:
    """Character indices of each split: a ``test_fraction`` of each script and case goes to test.

    A character qualifies when both splits' faces hold at least ``min_faces_per_character`` samples of it, so
    the character split is a plain random partition of the qualifying characters.
    """
    counts = {
        s: np.bincount(table.char_index[np.isin(table.face_index, f)], minlength=len(alphabet))
        for s, f in split_faces.items()
    }
    minimum = options.min_faces_per_character
    usable = [c for c in range(len(alphabet)) if min(counts["train"][c], counts["test"][c]) >= minimum]
    test_chars: list[int] = []
    for group in dict.fromkeys(_character_group(alphabet[c]) for c in usable):
        members = [c for c in usable if _character_group(alphabet[c]) == group]
        test_chars += rng.permutation(members)[: round(options.test_fraction * len(members))].tolist()
    split_chars = {"test": sorted(test_chars), "train": sorted(set(usable) - set(test_chars))}
    if not split_chars["train"] or not split_chars["test"]:
        raise ValueError(
            f"Glyphs: only {len(usable)} characters have >= {minimum} samples in the faces of both splits "
            f"({len(split_faces['train'])} train, {len(split_faces['test'])} test faces); "
            "add font_dirs, lower min_faces_per_character, or pass disjoint_families=False"
        )
    return split_chars


def _samples_of(table: GlyphTable, chars: list[int], faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``table`` for ``chars`` in ``faces``, sorted by label then face, and their labels ``0..C-1``."""
    keep = np.flatnonzero(np.isin(table.char_index, chars) & np.isin(table.face_index, faces))
    label_of_char = np.full(len(table.characters), -1, dtype=np.int64)
    label_of_char[chars] = np.arange(len(chars))
    keep = keep[np.lexsort((table.face_index[keep], label_of_char[table.char_index[keep]]))]
    return keep, label_of_char[table.char_index[keep]]


def _check_characters(characters: str | Iterable[str] | None) -> str:
    if characters is None:
        return DEFAULT_CHARACTERS
    chars = list(characters)
    bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
    if bad:
        raise TypeError(f"Glyphs: characters must be single-character strings, got {bad[:5]!r}")
    duplicates = sorted({c for c in chars if chars.count(c) > 1})
    if duplicates:
        raise ValueError(f"Glyphs: characters must not repeat, got {duplicates!r} more than once")
    if len(chars) < 2:
        raise ValueError(f"Glyphs: characters must hold at least 2 characters (one per split), got {chars!r}")
    blank = [c for c in chars if c.isspace() or unicodedata.category(c).startswith(("C", "Z"))]
    if blank:
        raise ValueError(f"Glyphs: characters must be visible, got {blank!r}")
    return "".join(chars)

"""Font files and faces for both glyph data sets: finding font files, reading their faces, naming families.

A *face* is one typeface style in one font file (``DejaVuSans-Bold.ttf``; a ``.ttc`` collection holds several).
:func:`find_font_files` is the one walk over font folders and :func:`scalable_faces` the one loop over the faces
of a file; :class:`~pml_recallk.datasets.Glyphs` judges the faces it reads by their Latin letters
(:mod:`~pml_recallk.datasets.glyphs.latin_faces`), :class:`~pml_recallk.datasets.HanGlyphs` by their coverage of
the Han list (:mod:`~pml_recallk.datasets.glyphs.han_faces`). Faces are read with ``matplotlib.ft2font`` (character
map, names, glyph names), so no fontTools and no system font configuration is needed.

Example:
    >>> from pml_recallk.datasets.glyphs.fonts import find_font_files, scalable_faces
    >>> path = next(p for p in find_font_files(None) if p.name == "DejaVuSans.ttf")
    >>> [(index, font.family_name) for index, font in scalable_faces(path)]
    [(0, 'DejaVu Sans')]
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

from ..._paths import shipped_script

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
HAN_FONT_SUFFIXES = (*FONT_SUFFIXES, ".otc")  # OpenType collections: only CJK packages ship them

# Words that name a style rather than a design: "DejaVu Sans Bold Condensed" and "DejaVu Sans" are one family.
# "Mono", "Serif", "Sans" and "Slab" stay, because they name a different design in families such as DejaVu.
_STYLE_WORDS = {
    w.lower()
    for w in """
    Regular Book Normal Plain Upright Medium Md Bold Bd SemiBold Semi DemiBold Demi ExtraBold UltraBold
    Heavy Black Blk Fat Light Lt ExtraLight UltraLight Thin Hairline Hair Italic It Ital Oblique Obl Slanted Inclined
    Kursiv Condensed Cond Cn SemiCondensed ExtraCondensed UltraCondensed DemiCondensed Narrow Compressed
    Expanded Extended Wide Display Text Caption Subhead Headline Poster UI Retina Variable Width Std Pro LT""".split()
}
# Weight numbers such as "Thin 100" or optical sizes such as "EB Garamond 12".
# Also "No2" (ADF's alternate-glyph versions of one design) and glued words ("SemiBoldItalic").
_STYLE_TOKEN = re.compile(r"^(\d{1,3}|\d{2,3}pt|no\d|[a-z]*(bold|light|thin|italic|oblique|condensed|black))$", re.I)


@dataclass(frozen=True)
class FontFace:
    """One face of a font file.

    ``family`` is the family name the file gives; ``family_key`` is that name without style words (weight,
    slant, width, optical size), so the styles of one design share a key.
    """

    path: str
    index: int
    family: str
    style: str

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}".strip()

    @property
    def family_key(self) -> str:
        return family_key(self.family)

    @property
    def style_penalty(self) -> int:
        """How far the face is from its family's plain upright style (0 for "Regular", "Book", "Roman")."""
        words = re.split(r"[\s_\-]+|(?<=[a-z])(?=[A-Z])", f"{self.family} {self.style}")
        plain = {"regular", "book", "roman", "normal", "plain", "upright", "std", "pro"}
        return sum(
            1 for w in words if w and (w.lower() in _STYLE_WORDS or _STYLE_TOKEN.match(w)) and w.lower() not in plain
        )


@dataclass(frozen=True)
class HanFace(FontFace):
    """A face of a CJK font file: ``path`` is relative to the font folder, ``coverage`` counts the Han list
    characters its character map holds."""

    coverage: int

    @property
    def family_key(self) -> str:
        """The family name less style words, the region tags of pan-CJK families and variant codes ("Noto Sans
        CJK SC Bold" → "noto sans cjk", "Ume Gothic O5" → "ume gothic"), so the weights, regional members and
        revisions of one family share a key."""
        return re.sub(r"(\s+(sc|tc|jp|kr|hk|cn|tw|mbe|hkscs|[a-z]\d))+$", "", family_key(self.family))

    @property
    def package(self) -> str:
        """The Debian package that holds the file (the first folder of the fetch script's ``pkgs/`` layout)."""
        parts = Path(self.path).parts
        return parts[1] if len(parts) > 2 and parts[0] == "pkgs" else parts[0]


def family_key(family: str) -> str:
    """The design a family name stands for: ``"DejaVu Sans Condensed"`` → ``"dejavu sans"``.

    Trailing style words are removed one by one, so ``"Clear Sans Light"`` and ``"Roboto Condensed Medium"``
    map to ``"clear sans"`` and ``"roboto"``; a name is never reduced to nothing.
    """
    # Split glued words at case changes ("BetecknaGSCondensed" → "Beteckna GS Condensed").
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", family)
    words = spaced.replace("_", " ").replace("-", " ").split()
    while len(words) > 1 and (words[-1].lower() in _STYLE_WORDS or _STYLE_TOKEN.match(words[-1])):
        words.pop()
    return " ".join(words).lower()


def join_groups(num_items: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Group ids ``0..G-1`` of ``num_items`` items when the two items of every pair are in one group.

    Union-find, joining in the order of ``pairs`` (``(i, j)`` puts j's group under i's root); groups are numbered
    in the order of their roots. Both data sets number their families and design groups this way, and their
    splits draw from those numbers, so the order is kept as it is.

    Example:
        >>> join_groups(5, [(3, 4), (1, 3)]).tolist()
        [0, 1, 2, 1, 1]
    """
    parent = list(range(num_items))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(int(j))] = root(int(i))
    roots = sorted({root(i) for i in range(num_items)})
    return np.array([roots.index(root(i)) for i in range(num_items)], np.int64)


def matplotlib_font_dir() -> Path:
    """The folder of TrueType fonts that matplotlib ships (DejaVu, STIX, Computer Modern)."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_files_below(folder: Path, suffixes: tuple[str, ...] = FONT_SUFFIXES) -> list[Path]:
    """The font files below ``folder`` (recursively, following links), as found (not resolved), sorted by their
    path relative to ``folder``."""
    files = []
    for root, _, names in os.walk(folder, followlinks=True):
        files += [Path(root, n) for n in names if n.lower().endswith(suffixes)]
    return sorted(files, key=lambda p: str(p.relative_to(folder)))


def find_font_files(font_dirs: Sequence[str | os.PathLike] | str | os.PathLike | None) -> list[Path]:
    """All ``.ttf``/``.otf``/``.ttc`` files below the given folders (recursively, following links), resolved and
    sorted, each once.

    ``None`` means matplotlib's own fonts. Raises ``ValueError`` for a missing folder or when no font file is
    found, so that an empty benchmark is never built silently.
    """
    if font_dirs is None:
        font_dirs = [matplotlib_font_dir()]
    elif isinstance(font_dirs, (str, os.PathLike)):
        font_dirs = [font_dirs]
    font_dirs = list(font_dirs)
    if not font_dirs:
        raise ValueError("font_dirs is empty: give at least one folder of .ttf/.otf files, or None for matplotlib's")
    files: set[Path] = set()
    for folder in font_dirs:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"font_dirs entry {str(folder)!r} is not a folder; give folders that hold .ttf/.otf files "
                f"(e.g. /usr/share/fonts after sudo {shipped_script('setup_fonts.sh')}), or None for matplotlib's fonts"
            )
        files.update(path.resolve() for path in font_files_below(folder))
    if not files:
        raise ValueError(
            f"no .ttf/.otf/.ttc font files found under font_dirs={[str(d) for d in font_dirs]}; install fonts "
            f"(sudo {shipped_script('setup_fonts.sh')}) or pass font_dirs=None for matplotlib's fonts"
        )
    return sorted(files)


def file_signature(path: Path) -> tuple[int, int]:
    """Size and modification time of a file: what the caches' keys hold of each font file."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def scalable_faces(path: Path) -> Iterator[tuple[int, object]]:
    """``(index, FT2Font)`` for every scalable face of a font file; nothing for an unreadable file or face, as
    fontconfig skips them, and nothing for bitmap-only faces, which cannot be drawn at an arbitrary size."""
    from matplotlib.ft2font import FT2Font

    try:
        first = FT2Font(str(path))
    except Exception:  # a broken or unsupported file
        return
    for index in range(first.num_faces):
        try:
            font = first if index == 0 else FT2Font(str(path), face_index=index)
        except Exception:
            continue
        if font.scalable:
            yield index, font

"""Font discovery, face filtering and fixed-baseline glyph rendering for :class:`~pml_recallk.datasets.Glyphs`.

A *face* is one typeface style in one font file (``DejaVuSans-Bold.ttf``; a ``.ttc`` collection holds several).
This module decides which faces are usable text faces and renders one character of one face into a square
grayscale image at a fixed size and baseline. It reads fonts with PIL (rendering) and ``matplotlib.ft2font``
(character map, names and glyph names), so it needs no fontTools and no system font configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont

from .._paths import shipped_script

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")

# Size and baseline as fractions of the image side. The em square is 0.7 of the side and the baseline sits
# 0.75 of the way down, so there is room for about 1.07 em above the baseline (capitals with accents or
# breves, e.g. Й) and 0.36 em below it (descenders). Every glyph of every face uses the same two numbers, so
# case and size stay visible: "o" is smaller than "O", and "p" reaches below the baseline where "P" does not.
EM_FRACTION = 0.7
BASELINE_FRACTION = 0.75

# A render counts as blank when its brightest pixel is below this (out of 255) or it has fewer lit pixels.
BLANK_MAX_VALUE = 64
BLANK_MIN_PIXELS = 4

LATIN_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Thresholds of the face checks, set from a survey of ~1,400 Debian faces (docs/glyphs.md).
DUPLICATE_DISTANCE = 0.002  # two characters of one face closer than this are one drawing (tofu, capitals)
MIN_LATIN_LETTERS = 48  # of A-Z a-z, a usable text face renders at least this many distinctly
CAPS_SHAPE_RATIO = 0.4  # small letters this close to their own capital (vs the others) ⇒ small/all caps
MAX_INK_DENSITY = 0.75  # letters filling their ink box this much are boxes (inverted faces)
SAME_DESIGN_DISTANCE = 0.06  # families whose plain faces are this close are one design under two names

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

# Computer Modern files in matplotlib name each style as its own family ("cmb10" is CM Roman Bold).
_FAMILY_ALIASES = {
    "cmr10": ("Computer Modern Roman", "Regular"),
    "cmb10": ("Computer Modern Roman", "Bold"),
    "cmti10": ("Computer Modern Roman", "Italic"),
    "cmss10": ("Computer Modern Sans", "Regular"),
    "cmtt10": ("Computer Modern Typewriter", "Regular"),
}

# Faces whose encoding is a symbol or maths encoding (TeX cmex/cmsy/cmmi place symbols or maths italics on
# Latin code points) or whose letters are not text letters at all.
_SYMBOL_FACE_PATTERN = re.compile(
    r"math|symbol|\bsym\b|sym(bol)?s?\b|dingbat|ornament|emoji|\bicons?\b|awesome|music|euterpe|braille|barcode|keyboard"
    r"|wingding|webding|\bcm(ex|sy|mi|bsy|mib)\d+\b|\bstix(size|nonuni|integrals|variants)|last ?resort",
    re.I,
)
# Faces that draw lowercase letters as capitals (small caps, all caps, unicase, titling capitals).
_SMALL_CAPS_PATTERN = re.compile(r"\bsc\b|small ?caps|\bcaps\b|capitals|unicase|titling|initials|\bcsc\d*\b", re.I)
_SMALL_CAPS_SUFFIX = re.compile(r"[a-z0-9]SC\b")  # "LinLibertineSC", case-sensitive so "Disc" passes


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


def matplotlib_font_dir() -> Path:
    """The folder of TrueType fonts that matplotlib ships (DejaVu, STIX, Computer Modern)."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def find_font_files(font_dirs: Sequence[str | os.PathLike] | str | os.PathLike | None) -> list[Path]:
    """All ``.ttf``/``.otf``/``.ttc`` files below the given folders (recursively, following links), sorted.

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
        for root, _, names in os.walk(folder, followlinks=True):
            files.update(Path(root, n).resolve() for n in names if n.lower().endswith(FONT_SUFFIXES))
    if not files:
        raise ValueError(
            f"no .ttf/.otf/.ttc font files found under font_dirs={[str(d) for d in font_dirs]}; install fonts "
            f"(sudo {shipped_script('setup_fonts.sh')}) or pass font_dirs=None for matplotlib's fonts"
        )
    return sorted(files)


def read_faces(path: Path) -> list[tuple[FontFace, dict[int, int], str | None]]:
    """The faces of one font file: (face, character map (code point → glyph index), why the face is not a
    usable Latin text face or ``None``), judged from names, character map and glyph names. [] if unreadable."""
    try:
        first = FT2Font(str(path))
    except Exception:  # a broken or unsupported file is skipped, like fontconfig does
        return []
    faces = []
    for index in range(first.num_faces):
        try:
            font = first if index == 0 else FT2Font(str(path), face_index=index)
        except Exception:
            continue
        if not font.scalable:  # bitmap-only faces cannot be rendered at an arbitrary size
            continue
        charmap = {cp: gid for cp, gid in font.get_charmap().items() if gid != 0}
        family, style = font.family_name or path.stem, font.style_name or ""
        family, style = _FAMILY_ALIASES.get(family, (family, style))
        face = FontFace(str(path), index, family, style)
        faces.append((face, charmap, _face_problem(face, font, charmap)))
    return faces


def _has_true_glyph_names(font, charmap: dict[int, int]) -> bool:
    """False when the glyph names show a symbol encoding: Latin code points mapped to named non-letters.

    TeX's cmsy10 maps "a"–"z" to glyphs named e.g. "turnstileright" and cmex10 maps letters to
    "parenleftbig"; a text face names them "a", "a.alt", "uni0061" or has no useful names at all.
    """
    wrong = 0
    for letter in LATIN_LETTERS:
        gid = charmap.get(ord(letter))
        if gid is None:
            continue
        try:
            name = font.get_glyph_name(gid)
        except Exception:
            return True
        base = re.split(r"[._]", name)[0]
        uninformative = re.fullmatch(
            r"(uni[0-9A-Fa-f]{4,8}|u[0-9A-Fa-f]{4,8}|glyph\d*|g\d+|gid\d+|cid\d+|index\d+|)", base
        )
        if base != letter and not uninformative and len(base) > 1:
            wrong += 1
    return wrong < 4


def _face_problem(face: FontFace, font, charmap: dict[int, int]) -> str | None:
    names = f"{face.family} {face.style} {Path(face.path).stem}"
    if _SYMBOL_FACE_PATTERN.search(names):
        return "symbol or maths face (by name)"
    style_names = f"{face.family} {face.style}"
    if _SMALL_CAPS_PATTERN.search(style_names) or _SMALL_CAPS_SUFFIX.search(style_names):
        return "small-caps face (by name)"
    if any(ord(c) not in charmap for c in LATIN_LETTERS):
        return "lacks some of A-Z a-z"
    if not _has_true_glyph_names(font, charmap):
        return "symbol-encoded face (the glyphs of Latin letters are named as symbols)"
    return None


class FaceRenderer:
    """Renders characters of one face into ``image_size`` × ``image_size`` uint8 arrays, white on black.

    The em size is ``EM_FRACTION·image_size`` and the baseline is the row ``BASELINE_FRACTION·image_size`` for
    every glyph; glyphs are centred horizontally on their ink. Example::

        >>> from pml_recallk.datasets.fonts import FaceRenderer, matplotlib_font_dir
        >>> r = FaceRenderer(str(matplotlib_font_dir() / "DejaVuSans.ttf"), 0, 32)
        >>> r.render("A").shape, r.render("A").dtype
        ((32, 32), dtype('uint8'))
    """

    def __init__(self, path: str, index: int, image_size: int):
        self.image_size = image_size
        self.baseline = round(BASELINE_FRACTION * image_size)
        # The basic layout engine draws the glyph the character map names, with no shaping and no fallback,
        # so a missing glyph shows as the face's own .notdef glyph and not as another font's.
        self.font = ImageFont.truetype(
            path, round(EM_FRACTION * image_size), index=index, layout_engine=ImageFont.Layout.BASIC
        )
        # U+10FFFD is a private-use code point that no text face maps: it draws .notdef (the "tofu" box).
        self.notdef = self._draw("\U0010fffd")

    def render(self, char: str) -> np.ndarray | None:
        """The glyph image, or ``None`` when it is blank, does not fit, or is the face's .notdef box."""
        image = self._draw(char)
        if image is None or is_blank(image):
            return None
        if self.notdef is not None and np.array_equal(image, self.notdef):
            return None
        return image

    def _draw(self, char: str) -> np.ndarray | None:
        size, baseline = self.image_size, self.baseline
        left, top, right, bottom = self.font.getbbox(char, anchor="ls")
        if right <= left or bottom <= top:
            return None
        if right - left > size or -top > baseline or bottom > size - baseline:
            return None  # does not fit at the fixed size and baseline; shrinking it would change its class
        image = Image.new("L", (size, size), 0)
        x = (size - (right - left)) // 2 - left
        ImageDraw.Draw(image).text((x, baseline), char, fill=255, font=self.font, anchor="ls")
        return np.asarray(image)


def is_blank(image: np.ndarray) -> bool:
    """True when a render has (almost) no ink."""
    return int(image.max()) < BLANK_MAX_VALUE or int((image >= BLANK_MAX_VALUE).sum()) < BLANK_MIN_PIXELS


def render_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised squared distance ‖a − b‖² / (‖a‖² + ‖b‖²) between renders, in [0, 1] (0: identical).

    ``a`` is (..., H, W) and ``b`` broadcasts against it. Two renders with no ink in common give 1.
    """
    a = np.asarray(a, dtype=np.float32) / 255.0
    b = np.asarray(b, dtype=np.float32) / 255.0
    num = ((a - b) ** 2).sum(axis=(-2, -1))
    den = (a**2).sum(axis=(-2, -1)) + (b**2).sum(axis=(-2, -1))
    return num / np.maximum(den, 1e-12)


def pairwise_render_distances(images: np.ndarray) -> np.ndarray:
    """All :func:`render_distance` values between the rows of ``images`` (N, H, W), as an (N, N) matrix."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    sq = (flat**2).sum(1)
    num = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    return num / np.maximum(sq[:, None] + sq[None, :], 1e-12)


def near_duplicates(images: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the renders in ``images`` (N, H, W) within :func:`render_distance` ``threshold`` of another.

    Only pairs whose ink energies allow it are compared: ‖a − b‖ ≥ |‖a‖ − ‖b‖| bounds the distance from below,
    so with the renders sorted by ‖·‖ each one is compared with a short run of neighbours.
    """
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    norms = np.sqrt((flat**2).sum(1))
    order = np.argsort(norms)
    sorted_norms = norms[order]
    # (‖b‖ − ‖a‖)² < t(‖a‖² + ‖b‖²) holds for ‖b‖ up to this factor times ‖a‖.
    factor = (1 + np.sqrt(threshold * (2 - threshold))) / (1 - threshold)
    ends = np.searchsorted(sorted_norms, sorted_norms * factor, side="right")
    first = np.repeat(np.arange(len(order)), ends - np.arange(len(order)) - 1)
    second = np.concatenate([np.arange(r + 1, e) for r, e in enumerate(ends)]) if len(first) else first
    a, b = order[first], order[second]
    close = ((flat[a] - flat[b]) ** 2).sum(1) < threshold * (norms[a] ** 2 + norms[b] ** 2)
    return np.unique(np.concatenate([a[close], b[close]]))


def render_face(face: FontFace, charmap: dict[int, int], characters: str, image_size: int) -> dict[str, np.ndarray]:
    """The renders of the ``characters`` the face maps, less blank, oversized and .notdef renders and less every
    character drawn like another one of the face (within ``DUPLICATE_DISTANCE``)."""
    try:
        renderer = FaceRenderer(face.path, face.index, image_size)
    except OSError:
        return {}
    renders = {}
    for char in characters:
        if ord(char) in charmap:
            image = renderer.render(char)
            if image is not None:
                renders[char] = image
    # Two characters drawn alike in one face are placeholders (tofu), capitals standing in for small letters,
    # or look-alikes (italic Cyrillic и and u): neither sample can be told apart, so both go.
    chars = list(renders)
    if len(chars) > 1:
        for i in near_duplicates(np.stack([renders[c] for c in chars]), DUPLICATE_DISTANCE):
            del renders[chars[i]]
    return renders


def rendered_face_problem(renders: dict[str, np.ndarray]) -> str | None:
    """Why the renders of a face (from :func:`render_face`, including A–Z a–z) do not make a usable text face:
    too few distinct Latin letters, small letters drawn as capitals, or letters drawn as filled boxes."""
    if sum(c in renders for c in LATIN_LETTERS) < MIN_LATIN_LETTERS:
        return f"fewer than {MIN_LATIN_LETTERS} distinct Latin letters render"
    if _caps_shape_ratio(renders) < CAPS_SHAPE_RATIO:
        return "small letters drawn as capitals (small caps, all caps)"
    if np.median([_ink_density(renders[c]) for c in LATIN_LETTERS if c in renders]) > MAX_INK_DENSITY:
        return "letters drawn as filled boxes (inverted face)"
    return None


def _crop_to_ink(image: np.ndarray, size: int = 16) -> np.ndarray:
    rows, cols = np.nonzero(image >= BLANK_MAX_VALUE)
    crop = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def _caps_shape_ratio(renders: dict[str, np.ndarray]) -> float:
    """How much closer small letters are to their own capital than to other capitals, shapes only.

    For small letters whose form differs from the capital in text faces (a b d e g h n q r t), the distance of
    the ink-cropped, rescaled letter to its capital divided by its median distance to the other capitals.
    Text faces give 0.5–1; small-caps and all-caps faces give under 0.3, whatever the weight.
    """
    capitals = [c for c in LATIN_LETTERS[:26] if c in renders]
    shapes = np.stack([_crop_to_ink(renders[c]) for c in capitals])
    ratios = []
    for small in "abdeghnqrt":
        if small in renders and small.upper() in capitals:
            distances = render_distance(_crop_to_ink(renders[small])[None], shapes)
            own = capitals.index(small.upper())
            ratios.append(distances[own] / max(np.median(np.delete(distances, own)), 1e-6))
    return float(np.median(ratios)) if ratios else 1.0


def _ink_density(image: np.ndarray) -> float:
    rows, cols = np.nonzero(image >= BLANK_MAX_VALUE)
    return float(image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].mean() / 255.0)


def group_families(kept: list[tuple[FontFace, dict[str, np.ndarray]]]) -> tuple[np.ndarray, ...]:
    """Family of each face, the families' names and their plain upright faces.

    Faces with the same family name less style words form a family. Families whose plain faces draw the Latin
    letters alike (mean render distance < ``SAME_DESIGN_DISTANCE``) are then merged, because clones under other
    names (TeX Gyre Termes = Nimbus Roman = STIX, Tinos = Liberation Serif, Hack = DejaVu Sans Mono) must not
    end up on both sides of a family-disjoint split.
    """
    faces = [face for face, _ in kept]
    keys = sorted({f.family_key for f in faces})
    members = {k: [i for i, f in enumerate(faces) if f.family_key == k] for k in keys}
    representative = [min(members[k], key=lambda i: (faces[i].style_penalty, faces[i].path)) for k in keys]

    # Mean over letters of the render distance between every two representatives, one letter at a time.
    blank = np.zeros_like(next(iter(kept[0][1].values())))
    distance = np.zeros((len(keys), len(keys)))
    for letter in LATIN_LETTERS:
        distance += pairwise_render_distances(np.stack([kept[i][1].get(letter, blank) for i in representative]))
    distance /= len(LATIN_LETTERS)

    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(distance < SAME_DESIGN_DISTANCE, k=1))):
        parent[root(j)] = root(i)

    roots = sorted({root(i) for i in range(len(keys))})
    family_of_key = {keys[i]: roots.index(root(i)) for i in range(len(keys))}
    names, reps = [], []
    for r in roots:
        group = [i for i in range(len(keys)) if root(i) == r]
        reps.append(min((representative[i] for i in group), key=lambda i: (faces[i].style_penalty, faces[i].path)))
        names.append(" = ".join(sorted({faces[representative[i]].family for i in group})))
    face_family = np.array([family_of_key[f.family_key] for f in faces], dtype=np.int64)
    return face_family, np.array(names), np.array(reps, dtype=np.int64)

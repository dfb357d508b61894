"""Which faces :class:`~pml_recallk.datasets.Glyphs` uses, and how they group into families.

A face is kept when it is a Latin text face: judged first from its names, character map and glyph names
(:func:`read_faces`: no symbol, maths or small-caps face), then from its renders (:func:`rendered_face_problem`:
enough distinct Latin letters, small letters not drawn as capitals, letters not drawn as boxes). Faces then form
families (:func:`group_families`): one design in all its weights, slants and widths, with clones under other
names merged. The thresholds were set from a survey of ~1,400 Debian faces (docs/glyphs.md).

Example:
    >>> from pml_recallk.datasets.glyphs.fonts import matplotlib_font_dir
    >>> for name in ("cmsy10.ttf", "cmr10.ttf"):
    ...     print([(face.name, problem) for face, _, problem in read_faces(matplotlib_font_dir() / name)])
    [('cmsy10 Regular', 'symbol or maths face (by name)')]
    [('Computer Modern Roman Regular', None)]
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .fonts import FontFace, join_groups, scalable_faces
from .render import BLANK_MAX_VALUE, FaceRenderer, Layout, render_characters

LATIN_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Thresholds of the face checks, set from a survey of ~1,400 Debian faces (docs/glyphs.md).
DUPLICATE_DISTANCE = 0.002  # two characters of one face closer than this are one drawing (tofu, capitals)
MIN_LATIN_LETTERS = 48  # of A-Z a-z, a usable text face renders at least this many distinctly
CAPS_SHAPE_RATIO = 0.4  # small letters this close to their own capital (vs the others) ⇒ small/all caps
MAX_INK_DENSITY = 0.75  # letters filling their ink box this much are boxes (inverted faces)
SAME_DESIGN_DISTANCE = 0.06  # families whose plain faces are this close are one design under two names


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


def read_faces(path: Path) -> list[tuple[FontFace, dict[int, int], str | None]]:
    """The faces of one font file: (face, character map (code point → glyph index), why the face is not a
    usable Latin text face or ``None``), judged from names, character map and glyph names. [] if unreadable."""
    faces = []
    for index, font in scalable_faces(path):
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
        renderer = FaceRenderer(face.path, face.index, Layout.latin(image_size))
    except OSError:
        return {}
    rendered = render_characters(renderer, charmap, characters)
    if rendered is None:
        return {}
    renders = {characters[position]: image for position, image in zip(*rendered[:2])}
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

    family = join_groups(len(keys), zip(*np.nonzero(np.triu(distance < SAME_DESIGN_DISTANCE, k=1))))
    family_of_key = {keys[i]: int(family[i]) for i in range(len(keys))}
    names, reps = [], []
    for g in range(int(family.max()) + 1):
        group = [i for i in range(len(keys)) if family[i] == g]
        reps.append(min((representative[i] for i in group), key=lambda i: (faces[i].style_penalty, faces[i].path)))
        names.append(" = ".join(sorted({faces[representative[i]].family for i in group})))
    face_family = np.array([family_of_key[f.family_key] for f in faces], dtype=np.int64)
    return face_family, np.array(names), np.array(reps, dtype=np.int64)

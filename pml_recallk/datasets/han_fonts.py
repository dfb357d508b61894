"""Han characters and CJK font faces for :class:`~pml_recallk.datasets.HanGlyphs`: the character list, the faces,
and the fixed-baseline renderer with its per-render filters.

The character list is the 2013 *General Standard Chinese Characters* (通用规范汉字表) as Unihan's ``kTGH`` field
gives it (``Unihan_OtherMappings.txt`` of Debian's ``unicode-data``): position 1–3500 is level 1, 3501–6500
level 2 and 6501–8105 level 3. Fonts and Unihan are read from the folder that ``benchmarks/fetch_han_fonts.sh``
fills (``dpkg -x`` of Debian's packages); nothing is downloaded here.

A render is a character drawn white on black with a ``FONT_SIZE`` px font on a ``CANVAS`` px square, baseline
at row ``BASELINE``, the middle of its advance at the middle of the square (as text is set), then reduced to
the image size by box filtering (area averages). A render is dropped when it is blank (checked on the ink,
since many Korean fonts map hanja to empty glyphs), does not fit the canvas, equals the face's ``.notdef``
box, raises in FreeType, or equals the render of another character in the same face (a placeholder glyph).
See ``docs/han_glyphs.md``.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._paths import shipped_script
from .fonts import FONT_SUFFIXES, family_key, is_blank

CANVAS = 64
FONT_SIZE = 56  # px: the em square is 56/64 of the canvas, so 32 px images keep interior strokes
BASELINE = 53  # row of the baseline: CJK glyphs sit about 0.88 em above it and 0.12 em below
MARGIN = 16  # px drawn around the canvas to see ink that would be clipped
INK_LEVEL = 32  # a pixel this bright (of 255) is ink
IMAGE_SIZES = (32, 48)
TGH_LEVEL_1 = range(1, 3501)  # positions in the kTGH list
TGH_LEVELS_2_3 = range(3501, 8106)
MIN_HAN_COVERAGE = 100  # a face whose character map holds fewer of the 8,105 list characters is not a Han face
FAILED_FACE_ATTEMPTS = 20  # a face whose first this many renders all raise is dropped (FreeType cannot run it)
FETCH_HINT = shipped_script("fetch_han_fonts.sh")  # the copy in the installed package


def fetch_advice(font_dir: Path) -> str:
    return f"fetch them with: {FETCH_HINT} {font_dir}"


def tgh_characters(font_dir: Path) -> dict[int, str]:
    """``{kTGH position: character}`` for the 8,105 characters of the list, from the Unihan files under
    ``font_dir`` (``Unihan_OtherMappings.txt``, ``.txt.bz2`` or ``Unihan.zip``, as ``unicode-data`` ships them)."""
    text = _read_unihan_mappings(font_dir)
    positions: dict[int, str] = {}
    for line in text.splitlines():
        if "\tkTGH\t" not in line:
            continue
        code, _, value = line.split("\t", 2)
        match = re.match(r"\d{4}:(\d+)", value.strip())
        if match and code.startswith("U+"):
            positions.setdefault(int(match.group(1)), chr(int(code[2:], 16)))
    missing = sorted((set(TGH_LEVEL_1) | set(TGH_LEVELS_2_3)) - set(positions))
    if missing:
        raise ValueError(
            f"HanGlyphs: the Unihan kTGH list under {font_dir} lacks {len(missing)} of positions 1-8105 "
            f"(e.g. {missing[:3]}); refetch unicode-data with {FETCH_HINT} {font_dir}"
        )
    return {p: positions[p] for p in sorted(positions) if p <= TGH_LEVELS_2_3[-1]}


def _read_unihan_mappings(font_dir: Path) -> str:
    for name in ("Unihan_OtherMappings.txt", "Unihan_OtherMappings.txt.bz2", "Unihan.zip"):
        for path in sorted(font_dir.rglob(name)):
            if name.endswith(".bz2"):
                return bz2.decompress(path.read_bytes()).decode("utf-8")
            if name.endswith(".zip"):
                with zipfile.ZipFile(path) as archive:
                    return archive.read("Unihan_OtherMappings.txt").decode("utf-8")
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"HanGlyphs: no Unihan kTGH list (Debian's unicode-data) under {font_dir}; {fetch_advice(font_dir)}"
    )


@dataclass(frozen=True)
class HanFace:
    """One face of a font file: ``path`` relative to the font folder, ``index`` in a ``.ttc`` collection."""

    path: str
    index: int
    family: str
    style: str
    coverage: int  # how many list characters its character map holds

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}".strip()

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


def find_font_files(font_dir: Path) -> list[Path]:
    """All font files below ``font_dir`` (following links), sorted by their path relative to it."""
    files = []
    for root, _, names in os.walk(font_dir, followlinks=True):
        files += [Path(root, n) for n in names if n.lower().endswith((*FONT_SUFFIXES, ".otc"))]
    return sorted(files, key=lambda p: str(p.relative_to(font_dir)))


def file_signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def read_han_faces(font_dir: Path, path: Path, codes: set[int]) -> list[HanFace]:
    """The scalable faces of one font file whose character maps hold at least ``MIN_HAN_COVERAGE`` of ``codes``."""
    from matplotlib.ft2font import FT2Font

    try:
        first = FT2Font(str(path))
    except Exception:  # an unreadable file is skipped, as fontconfig does
        return []
    faces = []
    for index in range(first.num_faces):
        try:
            font = first if index == 0 else FT2Font(str(path), face_index=index)
        except Exception:
            continue
        if not font.scalable:
            continue
        coverage = sum(1 for cp, gid in font.get_charmap().items() if gid and cp in codes)
        if coverage >= MIN_HAN_COVERAGE:
            relative = str(path.relative_to(font_dir))
            faces.append(HanFace(relative, index, font.family_name or path.stem, font.style_name or "", coverage))
    return faces


def render_face(font_dir: str, face_path: str, index: int, characters: str, image_size: int) -> dict:
    """Render the ``characters`` one face maps, with the per-render filters (module docstring).

    Returns ``{"chars": int32 positions into characters, "images": (n, s, s) uint8, "dropped": {reason: count}}``;
    ``dropped["face"]`` is set to a reason when the whole face is unusable.
    """
    from matplotlib.ft2font import FT2Font
    from PIL import ImageFont

    path = str(Path(font_dir, face_path))
    dropped: dict[str, int] = {}
    empty = {"chars": np.zeros(0, np.int32), "images": np.zeros((0, image_size, image_size), np.uint8)}
    try:
        charmap = FT2Font(path, face_index=index).get_charmap()
        font = ImageFont.truetype(path, FONT_SIZE, index=index, layout_engine=ImageFont.Layout.BASIC)
    except Exception as error:
        return {**empty, "dropped": {"face": f"unreadable ({type(error).__name__})"}}
    try:
        notdef = _draw(font, "\U0010fffd", image_size)  # a code point no face maps: the .notdef box
    except Exception:
        notdef = None
    notdef = notdef if isinstance(notdef, np.ndarray) else None
    chars, images, attempts, failures = [], [], 0, 0
    for position, char in enumerate(characters):
        if not charmap.get(ord(char)):
            continue
        attempts += 1
        try:
            image = _draw(font, char, image_size)
        except Exception:
            failures += 1
            if failures == attempts == FAILED_FACE_ATTEMPTS:
                return {**empty, "dropped": {"face": "FreeType fails on every glyph"}}
            continue
        reason = _render_problem(image, notdef)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        chars.append(position)
        images.append(image)
    if failures:
        dropped["FreeType error"] = failures
    chars, images = _drop_shared_renders(chars, images, dropped)
    if not chars:
        return {**empty, "dropped": {**dropped, "face": "no usable render"}}
    return {"chars": np.asarray(chars, np.int32), "images": np.stack(images), "dropped": dropped}


def _render_problem(image: np.ndarray | str | None, notdef: np.ndarray | None) -> str | None:
    if isinstance(image, str):
        return image
    if image is None or is_blank(image):
        return "blank"
    if notdef is not None and np.array_equal(image, notdef):
        return "notdef box"
    return None


def _drop_shared_renders(chars: list[int], images: list[np.ndarray], dropped: dict[str, int]):
    """Drop every render that another character of the same face shares exactly: a placeholder glyph, whose
    class cannot be told from the image."""
    digests = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]
    counts: dict[bytes, int] = {}
    for digest in digests:
        counts[digest] = counts.get(digest, 0) + 1
    keep = [i for i, digest in enumerate(digests) if counts[digest] == 1]
    if len(keep) < len(chars):
        dropped["same render as another character"] = len(chars) - len(keep)
    return [chars[i] for i in keep], [images[i] for i in keep]


def _draw(font, char: str, image_size: int) -> np.ndarray | str | None:
    """The render of ``char`` (module docstring): drawn at the middle of its advance (anchor "ms") on the canvas
    with a ``MARGIN`` px border, ``"does not fit"`` when ink reaches that border (shrinking the glyph would change
    its size relative to the others), else the canvas reduced to ``image_size``."""
    from PIL import Image, ImageDraw

    side = CANVAS + 2 * MARGIN
    image = Image.new("L", (side, side), 0)
    ImageDraw.Draw(image).text((side // 2, MARGIN + BASELINE), char, 255, font, anchor="ms")
    pixels = np.asarray(image)
    inside = pixels[MARGIN : MARGIN + CANVAS, MARGIN : MARGIN + CANVAS]
    if int(pixels.sum(dtype=np.int64)) != int(inside.sum(dtype=np.int64)) and _ink_outside(pixels):
        return "does not fit"
    image = Image.fromarray(inside)
    if image_size != CANVAS:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(image)


def _ink_outside(pixels: np.ndarray) -> bool:
    border = pixels.copy()
    border[MARGIN : MARGIN + CANVAS, MARGIN : MARGIN + CANVAS] = 0
    return int(border.max()) >= INK_LEVEL

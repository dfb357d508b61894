"""The Han character list and the CJK faces of :class:`~pml_recallk.datasets.HanGlyphs`, and the renders of one
face with the per-face filters.

The character list is the 2013 *General Standard Chinese Characters* (通用规范汉字表) as Unihan's ``kTGH`` field
gives it (``Unihan_OtherMappings.txt`` of Debian's ``unicode-data``): position 1–3500 is level 1, 3501–6500
level 2 and 6501–8105 level 3. Fonts and Unihan are read from the folder that ``benchmarks/fetch_han_fonts.sh``
fills (``dpkg -x`` of Debian's packages); nothing is downloaded here.

Renders use :meth:`~pml_recallk.datasets.glyphs.render.Layout.han`: a 56 px font on a 64 px square, baseline at
row 53, the middle of the advance at the middle, reduced to the image size by area averaging. A render is
dropped when it is blank (checked on the ink, since many Korean fonts map hanja to empty glyphs), does not fit
the canvas, equals the face's ``.notdef`` box, raises in FreeType, or equals the render of another character in
the same face (a placeholder glyph). See ``docs/han_glyphs.md``.
"""

from __future__ import annotations

import bz2
import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np

from ..._paths import shipped_script
from .fonts import HanFace, scalable_faces
from .render import FaceRenderer, Layout, render_characters

IMAGE_SIZES = (32, 48)
TGH_LEVEL_1 = range(1, 3501)  # positions in the kTGH list
TGH_LEVELS_2_3 = range(3501, 8106)
MIN_HAN_COVERAGE = 100  # a face whose character map holds fewer of the 8,105 list characters is not a Han face
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


def read_han_faces(font_dir: Path, path: Path, codes: set[int]) -> list[HanFace]:
    """The scalable faces of one font file whose character maps hold at least ``MIN_HAN_COVERAGE`` of ``codes``."""
    faces = []
    for index, font in scalable_faces(path):
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

    path = str(Path(font_dir, face_path))
    empty = {"chars": np.zeros(0, np.int32), "images": np.zeros((0, image_size, image_size), np.uint8)}
    try:
        charmap = FT2Font(path, face_index=index).get_charmap()
        renderer = FaceRenderer(path, index, Layout.han(image_size))
    except Exception as error:
        return {**empty, "dropped": {"face": f"unreadable ({type(error).__name__})"}}
    rendered = render_characters(renderer, charmap, characters)
    if rendered is None:
        return {**empty, "dropped": {"face": "FreeType fails on every glyph"}}
    chars, images, dropped = rendered
    chars, images = _drop_shared_renders(chars, images, dropped)
    if not chars:
        return {**empty, "dropped": {**dropped, "face": "no usable render"}}
    return {"chars": np.asarray(chars, np.int32), "images": np.stack(images), "dropped": dropped}


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

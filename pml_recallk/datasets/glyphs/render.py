"""The glyph renderer of both glyph data sets: one character of one face, white on black, at a fixed size and
baseline, and the per-render filters (blank, does not fit, the face's ``.notdef`` box, FreeType errors).

A :class:`Layout` says where a glyph goes; the two data sets differ only in it:

* :meth:`Layout.latin` (:class:`~pml_recallk.datasets.Glyphs`): drawn straight at the image size, the em square
  ``EM_FRACTION`` of the side, the baseline ``BASELINE_FRACTION`` of the way down, the ink box centred
  horizontally; a glyph whose box does not fit is dropped.
* :meth:`Layout.han` (:class:`~pml_recallk.datasets.HanGlyphs`): a ``HAN_FONT_SIZE`` px font on a ``HAN_CANVAS``
  px square, baseline at row ``HAN_BASELINE``, the middle of the advance at the middle (as text is set), then
  reduced to the image size by box filtering (area averages); a glyph whose ink leaves the canvas is dropped.

Neither shrinks a glyph that does not fit: that would change its size relative to the others, and size is part
of the class ("o" and "O").

Example:
    >>> from pml_recallk.datasets.glyphs.fonts import matplotlib_font_dir
    >>> from pml_recallk.datasets.glyphs.render import FaceRenderer, Layout
    >>> renderer = FaceRenderer(str(matplotlib_font_dir() / "DejaVuSans.ttf"), 0, Layout.latin(32))
    >>> renderer.render("A").shape, renderer.render("A").dtype, renderer.render("\\u4e00")
    ((32, 32), dtype('uint8'), 'notdef box')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Latin layout, as fractions of the image side. The em square is 0.7 of the side and the baseline sits 0.75 of
# the way down, so there is room for about 1.07 em above the baseline (capitals with accents or breves, e.g. Й)
# and 0.36 em below it (descenders). Every glyph of every face uses the same two numbers, so case and size stay
# visible: "o" is smaller than "O", and "p" reaches below the baseline where "P" does not.
EM_FRACTION = 0.7
BASELINE_FRACTION = 0.75

# Han layout, in pixels of the canvas.
HAN_CANVAS = 64
HAN_FONT_SIZE = 56  # the em square is 56/64 of the canvas, so 32 px images keep interior strokes
HAN_BASELINE = 53  # CJK glyphs sit about 0.88 em above the baseline and 0.12 em below
MARGIN = 16  # px drawn around a canvas to see ink that would be clipped
INK_LEVEL = 32  # a pixel this bright (of 255) outside the canvas is ink that does not fit

# A render counts as blank when its brightest pixel is below this (out of 255) or it has fewer lit pixels.
BLANK_MAX_VALUE = 64
BLANK_MIN_PIXELS = 4

# Bump when a Layout, the drawing or a per-render filter of this module changes: both data sets' cache keys
# hold it (through renderer_versions), so no cache made by another renderer is reused.
RENDER_VERSION = 1

FAILED_FACE_ATTEMPTS = 20  # a face whose first this many renders all raise is dropped (FreeType cannot run it)
NOTDEF_PROBE = "\U0010fffd"  # a private-use code point that no text face maps: it draws .notdef (the "tofu" box)


@dataclass(frozen=True)
class Layout:
    """Where a glyph goes: a ``font_size`` px font on a ``canvas`` px square with the baseline at row ``baseline``,
    returned as ``image_size`` px (the canvas reduced by area averaging when larger). ``centre_on_ink``: centre
    the ink box horizontally and drop a glyph whose box leaves the canvas; otherwise put the middle of the advance
    at the middle and drop a glyph whose ink leaves the canvas."""

    font_size: int
    canvas: int
    baseline: int
    image_size: int
    centre_on_ink: bool

    @classmethod
    def latin(cls, image_size: int) -> Layout:
        return cls(round(EM_FRACTION * image_size), image_size, round(BASELINE_FRACTION * image_size), image_size, True)

    @classmethod
    def han(cls, image_size: int) -> Layout:
        return cls(HAN_FONT_SIZE, HAN_CANVAS, HAN_BASELINE, image_size, False)


class FaceRenderer:
    """Renders characters of one face (``index`` in the font file at ``path``) into ``layout.image_size`` square
    uint8 arrays, white on black. Raises ``OSError`` when PIL cannot open the face."""

    def __init__(self, path: str, index: int, layout: Layout):
        self.layout = layout
        # The basic layout engine draws the glyph the character map names, with no shaping and no fallback,
        # so a missing glyph shows as the face's own .notdef glyph and not as another font's.
        self.font = ImageFont.truetype(path, layout.font_size, index=index, layout_engine=ImageFont.Layout.BASIC)
        try:
            notdef = self.draw(NOTDEF_PROBE)
        except Exception:  # FreeType fails on this face's .notdef: nothing to compare with
            notdef = None
        self.notdef = notdef if isinstance(notdef, np.ndarray) else None

    def render(self, char: str) -> np.ndarray | str:
        """The glyph image, or why there is none: ``"does not fit"``, ``"blank"`` or ``"notdef box"``. FreeType
        errors are raised."""
        image = self.draw(char)
        if isinstance(image, str):
            return image
        if image is None or is_blank(image):
            return "blank"
        if self.notdef is not None and np.array_equal(image, self.notdef):
            return "notdef box"
        return image

    def draw(self, char: str) -> np.ndarray | str | None:
        """The glyph as the layout places it, ``"does not fit"``, or ``None`` when it has no ink box."""
        return self._draw_on_ink(char) if self.layout.centre_on_ink else self._draw_on_advance(char)

    def _draw_on_ink(self, char: str) -> np.ndarray | str | None:
        size, baseline = self.layout.canvas, self.layout.baseline
        left, top, right, bottom = self.font.getbbox(char, anchor="ls")
        if right <= left or bottom <= top:
            return None
        if right - left > size or -top > baseline or bottom > size - baseline:
            return "does not fit"
        image = Image.new("L", (size, size), 0)
        x = (size - (right - left)) // 2 - left
        ImageDraw.Draw(image).text((x, baseline), char, fill=255, font=self.font, anchor="ls")
        return _reduce(image, self.layout.image_size)

    def _draw_on_advance(self, char: str) -> np.ndarray | str:
        canvas = self.layout.canvas
        side = canvas + 2 * MARGIN
        image = Image.new("L", (side, side), 0)
        ImageDraw.Draw(image).text((side // 2, MARGIN + self.layout.baseline), char, 255, self.font, anchor="ms")
        pixels = np.asarray(image)
        inside = pixels[MARGIN : MARGIN + canvas, MARGIN : MARGIN + canvas]
        if int(pixels.sum(dtype=np.int64)) != int(inside.sum(dtype=np.int64)) and _ink_outside(pixels, canvas):
            return "does not fit"
        return _reduce(Image.fromarray(inside), self.layout.image_size)


def _reduce(image: Image.Image, image_size: int) -> np.ndarray:
    if image.size[0] != image_size:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(image)


def _ink_outside(pixels: np.ndarray, canvas: int) -> bool:
    border = pixels.copy()
    border[MARGIN : MARGIN + canvas, MARGIN : MARGIN + canvas] = 0
    return int(border.max()) >= INK_LEVEL


def render_characters(
    renderer: FaceRenderer, charmap: dict[int, int], characters: str
) -> tuple[list[int], list[np.ndarray], dict[str, int]] | None:
    """The renders of the ``characters`` the face maps (``charmap``: code point → glyph index, 0 for none): their
    positions in ``characters``, the images, and how many were dropped by reason (those of
    :meth:`FaceRenderer.render` and ``"FreeType error"``). ``None`` when the first ``FAILED_FACE_ATTEMPTS``
    renders all raise: FreeType cannot run this face."""
    positions, images, dropped = [], [], {}
    attempts = failures = 0
    for position, char in enumerate(characters):
        if not charmap.get(ord(char)):
            continue
        attempts += 1
        try:
            image = renderer.render(char)
        except Exception:
            failures += 1
            if failures == attempts == FAILED_FACE_ATTEMPTS:
                return None
            continue
        if isinstance(image, str):
            dropped[image] = dropped.get(image, 0) + 1
            continue
        positions.append(position)
        images.append(image)
    if failures:
        dropped["FreeType error"] = failures
    return positions, images, dropped


def renderer_versions() -> dict[str, str | int]:
    """What decides the pixels besides the font and the layout: Pillow, FreeType and this module's version."""
    import PIL
    from PIL import features

    return {"pil": PIL.__version__, "freetype": features.version("freetype2"), "render": RENDER_VERSION}


def is_blank(image: np.ndarray) -> bool:
    """True when a render has (almost) no ink."""
    return int(image.max()) < BLANK_MAX_VALUE or int((image >= BLANK_MAX_VALUE).sum()) < BLANK_MIN_PIXELS

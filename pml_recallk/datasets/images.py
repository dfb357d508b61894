"""Reading image files: the one loading function every loader uses, and the up-front check that every listed image
decodes.

:func:`load_image` turns any file PIL reads into an ``"RGB"`` or ``"L"`` image without destroying its content:
16-bit and 32-bit grayscale (``I;16``, ``I``, ``F``) are scaled to 8 bits by their full range (PIL's own
``convert`` clips them, case L14 of the reliability notes), alpha (``RGBA``, ``LA``, ``P`` with transparency) is
composited on white, CMYK and palettes are converted by PIL.

:func:`check_images` opens and fully decodes every file of a listing in parallel threads, with a progress bar, and
raises one error naming the first bad files (missing, truncated, corrupt, empty, a folder, a symlink loop), so that
a run fails before its folder is made rather than mid-epoch. Files that passed are remembered in a small JSON cache
(``$PML_RECALLK_CACHE/image-checks`` or ``~/.cache/pml-recallk/image-checks``), keyed by path, size and mtime, so a
data root is decoded once. The check also records how many bands each image has, which
:func:`listing_channels` uses to pick 1 (every image single-band) or 3 channels for a generic data set.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(folder / "a.png")
    >>> load_image(folder / "a.png").getextrema()
    (255, 255)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_json_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""File name endings a generic data set takes as images (any case)."""

_CACHE_VERSION = 1


def cache_dir() -> Path:
    """``$PML_RECALLK_CACHE/image-checks`` if that variable is set, else ``~/.cache/pml-recallk/image-checks``."""
    root = os.environ.get("PML_RECALLK_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "pml-recallk") / "image-checks"


def _scaled_to_uint8(values: np.ndarray) -> np.ndarray:
    """``values`` mapped linearly from their dtype's range to 0..255 (integers) or from [0, 1] (floats)."""
    if values.dtype.kind == "f":
        # Float images ("F") hold intensities in [0, 1] by convention; outside that they are clipped.
        return np.clip(np.rint(values.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    info = np.iinfo(values.dtype)
    low = min(info.min, 0)
    if values.dtype == np.int32 and values.min(initial=0) >= 0 and values.max(initial=0) <= 65535:
        # PIL opens 16-bit PNGs as mode "I" (int32) holding 0..65535.
        high = 65535
    else:
        high = info.max
    scaled = (values.astype(np.float64) - low) * 255.0 / (high - low)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb_or_l(image: Any) -> Any:
    """A PIL image of any mode as ``"L"`` (single band, alpha composited on white) or ``"RGB"``.

    Args:
        image: a PIL image (``1``, ``L``, ``LA``, ``I;16``, ``I``, ``F``, ``P``, ``PA``, ``RGB``, ``RGBA``,
            ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...).

    Returns:
        a new PIL image of mode ``"L"`` or ``"RGB"``: 16/32-bit values scaled (not clipped) to 8 bits, any alpha
        composited on white.
    """
    from PIL import Image

    mode = image.mode
    if mode in ("L", "RGB"):
        return image.copy()
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode.startswith("F"):
        array = np.asarray(image)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("="))
        return Image.fromarray(_scaled_to_uint8(array), mode="L")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        base = "L" if mode[0] == "L" else "RGB"
        image = image.convert(base + "A")  # premultiplied (La, RGBa) to straight alpha
        white = Image.new(base + "A", image.size, (255,) * len(base) + (255,))
        return Image.alpha_composite(white, image).convert(base)
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Any:
    """Open and decode the image at ``path`` as an ``"L"`` or ``"RGB"`` PIL image (:func:`to_rgb_or_l`).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file cannot be decoded (truncated, corrupt, empty, a folder, a symlink loop, not an
            image); the message names the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb_or_l(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} is missing") from None
    except IsADirectoryError:
        raise ValueError(f"image {path} is a folder, not an image file") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.is_file() else None
        what = "is empty (0 bytes)" if size == 0 else "is not an image PIL can read (corrupt?)"
        raise ValueError(f"image {path} {what}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # Truncated files ("image file is truncated"), symlink loops (ELOOP), decoder errors.
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ValueError(f"image {path} cannot be read: {reason}") from None


def _stat_key(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _cache_file(listing: str) -> Path:
    return cache_dir() / f"{hashlib.sha256(listing.encode()).hexdigest()[:24]}.json"


def _read_cache(path: Path) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("version") == _CACHE_VERSION and isinstance(cached.get("files"), dict):
            return cached["files"]
    except (OSError, ValueError, AttributeError):
        pass  # no cache yet, or a damaged one: decode again
    return {}


def _probe(path: Path) -> tuple[int | None, str | None]:
    """``(bands, None)`` for an image that decodes, ``(None, reason)`` for one that does not."""
    try:
        return len(load_image(path).getbands()), None
    except (FileNotFoundError, ValueError) as error:
        return None, str(error)


def check_images(
    paths: Sequence[str | os.PathLike],
    listing: str | os.PathLike,
    name: str,
    progress: bool = True,
    cache_key: str | os.PathLike | None = None,
) -> list[int]:
    """Decode every image of ``paths`` once (threads, a progress bar, a cache); return the bands of each (1 or 3).

    Args:
        paths: the image files.
        listing: what lists them (a CSV file, a folder), named in errors and used as the cache's key.
        name: the data set's name, for messages.
        progress: show a tqdm progress bar for the files not in the cache.
        cache_key: the folder whose cache file holds the results (default ``listing``): the splits of one data
            root share one file, which keeps every file checked so far.

    Raises:
        FileNotFoundError: some images are missing (the message names up to three and the listing).
        ValueError: some images cannot be decoded (the message names up to three, why, and the listing).
    """
    paths = [Path(p) for p in paths]
    cache_path = _cache_file(str(Path(listing if cache_key is None else cache_key).resolve()))
    cached = _read_cache(cache_path)
    keys = [_stat_key(p) for p in paths]
    bands: list[int | None] = [None] * len(paths)
    todo = []
    for index, (path, key) in enumerate(zip(paths, keys)):
        entry = cached.get(str(path))
        if key is not None and entry is not None and entry[0] == key:
            bands[index] = entry[1]
        else:
            todo.append(index)
    failures: list[tuple[int, str]] = []
    if todo:
        import tqdm

        workers = min(8, max(1, (os.cpu_count() or 1)), len(todo))
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(_probe, [paths[i] for i in todo])
            bar = tqdm.tqdm(results, total=len(todo), desc=f"{name}: checking images", disable=not progress or None)
            for index, (band, reason) in zip(todo, bar):
                if reason is not None:
                    failures.append((index, reason))
                else:
                    bands[index] = band
    if failures:
        _raise_bad_images(failures, len(paths), listing, name)
    if todo:
        files = {**cached, **{str(p): [k, b] for p, k, b in zip(paths, keys, bands) if k is not None}}
        try:
            write_json_atomic({"version": _CACHE_VERSION, "listing": str(listing), "files": files}, cache_path)
        except OSError:
            pass  # a read-only home: the check simply runs again next time
    return [int(b) for b in bands]


def _raise_bad_images(failures: list[tuple[int, str]], total: int, listing: Any, name: str) -> None:
    shown = "; ".join(reason for _, reason in failures[:3])
    more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
    missing = all(reason.endswith("is missing") for _, reason in failures)
    what = "are missing" if missing else "cannot be read"
    message = (
        f"{name}: {len(failures)} of the {total} images listed in {listing} {what}: {shown}{more}. Restore or replace "
        f"them, or remove them from {listing}"
    )
    raise (FileNotFoundError if missing else ValueError)(message)


def listing_channels(bands: Sequence[int]) -> int:
    """1 when every image is single-band (grayscale), else 3: the channels a generic data set's model gets."""
    return 1 if bands and all(b == 1 for b in bands) else 3

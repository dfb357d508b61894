"""Atomic file writers: the one copy the package uses for checkpoints, results and caches.

Each writer writes to a temporary file in the destination's folder, flushes and fsyncs it, then renames it over
the destination with :func:`os.replace` (atomic on POSIX and Windows when both are on one file system) and fsyncs
the folder so that the rename itself survives a crash. A reader, or a crash at any moment, sees either the old
file or the new one, never a truncated one; a write that fails leaves the old file as it was and removes its
temporary file.

Temporary files are named ``.<name>.<pid>.<random>.tmp`` next to the destination, so a folder can be swept of
the leftovers of a killed process with ``folder.glob(".*.tmp")``.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_json_atomic({"recall_at_1": 0.5}, folder / "results.json")
    >>> json.loads((folder / "results.json").read_text())
    {'recall_at_1': 0.5}
    >>> sorted(p.name for p in folder.iterdir())
    ['results.json']
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = ["replace_atomically", "save_npz_atomic", "save_torch_atomic", "write_json_atomic"]


def replace_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a new binary file, then rename that file over ``path``; create missing parent folders.

    If ``write`` raises (or the process is interrupted before the rename), ``path`` keeps its previous content
    and the temporary file is removed. The file gets the usual permissions (``0o666`` less the umask), as a file
    made by ``open`` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as f:  # "x": never clobber another writer's temporary file
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename durable on POSIX; Windows has no O_DIRECTORY and cannot open a folder this way.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON (UTF-8, a final newline) to ``path`` atomically.

    The text is made before the file is opened, so an object that JSON cannot encode raises ``TypeError`` and
    leaves ``path`` untouched.
    """
    text = json.dumps(obj, indent=2) + "\n"
    replace_atomically(path, lambda f: f.write(text.encode("utf-8")))


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically: a checkpoint is never left half-written."""
    replace_atomically(path, lambda f: torch.save(obj, f))


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez_compressed(path, **arrays)``, atomically.

    ``path`` is used as given (NumPy would append ``.npz`` to a name without it; this function does not).
    """
    replace_atomically(path, lambda f: np.savez_compressed(f, **arrays))

"""Atomic file writers: the one copy the package uses for checkpoints, results and caches.

Each writer writes to a temporary file in the destination's folder, flushes and fsyncs it, then renames it over
the destination with :func:`os.replace` (atomic on POSIX and Windows when both are on one file system) and fsyncs
the folder so that the rename itself survives a crash. A reader, or a crash at any moment, sees either the old
file or the new one, never a truncated one; a write that fails leaves the old file as it was and removes its
temporary file.

A write that fails because the disk is full raises :class:`DiskFullError` (an ``OSError``), whatever the
writer raised (``torch.save`` wraps the ``ENOSPC`` in a ``RuntimeError``), so that callers can say so in one line.

:func:`folder_lock` keeps two live processes out of one folder (an output folder of a run).

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

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are not locked there
    fcntl = None

__all__ = [
    "DiskFullError",
    "FolderLockedError",
    "folder_lock",
    "replace_atomically",
    "save_npz_atomic",
    "save_torch_atomic",
    "write_json_atomic",
]


class DiskFullError(OSError):
    """A write failed because its file system has no space (or quota) left; the destination kept its content."""


class FolderLockedError(RuntimeError):
    """Another live process holds the lock of a folder (the message names the folder and the holder's PID)."""


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from or during, is ENOSPC/EDQUOT."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


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
    except Exception as error:
        if _disk_full(error):
            raise DiskFullError(errno.ENOSPC, "no space left on the device", str(path)) from error
        raise
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


# The folders this process holds, with how many blocks hold each (a lock is re-entrant within one process: flock
# on a second open file of the same process would conflict with the first).
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (made if missing) while the block runs, through ``folder/name``.

    The lock is ``fcntl.flock`` on that file, held open for the block: the kernel releases it when the process
    ends, however it ends, so a killed holder leaves no stale lock. A second process is refused at once with
    :class:`FolderLockedError` naming the folder and the holder's PID (written in the file). The file is removed
    when the block ends; a folder this call made is removed too if nothing else was written in it. Where flock
    does not exist (Windows) the block runs unlocked.

    Example:
        >>> import tempfile
        >>> with folder_lock(tempfile.mkdtemp()):
        ...     pass
    """
    folder = Path(folder).resolve()
    if fcntl is None or folder in _HELD:
        _HELD[folder] = _HELD.get(folder, 0) + 1
        try:
            yield
        finally:
            _HELD[folder] -= 1
            if not _HELD[folder]:
                del _HELD[folder]
        return
    made = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = _locked_file(folder, path)
    _HELD[folder] = 1
    try:
        yield
    finally:
        del _HELD[folder]
        path.unlink(missing_ok=True)  # still locked: a process waiting on this file sees it is gone and retries
        os.close(fd)
        with contextlib.suppress(OSError):  # not empty: the run wrote something, keep it (and the folders above)
            for made_here in made:
                made_here.rmdir()


def _locked_file(folder: Path, path: Path) -> int:
    """Open ``path`` and take its lock; the descriptor, or FolderLockedError if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderLockedError(f"{folder} is in use by another process (PID {holder})") from None
        # The holder before us may have removed the file between our open and our flock: lock the file that is
        # there now, not a removed one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)

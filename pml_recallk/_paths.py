"""Where the package keeps its files: the one cache folder, and the shell scripts it ships.

Every cache (rendered glyphs, Han renders, the Han fonts' default folder) is a sub-folder of
:func:`cache_root`: ``$PML_RECALLK_CACHE`` if that variable is set, else ``~/.cache/pml-recallk``.
``benchmarks/fetch_han_fonts.sh`` computes the same default, so the fonts it fetches are found without arguments.

Example:
    >>> cache_dir("glyphs") == cache_root() / "glyphs"
    True
    >>> shipped_script("fetch_han_fonts.sh").endswith("pml_recallk/scripts/fetch_han_fonts.sh")
    True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_VARIABLE", "cache_dir", "cache_root", "shipped_script"]

CACHE_VARIABLE = "PML_RECALLK_CACHE"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def cache_root() -> Path:
    """``$PML_RECALLK_CACHE`` if set (``~`` expanded), else ``~/.cache/pml-recallk``."""
    root = os.environ.get(CACHE_VARIABLE)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "pml-recallk"


def cache_dir(name: str) -> Path:
    """The cache sub-folder ``name`` (e.g. ``"glyphs"``) of :func:`cache_root`; not created here."""
    return cache_root() / name


def shipped_script(name: str) -> str:
    """``bash <path>`` of a script in the installed package (``pml_recallk/scripts/<name>``): what an error
    message tells a user to run, which exists in a pip install as well as in a clone."""
    return f"bash {SCRIPTS / name}"

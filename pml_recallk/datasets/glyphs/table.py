"""The table of renders behind a glyph data set, before any split: what its cache file holds.

:class:`GlyphTable` holds what both data sets have (the renders, their characters and faces, what was dropped)
and reads and writes itself; :class:`LatinTable` adds the font families of
:class:`~pml_recallk.datasets.Glyphs`, :class:`HanTable` the design groups of
:class:`~pml_recallk.datasets.HanGlyphs`. A cache file is an ``.npz`` with one entry a field: arrays as they
are, ``str`` fields as 0-d string arrays, ``dict`` fields as JSON text (no pickles, so a cache file cannot run
code).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> table = GlyphTable("ab", np.zeros((1, 2, 2), np.uint8), np.array([1]), np.array([0]), np.array(["F"]),
    ...                    np.array(["f.ttf"]), {"blank": 3})
    >>> path = Path(tempfile.mkdtemp()) / "table.npz"
    >>> table.save(path)
    >>> again = GlyphTable.load(path)
    >>> again.characters, again.char_index.tolist(), again.dropped
    ('ab', [1], {'blank': 3})
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..._io import save_npz_atomic


@dataclass
class GlyphTable:
    """Every usable render of a font collection: ``images[i]`` is character ``characters[char_index[i]]`` in face
    ``face_names[face_index[i]]`` (font file ``face_paths[face_index[i]]``); ``dropped`` counts what the filters
    left out, by reason."""

    characters: str
    images: np.ndarray
    char_index: np.ndarray
    face_index: np.ndarray
    face_names: np.ndarray
    face_paths: np.ndarray
    dropped: dict[str, int]

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically (a temporary file, then a rename), so readers never see half a file."""
        entries = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            entries[f.name] = np.array(json.dumps(value) if isinstance(value, dict) else value)
        save_npz_atomic(path, **entries)

    @classmethod
    def load(cls, path: Path) -> GlyphTable:
        """The table that :meth:`save` wrote to ``path``; raises when the file lacks a field (another version)."""
        with np.load(path, allow_pickle=False) as f:
            entries = {k: f[k] for k in f.files}
        values = {}
        for f in dataclasses.fields(cls):
            value = entries[f.name]
            # The annotations are strings (from __future__ import annotations): "str", "dict[str, int]", ...
            values[f.name] = str(value) if f.type == "str" else json.loads(str(value)) if "dict" in f.type else value
        return cls(**values)

    @classmethod
    def cached(cls, path: Path, build: Callable[[], GlyphTable], owner: str) -> GlyphTable:
        """The table in the cache file ``path``, else ``build()``, written there. The cache only saves time: a
        damaged file is built again and a file that cannot be written is warned about (``owner`` names the data
        set in the warning), neither stops the data set."""
        if path.exists():
            try:
                return cls.load(path)
            except Exception as error:  # a damaged cache file is rebuilt rather than trusted
                warnings.warn(f"{owner}: ignoring unreadable cache file {path} ({error}); building again", stacklevel=4)
        table = build()
        try:
            table.save(path)
        except OSError as error:
            warnings.warn(f"{owner}: could not write the cache file {path} ({error})", stacklevel=4)
        return table


@dataclass
class LatinTable(GlyphTable):
    """The table of :class:`~pml_recallk.datasets.Glyphs`: face ``f`` belongs to family
    ``family_names[face_family[f]]``, whose plain upright face is ``family_representative[g]``."""

    face_family: np.ndarray
    family_names: np.ndarray
    family_representative: np.ndarray


@dataclass
class HanTable(GlyphTable):
    """The table of :class:`~pml_recallk.datasets.HanGlyphs` (``characters`` in kTGH order): face ``f`` belongs to
    design group ``group_names[face_group[f]]``; ``dropped_faces`` names each face left out and why,
    ``consensus`` the consensus score of each kept face."""

    face_group: np.ndarray
    group_names: np.ndarray
    dropped_faces: dict[str, str] = field(default_factory=dict)
    consensus: dict[str, float] = field(default_factory=dict)

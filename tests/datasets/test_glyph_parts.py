"""The parts both glyph data sets share (pml_recallk.datasets.glyphs): grouping, the render loop, the table file.

The data sets' own tests (test_glyphs.py, test_han_glyphs.py) check the renders end to end; these check the
shared pieces against plain references, fast and without the CJK fonts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pml_recallk.datasets.glyphs.fonts import join_groups, matplotlib_font_dir
from pml_recallk.datasets.glyphs.render import FAILED_FACE_ATTEMPTS, FaceRenderer, Layout, render_characters
from pml_recallk.datasets.glyphs.table import HanTable, LatinTable


def _components(num_items: int, pairs: list[tuple[int, int]]) -> set[frozenset[int]]:
    """Connected components by breadth-first search over the pairs as edges."""
    neighbours: dict[int, set[int]] = {i: set() for i in range(num_items)}
    for i, j in pairs:
        neighbours[i].add(j)
        neighbours[j].add(i)
    seen, out = set(), set()
    for start in range(num_items):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            for n in neighbours[frontier.pop()] - component:
                component.add(n)
                frontier.append(n)
        seen |= component
        out.add(frozenset(component))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_join_groups_gives_the_connected_components(seed):
    rng = np.random.default_rng(seed)
    n = 30
    pairs = [tuple(int(x) for x in rng.integers(0, n, 2)) for _ in range(20)]
    group = join_groups(n, pairs)
    found = {frozenset(np.flatnonzero(group == g).tolist()) for g in range(group.max() + 1)}
    assert found == _components(n, pairs)
    assert sorted(set(group.tolist())) == list(range(len(found)))  # ids 0..G-1, none skipped


class _Failing:
    """A renderer whose FreeType raises on every glyph but ``good`` ones."""

    def __init__(self, good: str = ""):
        self.good = good

    def render(self, char: str):
        if char not in self.good:
            raise OSError("FreeType: invalid glyph")
        return np.full((4, 4), 255, np.uint8)


def test_a_face_that_fails_on_every_glyph_is_dropped():
    chars = "".join(chr(0x4E00 + i) for i in range(FAILED_FACE_ATTEMPTS + 5))
    charmap = {ord(c): 1 for c in chars}
    assert render_characters(_Failing(), charmap, chars) is None


def test_failing_glyphs_are_counted_and_unmapped_ones_skipped():
    chars = "abcde"
    charmap = {ord("a"): 3, ord("b"): 0, ord("c"): 5, ord("e"): 7}  # b maps to .notdef, d is not mapped
    positions, images, dropped = render_characters(_Failing(good="ae"), charmap, chars)
    assert positions == [0, 4] and len(images) == 2
    assert dropped == {"FreeType error": 1}  # c only: b and d are not rendered at all


def test_reasons_of_the_one_renderer():
    path = str(matplotlib_font_dir() / "DejaVuSans.ttf")
    latin = FaceRenderer(path, 0, Layout.latin(16))
    assert latin.render(" ") == "blank"
    assert latin.render("\u4e00") == "notdef box"  # DejaVu Sans has no Han characters
    assert latin.render("\u2031") == "does not fit"  # ‱ is wider than the 16 px square
    assert latin.render("\u0192").shape == (16, 16)  # ƒ's descender fits the 0.36 em below the Latin baseline,
    han = FaceRenderer(path, 0, Layout.han(32))
    assert han.render("\u0192") == "does not fit"  # not the 0.2 em of the Han canvas
    assert han.render("A").shape == (32, 32) and han.render("\u4e00") == "notdef box"


def _random_table(cls, rng):
    common = dict(
        characters="一二三",
        images=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8),
        char_index=np.array([0, 1, 2, 2]),
        face_index=np.array([0, 0, 1, 1]),
        face_names=np.array(["A Regular", "B Bold"]),
        face_paths=np.array(["a.ttf", "b.ttc#1"]),
        dropped={"blank": 2, "does not fit": 1},
    )
    if cls is LatinTable:
        extra = dict(face_family=np.array([0, 0]), family_names=np.array(["A"]), family_representative=np.array([0]))
    else:
        extra = dict(
            face_group=np.array([0, 1]),
            group_names=np.array(["A", "B"]),
            dropped_faces={"c.ttf#0": "unreadable (OSError)"},
            consensus={"a.ttf#0": 0.9, "b.ttc#1": 0.8},
        )
    return cls(**common, **extra)


@pytest.mark.parametrize("cls", [LatinTable, HanTable])
def test_a_table_reads_back_what_it_wrote(cls, tmp_path):
    table = _random_table(cls, np.random.default_rng(0))
    table.save(tmp_path / "table.npz")
    again = cls.load(tmp_path / "table.npz")
    for f in dataclasses.fields(cls):
        want, got = getattr(table, f.name), getattr(again, f.name)
        if isinstance(want, np.ndarray):
            assert got.dtype.kind == want.dtype.kind and np.array_equal(got, want), f.name
        else:
            assert type(got) is type(want) and got == want, f.name
    with np.load(tmp_path / "table.npz", allow_pickle=False) as f:  # no pickles: a cache file cannot run code
        assert set(f.files) == {f.name for f in dataclasses.fields(cls)}

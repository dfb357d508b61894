"""The filtered table of Han renders behind :class:`~pml_recallk.datasets.HanGlyphs`, before any split.

Building it (:func:`han_table`):

1. every face of every font file under the font folder whose character map holds at least
   ``MIN_HAN_COVERAGE`` of the 8,105 list characters is rendered, in parallel, with the per-render filters of
   :mod:`~pml_recallk.datasets.glyphs.han_faces` (blank, does not fit, ``.notdef``, FreeType error, placeholder);
   each face's renders are cached on their own, so the table can be rebuilt without rendering again;
2. near-duplicates: within each character, a render closer than ``DUPLICATE_L1`` in normalised L1
   ``Σ|a − b| / (Σa + Σb)`` to a render kept before it (in face order) is dropped, so every image is distinct;
3. design groups: faces are one design when they share a family key (family name less weights, region tags and
   variant codes), when at least ``SAME_DESIGN_FRACTION`` of the characters both render are near-duplicates
   (this also joins hybrids such as MigMix, M+ kana with IPA kanji, to both of their sources), or when
   :data:`SAME_DESIGN_FALLBACK` says so (rescaled or redrawn copies the render measure cannot see);
4. faces whose renders disagree with the other design groups are dropped (:func:`consensus_score`): a face
   that draws other glyphs, or is illegible at this size (Rampart One's 3-D outlines).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..._io import save_npz_atomic
from ..._paths import cache_dir
from .fonts import HAN_FONT_SUFFIXES, HanFace, file_signature, font_files_below, join_groups
from .han_faces import MIN_HAN_COVERAGE, fetch_advice, read_han_faces, render_face, tgh_characters
from .render import renderer_versions
from .table import HanTable

DUPLICATE_L1 = 0.03  # normalised L1 below this (32 px) is one drawing; different weights start near 0.05
SAME_DESIGN_FRACTION = 0.10  # faces with this share of near-duplicate renders are one design under two names
SAME_DESIGN_MIN_COMMON = 50  # ... measured over at least this many characters both faces render
CONSENSUS_SAMPLE = 256  # characters per face for the consensus check
MIN_CONSENSUS_SCORE = 0.65  # chance is 0.5; a face below this draws other glyphs or is illegible

# Designs that the render measure cannot join, by family-name pattern: faces whose family names match one
# pattern are one design. Each entry is a measured miss of the measure (docs/han_glyphs.md: these families
# share under 10 % near-identical renders, because one is a rescaled or redrawn copy of the other, or a weight
# of it) and a fact about the fonts' origin, from their own documentation.
SAME_DESIGN_FALLBACK: tuple[tuple[str, str], ...] = (
    (
        r"^(AR PL (Mingti2L|SungtiL|UMing)|BabelStone Han)",
        "Arphic's Ming/Sung design: AR PL UMing and BabelStone Han are built from AR PL Mingti2L Big5 and SungtiL GB",
    ),
    (r"^(Klee One|LXGW WenKai)", "LXGW WenKai is derived from Fontworks' Klee One"),
    (r"^(Motoya ?L ?(Cedar|Maru)|MMCedar)", "Motoya L Maruberi is the rounded cut of Motoya L Cedar"),
    (r"^(KouzanBrushFont|AoyagiKouzan)", "the brush styles (kaisho, gyosho, sosho) of calligrapher Aoyagi Kouzan"),
    (r"^Misaki", "Misaki Gothic 2nd is a revision of the Misaki 8-px design"),
    (r"^YOz", "YOzFont: one handwriting design in a regular and a bold weight, under ~50 family names"),
    (r"^kiloji", "kiloji, kiloji - B, kiloji - D: weights of one handwriting design"),
)

# Bump when the table's filters or grouping change, so old caches are not reused. 2: one npz entry a field
# (glyphs.table), where 1 bundled the dicts in "meta".
_TABLE_VERSION = 2


def default_font_dir() -> Path:
    """``$PML_RECALLK_HAN_FONTS`` if set, else ``han-fonts`` in the cache (``~/.cache/pml-recallk/han-fonts``)."""
    folder = os.environ.get("PML_RECALLK_HAN_FONTS")
    # pml_recallk/scripts/fetch_han_fonts.sh fills this same folder when given none.
    return Path(folder).expanduser() if folder else cache_dir("han-fonts")


def default_cache_dir() -> Path:
    """``$PML_RECALLK_CACHE/han-glyphs`` if that variable is set, else ``~/.cache/pml-recallk/han-glyphs``."""
    return cache_dir("han-glyphs")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]


def font_files_or_fail(font_dir: Path) -> list[Path]:
    if not font_dir.is_dir():
        raise FileNotFoundError(f"HanGlyphs: no font folder {font_dir}; {fetch_advice(font_dir)}")
    files = font_files_below(font_dir, HAN_FONT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"HanGlyphs: no font files under {font_dir}; {fetch_advice(font_dir)}")
    return files


_LAST_TABLE: dict[Path, HanTable] = {}


def han_table(font_dir: Path, image_size: int, cache_dir: Path, num_workers: int | None = None) -> HanTable:
    """The table for the fonts under ``font_dir``, from ``cache_dir`` when its key matches.

    The key covers the font files (paths relative to ``font_dir``, sizes, modification times), the Unihan file,
    the image size, the filter thresholds, the fallback table and the code and PIL/FreeType versions.
    """
    files = font_files_or_fail(font_dir)
    characters = "".join(c for _, c in sorted(tgh_characters(font_dir).items()))
    signatures = [(str(p.relative_to(font_dir)), *file_signature(p)) for p in files]
    key = {
        "table": _TABLE_VERSION,
        **renderer_versions(),
        "image_size": image_size,
        "characters": hashlib.sha256(characters.encode()).hexdigest(),
        "fonts": signatures,
        "thresholds": [
            MIN_HAN_COVERAGE,
            DUPLICATE_L1,
            SAME_DESIGN_FRACTION,
            SAME_DESIGN_MIN_COMMON,
            CONSENSUS_SAMPLE,
            MIN_CONSENSUS_SCORE,
        ],
        "fallback": SAME_DESIGN_FALLBACK,
    }
    path = cache_dir / f"table-{image_size}px-{_digest(key)}.npz"
    if path in _LAST_TABLE:
        return _LAST_TABLE[path]
    table = HanTable.cached(
        path, lambda: build_han_table(font_dir, files, characters, image_size, cache_dir, num_workers), "HanGlyphs"
    )
    _LAST_TABLE.clear()
    _LAST_TABLE[path] = table
    return table


def _face_cache_path(cache_dir: Path, font_dir: Path, face: HanFace, characters: str, image_size: int) -> Path:
    size, mtime = file_signature(font_dir / face.path)
    characters_digest = hashlib.sha256(characters.encode()).hexdigest()
    key = [face.path, face.index, size, mtime, image_size, characters_digest, renderer_versions()]
    stem = Path(face.path).stem[:40]
    return cache_dir / f"faces-{image_size}px" / f"{stem}-{face.index}-{_digest(key)}.npz"


def _render_to_cache(font_dir: str, face_path: str, index: int, characters: str, image_size: int, out: str) -> None:
    result = render_face(font_dir, face_path, index, characters, image_size)
    save_npz_atomic(
        out, chars=result["chars"], images=result["images"], dropped=np.array(json.dumps(result["dropped"]))
    )


def render_faces(
    font_dir: Path, faces: list[HanFace], characters: str, image_size: int, cache_dir: Path, num_workers: int | None
) -> list[dict]:
    """Each face's renders (:func:`~pml_recallk.datasets.glyphs.han_faces.render_face`), rendering in parallel only the
    faces whose cache file is missing, largest first; a tqdm bar shows the progress."""
    from tqdm.auto import tqdm

    paths = [_face_cache_path(cache_dir, font_dir, f, characters, image_size) for f in faces]
    todo = sorted((i for i, p in enumerate(paths) if not p.exists()), key=lambda i: -faces[i].coverage)
    if todo:
        workers = num_workers or min(os.cpu_count() or 1, len(todo))
        bar = tqdm(total=sum(faces[i].coverage for i in todo), unit="glyph", desc=f"HanGlyphs: {len(todo)} faces")
        args = [(str(font_dir), faces[i].path, faces[i].index, characters, image_size, str(paths[i])) for i in todo]
        if workers == 1:
            for i, a in zip(todo, args):
                _render_to_cache(*a)
                bar.update(faces[i].coverage)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
                futures = {pool.submit(_render_to_cache, *a): i for i, a in zip(todo, args)}
                for future in _as_completed(futures):
                    future.result()
                    bar.update(faces[futures[future]].coverage)
        bar.close()
    results = []
    for p in paths:
        with np.load(p, allow_pickle=False) as f:
            results.append({"chars": f["chars"], "images": f["images"], "dropped": json.loads(str(f["dropped"]))})
    return results


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures)


def build_han_table(
    font_dir: Path, files: list[Path], characters: str, image_size: int, cache_dir: Path, num_workers: int | None
) -> HanTable:
    """Render (or read the per-face caches) and apply the table filters of the module docstring."""
    codes = {ord(c) for c in characters}
    faces = [face for path in files for face in read_han_faces(font_dir, path, codes)]
    if not faces:
        raise ValueError(
            f"HanGlyphs: none of the {len(files)} font files under {font_dir} is a Han font (no face maps "
            f"{MIN_HAN_COVERAGE} of the list's characters): not a CJK font folder; {fetch_advice(font_dir)}"
        )
    results = render_faces(font_dir, faces, characters, image_size, cache_dir, num_workers)
    dropped: dict[str, int] = {}
    dropped_faces: dict[str, str] = {}
    kept = []
    for face, result in zip(faces, results):
        for reason, count in result["dropped"].items():
            if reason != "face":
                dropped[reason] = dropped.get(reason, 0) + count
        if "face" in result["dropped"]:
            dropped_faces[f"{face.path}#{face.index}"] = result["dropped"]["face"]
        else:
            kept.append((face, result))
    if not kept:
        raise ValueError(f"HanGlyphs: no usable Han face under {font_dir} (left out: {dropped_faces})")
    return _filter_and_group([f for f, _ in kept], [r for _, r in kept], characters, dropped, dropped_faces)


def _small(images: np.ndarray) -> np.ndarray:
    """(n, s, s) renders as (n, 256) float32 16 × 16 area averages, each centred and of unit norm."""
    n, side = len(images), images.shape[-1]
    step = side // 16
    x = images.reshape(n, 16, step, 16, step).mean(axis=(2, 4), dtype=np.float32).reshape(n, 256)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def consensus_score(chars: list[np.ndarray], images: list[np.ndarray], group: np.ndarray, num_chars: int) -> np.ndarray:
    """For each face, how well its renders look like the *other* design groups' renders of the same character.

    For up to ``CONSENSUS_SAMPLE`` characters ``c`` the face renders, the consensus of ``c`` is the mean over the
    other groups of each group's mean render of ``c`` (16 × 16 area averages, centred, unit norm); the score is
    the mean over ``c`` of the fraction of the other sampled characters whose consensus is less similar (cosine)
    to the face's render of ``c`` than ``c``'s own. Chance is 0.5: a face that draws other glyphs (hangul for
    hanja) scores near it, text faces of any style 0.75–1 (docs/han_glyphs.md). Each group counts once, so a
    design with many faces does not outvote the others.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> shapes = rng.integers(0, 256, (300, 32, 32), dtype=np.uint8)  # 300 "characters"
        >>> faces = [shapes, shapes, shapes, rng.permutation(shapes)]  # face 4 draws each character as another
        >>> scores = consensus_score([np.arange(300)] * 4, faces, np.arange(4), 300)
        >>> scores.round(1).tolist()
        [1.0, 1.0, 1.0, 0.5]
    """
    num_groups = int(group.max()) + 1
    sums = np.zeros((num_groups, num_chars, 256), np.float32)
    counts = np.zeros((num_groups, num_chars), np.int64)
    for g, c, x in zip(group, chars, images):
        sums[g, c] += _small(x)
        counts[g, c] += 1
    means = sums / np.maximum(counts, 1)[..., None]
    total, present = means.sum(axis=0), (counts > 0).sum(axis=0)
    rng = np.random.default_rng(0)
    scores = np.ones(len(chars))  # a face with nothing to compare with keeps 1: no evidence against it
    for f, (g, c, x) in enumerate(zip(group, chars, images)):
        others = present[c] - (counts[g, c] > 0)
        usable = np.flatnonzero(others > 0)
        if len(usable) < 2:
            continue
        pick = np.sort(rng.choice(usable, min(CONSENSUS_SAMPLE, len(usable)), replace=False))
        x = _small(x[pick])
        consensus = (total[c[pick]] - means[g, c[pick]]) / others[pick][:, None]
        consensus -= consensus.mean(axis=1, keepdims=True)
        consensus /= np.maximum(np.linalg.norm(consensus, axis=1, keepdims=True), 1e-6)
        similarity = x @ consensus.T
        own = np.diag(similarity)
        scores[f] = float(np.mean((similarity < own[:, None]).sum(axis=1) / (len(pick) - 1)))
    return scores


def near_duplicate_pairs(images: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """(i, j) pairs, i < j, of renders with normalised L1 ``Σ|a − b| / (Σa + Σb) < threshold``.

    Exact, with a cheap bound first: for pixels in [0, 1], ``|a − b| ≥ (a − b)²``, so a pair whose squared L2
    (one matrix product) is already ≥ threshold·(Σa + Σb) cannot be a near-duplicate.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((3, 4, 4), np.uint8); a[:, 1:3, 1:3] = 255; a[2, 0, 0] = 255
        >>> near_duplicate_pairs(a, 0.2).tolist()  # 1 of 9 ink pixels differs: L1 = 1 / 9 < 0.2
        [[0, 1], [0, 2], [1, 2]]
    """
    threshold = DUPLICATE_L1 if threshold is None else threshold
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    ink = x.sum(axis=1)
    sq = (x * x).sum(axis=1)
    l2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    bound = threshold * (ink[:, None] + ink[None, :])
    i, j = np.nonzero(np.triu(l2 < bound + 1e-4, k=1))
    l1 = np.abs(x[i] - x[j]).sum(axis=1)
    close = l1 < threshold * (ink[i] + ink[j])
    return np.stack([i[close], j[close]], axis=1)


def _unique_renders(results: list[dict]):
    """Exact duplicates collapsed: the distinct (character, image) renders in face order, and for every
    (face, character) render the id of its distinct render."""
    uid: dict[tuple[int, bytes], int] = {}
    images, chars, first_face = [], [], []
    member_face, member_uid = [], []
    for f, result in enumerate(results):
        for c, image in zip(result["chars"].tolist(), result["images"]):
            key = (c, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
            if key not in uid:
                uid[key] = len(images)
                images.append(image)
                chars.append(c)
                first_face.append(f)
            member_face.append(f)
            member_uid.append(uid[key])
    return (
        np.stack(images),
        np.asarray(chars, np.int64),
        np.asarray(first_face, np.int64),
        np.asarray(member_face, np.int64),
        np.asarray(member_uid, np.int64),
    )


def _dedup_char(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal among one character's distinct renders (in priority order): which to keep,
    and the connected component of every render under the near-duplicate relation."""
    pairs = near_duplicate_pairs(images)
    component = np.arange(len(images))
    keep = np.ones(len(images), bool)
    neighbours: dict[int, list[int]] = {}
    for i, j in pairs.tolist():
        neighbours.setdefault(j, []).append(i)
        a, b = component[i], component[j]
        if a != b:
            component[component == max(a, b)] = min(a, b)
    for j in range(len(images)):
        if any(keep[i] for i in neighbours.get(j, ())):
            keep[j] = False
    return keep, component


def same_glyph_counts(results: list[dict], num_chars: int):
    """Distinct kept renders (ids into the unique renders) and, for every two faces, on how many characters
    their renders are near-duplicates (``same``) and how many characters both render (``common``)."""
    images, chars, first_face, member_face, member_uid = _unique_renders(results)
    num_faces = len(results)
    keep = np.zeros(len(images), bool)
    component = np.zeros(len(images), np.int64)
    order = np.argsort(chars, kind="stable")
    bounds = np.searchsorted(chars[order], np.arange(num_chars + 1))
    from tqdm.auto import tqdm

    # After rendering, the first build compares every character's renders across all faces: minutes with the full
    # font set, so a bar rather than silence.
    for c in tqdm(range(num_chars), unit="char", desc="HanGlyphs: comparing the faces' renders", mininterval=2):
        ids = order[bounds[c] : bounds[c + 1]]
        if len(ids):
            keep[ids], comp = _dedup_char(images[ids])
            component[ids] = ids[comp]
    same = np.zeros((num_faces, num_faces), np.int64)
    clusters = component[member_uid]
    by_cluster = np.argsort(clusters, kind="stable")
    cut = np.flatnonzero(np.diff(clusters[by_cluster])) + 1
    for members in np.split(by_cluster, cut):
        if len(members) > 1:
            faces = member_face[members]
            same[np.ix_(faces, faces)] += 1
    covered = np.zeros((num_faces, num_chars), np.float32)
    for f, result in enumerate(results):
        covered[f, result["chars"]] = 1.0
    common = np.rint(covered @ covered.T).astype(np.int64)
    return images, chars, first_face, keep, same, common


def design_groups(faces: list[HanFace], same: np.ndarray, common: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group id of every face and each group's name (its family names joined by " = "): the union of faces
    with one family key, faces with ``same/common ≥ SAME_DESIGN_FRACTION`` (over ``≥ SAME_DESIGN_MIN_COMMON``
    characters) and the :data:`SAME_DESIGN_FALLBACK` pairs."""
    by_key: dict[str, int] = {}
    same_key = ((by_key.setdefault(face.family_key, i), i) for i, face in enumerate(faces))
    fraction = same / np.maximum(common, 1)
    same_glyphs = zip(*np.nonzero(np.triu((fraction >= SAME_DESIGN_FRACTION) & (common >= SAME_DESIGN_MIN_COMMON), 1)))
    fallback = []
    for pattern, _ in SAME_DESIGN_FALLBACK:
        matching = [i for i, face in enumerate(faces) if re.match(pattern, face.family)]
        fallback += [(matching[0], i) for i in matching[1:]]
    group = join_groups(len(faces), itertools.chain(same_key, same_glyphs, fallback))
    names = []
    for g in range(int(group.max()) + 1):
        families = sorted({faces[i].family for i in np.flatnonzero(group == g)}, key=str.lower)
        names.append(" = ".join(families[:6]) + (f" (+{len(families) - 6} more)" if len(families) > 6 else ""))
    return group, names


def _filter_and_group(
    faces: list[HanFace], results: list[dict], characters: str, dropped: dict, dropped_faces: dict
) -> HanTable:
    """Steps 2–4 of the module docstring on the rendered faces."""
    images, chars, first_face, keep, same, common = same_glyph_counts(results, len(characters))
    dropped["same render as another face"] = sum(len(r["chars"]) for r in results) - len(images)
    dropped["near-duplicate of another face's render"] = int((~keep).sum())
    group, _ = design_groups(faces, same, common)
    logging.getLogger(__name__).info(
        "HanGlyphs: scoring how each of %d faces agrees with the other designs ...", len(faces)
    )
    scores = consensus_score([r["chars"] for r in results], [r["images"] for r in results], group, len(characters))
    for face, result, score in zip(faces, results, scores):
        if score < MIN_CONSENSUS_SCORE:
            dropped_faces[f"{face.path}#{face.index}"] = f"disagrees with the other designs (consensus {score:.2f})"
            reason = "face disagrees with the other designs"
            dropped[reason] = dropped.get(reason, 0) + len(result["chars"])
    good = scores >= MIN_CONSENSUS_SCORE
    if not good.any():
        raise ValueError(f"HanGlyphs: every Han face disagrees with the others (left out: {dropped_faces})")
    kept = np.flatnonzero(keep & good[first_face])
    kept = kept[np.lexsort((first_face[kept], chars[kept]))]
    faces = [f for f, g in zip(faces, good) if g]
    face_id = np.cumsum(good) - 1  # old face index -> index among the good faces
    group, names = design_groups(faces, same[np.ix_(good, good)], common[np.ix_(good, good)])
    used = np.unique(group[face_id[first_face[kept]]])  # groups left with renders, renumbered 0..G-1
    group_id = np.full(len(names), -1, np.int64)
    group_id[used] = np.arange(len(used))
    return HanTable(
        characters=characters,
        images=images[kept],
        char_index=chars[kept],
        face_index=face_id[first_face[kept]],
        face_names=np.array([f.name for f in faces]),
        face_paths=np.array([f"{f.path}#{f.index}" for f in faces]),
        face_group=group_id[group],
        group_names=np.array(names)[used],
        dropped=dropped,
        dropped_faces=dropped_faces,
        consensus={f"{f.path}#{f.index}": round(float(x), 4) for f, x in zip(faces, scores[good])},
    )

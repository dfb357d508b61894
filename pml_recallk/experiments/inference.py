"""Data out of a trained model: the embeddings of a split (``pml-recallk embed``) and what the model retrieves for
chosen queries (``pml-recallk retrieve``).

Both start from a checkpoint of ``pml-recallk train`` (a run folder means its ``checkpoints/best.pt``) and the
data settings saved in it (or overridden). Images are embedded a chunk at a time (``eval.batch_size`` images) into
one preallocated float32 array, so memory holds the (N, D) result and one chunk of images, never a list of chunks.
Nearest neighbours come from :class:`~pml_recallk.evaluation.ChunkedKNN` (exact, memory-bounded) with cosine
similarity; the models end in an L2 normalisation, so this is the dot product of the stored embeddings.

Example (a tiny run: one training step on 8 glyph classes)::

    >>> import json, tempfile
    >>> from pml_recallk.experiments import resolve_config, run_experiment
    >>> folder = tempfile.mkdtemp()
    >>> config = resolve_config(overrides=["data.max_classes=8", "data.image_size=16", "train.epochs=1",
    ...     "train.iterations_per_epoch=1", "data.batch_size=16", "train.device='cpu'",
    ...     f"data.glyphs_cache_dir={json.dumps(folder)}"])
    >>> _ = run_experiment(config, f"{folder}/run", log=lambda message: None)
    >>> trained = load_trained_model(f"{folder}/run")
    >>> embedded = embed_split(trained, "test", progress=False)
    >>> embedded.embeddings.dtype, embedded.embeddings.shape[1]
    (dtype('float32'), 128)
    >>> retrieval = retrieve(trained, "test", top_k=3, num_queries=2, progress=False)
    >>> [len(query["neighbours"]) for query in retrieval.summary["queries"]]
    [3, 3]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tqdm
from pytorch_metric_learning.distances import CosineSimilarity
from torch.utils.data import DataLoader, Dataset, Subset

from .._checks import check_int
from .._io import save_npz_atomic, write_json_atomic
from ..evaluation.knn import ChunkedKNN, drop_self
from . import builders
from .checkpoints import load_checkpoint
from .config import ConfigError, config_differences, upgrade_config

__all__ = [
    "EmbeddedSplit",
    "Retrieval",
    "TrainedModel",
    "choose_queries",
    "class_names",
    "config_hash",
    "embed_dataset",
    "embed_split",
    "item_paths",
    "load_split",
    "load_trained_model",
    "nearest_neighbours",
    "retrieve",
    "save_embeddings",
    "save_retrieval",
]

# The weights come from the checkpoint, so where its run started from does not matter (as in evaluate).
_IGNORED_MODEL_KEYS = {"model.init_checkpoint", "model.pretrained_path"}


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of a config: SHA-256 of its JSON with sorted keys.

    The same config gives the same hash in any process and key order, so embeddings from one checkpoint can be
    told apart from those of another run (``pml-recallk embed`` stores the hash of the checkpoint's config).

    Example:
        >>> config_hash({"b": {"x": 1}, "a": {}}) == config_hash({"a": {}, "b": {"x": 1}})
        True
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class TrainedModel:
    """A checkpoint's model, ready to embed: in eval mode on ``device``.

    ``config`` sets the data (the checkpoint's own, or it with overrides); ``saved_config`` is the checkpoint's,
    which ``config_hash`` identifies; ``channels`` the image channels the model was trained on.
    """

    model: torch.nn.Module
    config: dict[str, Any]
    saved_config: dict[str, Any]
    channels: int
    device: torch.device
    epoch: int
    checkpoint: str


def load_trained_model(checkpoint: str | Path, config: Mapping[str, Any] | None = None) -> TrainedModel:
    """The model of ``checkpoint`` (a ``.pt`` of ``pml-recallk train`` or its run folder) with its weights.

    ``config`` (default: the checkpoint's) chooses the data set, root and device; its model settings must be
    the checkpoint's (else a ConfigError lists the differences).
    """
    state = load_checkpoint(checkpoint)
    saved = upgrade_config(state["config"])
    config = saved if config is None else dict(config)
    different = [d for d in config_differences(saved, config, _IGNORED_MODEL_KEYS) if d.startswith("model.")]
    if different:
        raise ConfigError(f"the checkpoint's model differs from the config: {'; '.join(different)}")
    channels = builders.input_channels(saved)
    model = builders.build_model(config, channels)
    model.load_state_dict(state["model"])
    device = builders.device_of(config)
    builders.place_model(model, config, device).eval()
    return TrainedModel(model, config, saved, channels, device, int(state["epoch"]), str(checkpoint))


def load_split(trained: TrainedModel, split: str) -> Dataset:
    """Split ``split`` of the config's data set with the plain (evaluation) transform, also for ``train``."""
    dataset = builders.build_datasets(trained.config, [split], trained.channels)[split]
    # build_datasets augments "train"; embeddings and retrieval want the same deterministic view of every split.
    dataset.transform = builders.evaluation_transform(trained.config, trained.channels)
    return dataset


# ------------------------------------------------------------------------------------------------- embed


def embed_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """``model``'s embeddings of every item of ``dataset`` (items are ``(image tensor, label)``), in order.

    Returns (N, D) float32. Computed ``batch_size`` items at a time in eval mode without gradients, each chunk
    written into one preallocated array: peak memory is the result plus one chunk (a tqdm bar counts images).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    embeddings: np.ndarray | None = None
    start = 0
    model.eval()
    with torch.no_grad(), tqdm.tqdm(total=len(dataset), unit="image", desc="embedding", disable=not progress) as bar:
        for images, _ in loader:
            chunk = model(images.to(device)).float().cpu().numpy()
            if embeddings is None:
                embeddings = np.empty((len(dataset), chunk.shape[1]), dtype=np.float32)
            embeddings[start : start + len(chunk)] = chunk
            start += len(chunk)
            bar.update(len(chunk))
    return embeddings if embeddings is not None else np.empty((0, 0), dtype=np.float32)


def _unwrap(dataset: Dataset) -> tuple[Dataset, np.ndarray]:
    """The loaded data set under the transform and class-subset wrappers, and the index in it of each item."""
    indices = np.arange(len(dataset))
    while True:
        if isinstance(dataset, Subset):
            indices = np.asarray(dataset.indices, dtype=np.int64)[indices]
            dataset = dataset.dataset
        elif isinstance(getattr(dataset, "dataset", None), Dataset):  # builders.TransformedDataset
            dataset = dataset.dataset
        else:
            return dataset, indices


def item_paths(dataset: Dataset) -> list[str]:
    """The image path of every item of ``dataset`` (its loader's ``paths``: a file, or a rendered glyph's name)."""
    base, indices = _unwrap(dataset)
    paths = getattr(base, "paths", None)
    if paths is None:
        return [f"{type(base).__name__}[{i}]" for i in indices]
    return [str(paths[i]) for i in indices]


def class_names(dataset: Dataset) -> list[str]:
    """A readable class of every item: the character of a glyph, the class folder or id of an image list."""
    base, indices = _unwrap(dataset)
    labels = np.asarray(base.labels)
    names = getattr(base, "class_names", None) or getattr(base, "characters", None)
    if names is not None:
        return [str(names[labels[i]]) for i in indices]
    ids = getattr(base, "class_ids", labels)
    return [str(ids[i]) for i in indices]


@dataclass
class EmbeddedSplit:
    """What ``pml-recallk embed`` saves: (N, D) float32 embeddings, (N,) labels and paths, the config hash."""

    embeddings: np.ndarray
    labels: np.ndarray
    paths: list[str]
    config_hash: str
    dataset: Dataset


def embed_split(
    trained: TrainedModel, split: str, batch_size: int | None = None, progress: bool = True
) -> EmbeddedSplit:
    """Embed split ``split`` of the config's data set with ``trained`` (``batch_size``: ``eval.batch_size``)."""
    return _embed_loaded(trained, load_split(trained, split), batch_size, progress)


def _embed_loaded(trained: TrainedModel, dataset: Dataset, batch_size: int | None, progress: bool) -> EmbeddedSplit:
    embeddings = embed_dataset(
        trained.model,
        dataset,
        batch_size or trained.config["eval"]["batch_size"],
        trained.device,
        num_workers=builders.loader_workers(trained.config),
        progress=progress,
    )
    labels = np.asarray(dataset.labels, dtype=np.int64)
    return EmbeddedSplit(embeddings, labels, item_paths(dataset), config_hash(trained.saved_config), dataset)


def save_embeddings(embedded: EmbeddedSplit, path: str | Path) -> None:
    """Write ``embeddings``, ``labels``, ``paths`` and ``config_hash`` to the ``.npz`` file ``path`` atomically.

    Read back with ``numpy.load(path)`` (no pickle: paths are a unicode array, the hash a 0-d one).
    """
    save_npz_atomic(
        path,
        embeddings=embedded.embeddings,
        labels=embedded.labels,
        paths=np.asarray(embedded.paths, dtype=str),
        config_hash=np.asarray(embedded.config_hash),
    )


# ---------------------------------------------------------------------------------------------- retrieve


def choose_queries(labels: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """``count`` item indices drawn with ``numpy.random.default_rng(seed)``, from as many classes as possible.

    The rule: walk a random permutation of the items and take each item whose class has not been taken yet; if
    ``count`` exceeds the number of classes, fill up with the remaining items in permutation order. The same
    labels and seed give the same queries, in the order drawn.

    Example:
        >>> import numpy as np
        >>> queries = choose_queries([0, 0, 1, 1, 2, 2], 3, seed=0)
        >>> sorted(np.asarray([0, 0, 1, 1, 2, 2])[queries].tolist())
        [0, 1, 2]
    """
    labels = np.asarray(labels)
    count = check_int(count, "queries")
    if not 1 <= count <= len(labels):
        raise ValueError(f"queries must be between 1 and the {len(labels)} items of the split, got {count}")
    order = np.random.default_rng(seed).permutation(len(labels))
    _, first = np.unique(labels[order], return_index=True)
    first_of_class = order[np.sort(first)]
    rest = order[~np.isin(order, first_of_class)]
    return np.concatenate([first_of_class, rest])[:count]


def nearest_neighbours(
    queries: torch.Tensor, database: torch.Tensor, k: int, query_indices: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of ``database`` (N, D) by cosine similarity for each query (Q, D): ``(similarities, indices)``,
    each (Q, k), best first. ``query_indices`` (Q,): where each query is in the database; that item is excluded.
    """
    knn = ChunkedKNN(CosineSimilarity())
    if query_indices is None:
        return knn(queries, k, database)
    # One more than k, then the query's own index removed (or the last column, if ties pushed it out).
    similarities, indices = knn(queries, k + 1, database)
    return drop_self(similarities, indices, query_indices)


# A displayed image is at most this many pixels on its longer side: the page and the grid stay small.
DISPLAY_SIZE = 192


@dataclass
class Retrieval:
    """What ``pml-recallk retrieve`` writes: ``summary`` (the content of ``neighbours.json``) and ``images``,
    a display image (PIL, RGB) for every path it names."""

    summary: dict[str, Any]
    images: dict[str, Any]


def _display_image(image: Any) -> Any:
    """A PIL RGB copy of ``image`` no larger than DISPLAY_SIZE (glyphs stay their size; the views scale them)."""
    image = image.convert("RGB")
    image.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
    return image


def _open_query_images(files: Sequence[str | Path]) -> list[Any]:
    """The ``--query`` images as PIL images; a missing or unreadable file is a ConfigError naming it."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(image.convert("RGB"))
        except (FileNotFoundError, IsADirectoryError):
            raise ConfigError(f"--query {str(file)!r}: no such image file") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ConfigError(f"--query {str(file)!r}: not a readable image ({type(error).__name__})") from None
    return images


def _neighbour_entries(similarities, indices, labels, paths, names, query_label) -> list[dict[str, Any]]:
    entries = []
    for similarity, index in zip(similarities.tolist(), indices.tolist()):
        entry = {"index": index, "path": paths[index], "label": int(labels[index]), "class": names[index]}
        entry["similarity"] = round(float(similarity), 6)
        entry["correct"] = None if query_label is None else bool(labels[index] == query_label)
        entries.append(entry)
    return entries


def retrieve(
    trained: TrainedModel,
    split: str,
    top_k: int,
    num_queries: int = 8,
    query_files: Sequence[str | Path] = (),
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
) -> Retrieval:
    """The top ``top_k`` items of split ``split`` for each query, by cosine similarity of ``trained``'s embeddings.

    The queries are ``num_queries`` items of the split chosen by :func:`choose_queries` with ``seed`` (each
    excluded from its own list), or the image files ``query_files`` (not in the data set: no label, so no mark of
    correct or wrong). ``summary["queries"][i]`` holds the query's ``path``, ``label``, ``class`` and
    ``neighbours``: a list of ``{index, path, label, class, similarity, correct}``, best first.
    """
    top_k = check_int(top_k, "top_k")
    dataset = load_split(trained, split)
    # Every argument is checked before the images are embedded: a mistake costs seconds, not an embedding pass.
    available = len(dataset) - (0 if query_files else 1)
    if not 1 <= top_k <= available:
        raise ConfigError(f"--top-k must be between 1 and {available} (the split's other items), got {top_k}")
    if query_files:
        query_images = _open_query_images(query_files)
    else:
        try:
            chosen = choose_queries(dataset.labels, num_queries, seed)
        except ValueError as error:
            raise ConfigError(f"--queries: {error}") from None
    embedded = _embed_loaded(trained, dataset, batch_size, progress)
    labels, paths, names = embedded.labels, embedded.paths, class_names(dataset)
    database = torch.from_numpy(embedded.embeddings)
    if query_files:
        to_tensor = builders.evaluation_transform(trained.config, trained.channels)
        batch = torch.stack([to_tensor(image) for image in query_images]).to(trained.device)
        with torch.no_grad():
            query_embeddings = trained.model(batch).float().cpu()
        similarities, indices = nearest_neighbours(query_embeddings, database, top_k)
        queries = [{"index": None, "path": str(f), "label": None, "class": None} for f in query_files]
        images = {str(f): _display_image(image) for f, image in zip(query_files, query_images)}
    else:
        query_index = torch.from_numpy(chosen)
        similarities, indices = nearest_neighbours(database[query_index], database, top_k, query_index)
        queries = [{"index": int(i), "path": paths[i], "label": int(labels[i]), "class": names[i]} for i in chosen]
        images = {}
    base, base_index = _unwrap(embedded.dataset)
    for query, row_similarities, row_indices in zip(queries, similarities, indices):
        query["neighbours"] = _neighbour_entries(row_similarities, row_indices, labels, paths, names, query["label"])
        for item in [query["index"], *row_indices.tolist()]:
            if item is not None and paths[item] not in images:
                images[paths[item]] = _display_image(base[int(base_index[item])][0])
    summary = {
        "checkpoint": trained.checkpoint,
        "config_hash": embedded.config_hash,
        "dataset": trained.config["data"]["dataset"],
        "split": split,
        "top_k": top_k,
        "similarity": "cosine",
        "queries": queries,
    }
    return Retrieval(summary, images)


def save_retrieval(retrieval: Retrieval, output_dir: str | Path) -> dict[str, Path]:
    """Write ``neighbours.json``, ``retrieval.png`` (the grid) and ``index.html`` (the page) into ``output_dir``."""
    from .retrieval_views import draw_retrieval_grid, retrieval_page

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {name: output_dir / name for name in ("neighbours.json", "retrieval.png", "index.html")}
    write_json_atomic(retrieval.summary, files["neighbours.json"])
    draw_retrieval_grid(retrieval.summary, retrieval.images, files["retrieval.png"])
    files["index.html"].write_text(retrieval_page(retrieval.summary, retrieval.images), encoding="utf-8")
    return files

"""``RecallAtKAccuracyCalculator``: PML's ``AccuracyCalculator`` plus Recall@k, the hit rate of the k nearest
neighbours, for several k at once, memory-bounded on SOP- and iNaturalist-sized test sets (docs/method.md §5).

It overrides only what differs from PML 2.9: the metrics ``recall_at_<k>``, how many neighbours are retrieved
(``determine_k``), which neighbour columns each metric reads (``_get_accuracy``), input checks before PML's
``get_accuracy`` runs, and PML's two label-counting helpers, swapped for O(N)-memory equivalents during the call.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.utils import accuracy_calculator as pml_accuracy
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from .._checks import check_k_values
from .clustering import SklearnKMeans
from .knn import ChunkedKNN, faiss_available

# PML metrics that only read the first R = (class size - self) neighbour columns.
_FIRST_R_COLUMN_METRICS = ("r_precision", "mean_average_precision_at_r")

# PML converts labels to float32, which represents every integer only up to 2**24.
_LARGEST_EXACT_FLOAT32_INT = 2**24

# Rows of the (queries × neighbours) label comparison done at a time when looking for the first hit.
_HIT_RANK_ROWS = 8192


def _check_device(device: Any) -> torch.device:
    """A torch.device (or its name) that exists on this machine, so that a missing GPU is named up front."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch.device or its name (e.g. 'cpu', 'cuda:0'), got {device!r}") from error
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no GPU"
        raise ValueError(f"device={str(device)!r} but this machine has {found}; use device='cpu' (or leave it unset)")
    return device


class RecallAtKAccuracyCalculator(AccuracyCalculator):
    """PML's ``AccuracyCalculator`` with the metrics ``recall_at_<k>`` for every k in ``k_values``.

    Recall@k, as metric-learning papers report it, is a hit rate over the queries q that have at least one
    positive in their database (the reference, minus q itself when ``ref_includes_query``)::

        recall_at_k = mean_q  1[ some item among the k nearest neighbours of q has q's label ]

    With ``avg_of_avgs=True`` the mean is taken per class first, then over classes; with
    ``return_per_class=True`` the per-class values are returned as a list (PML's conventions). Every value
    is a Python float, so record-keeper stores it. ``recall_at_1`` equals PML's ``precision_at_1``.

    All of ``AccuracyCalculator``'s arguments and metrics keep working, with these differences:

    - Neighbours retrieved: the most any requested metric needs, and no more. ``recall_at_k`` needs k;
      ``precision_at_1`` 1; ``r_precision`` and ``mean_average_precision_at_r`` the largest class size
      (they ignore later columns); ``mean_average_precision`` and ``mean_reciprocal_rank`` PML's ``k``
      (``None`` = the whole reference). Each PML metric is then given exactly the neighbour columns PML would
      give it, so its value does not change when recall needs more neighbours than PML's ``k``.
    - ``k`` larger than the database: ``recall_at_k`` is computed on all min(k, reference size - self)
      neighbours, which is its exact value (1 for every query that has a positive); a warning says so.
    - ``knn_func`` defaults to :class:`~pml_recallk.evaluation.ChunkedKNN`: exact squared-Euclidean
      search (as PML's default ``FaissKNN``) done a chunk of queries at a time, with faiss when it is
      installed and plain torch otherwise (PML's default raises ``NameError`` without faiss). Without faiss,
      NMI/AMI use scikit-learn's k-means unless ``kmeans_func`` is given.
    - ``mean_reciprocal_rank`` is listed in ``requires_knn()`` (PML forgets it, so requesting it alone fails).
    - Labels: also ``(N, 1)`` (flattened; PML fails on them in leave-one-out), rows ``(N, d)`` that match when
      every component does, and numpy strings such as class names (mapped to ids shared by query and
      reference; per-class values then follow the sorted names). With a custom ``label_comparison_fn``
      labels are passed as given and strings are refused (``TypeError``).
    - Bad input (wrong shapes, mismatched lengths, NaN/inf embeddings, an empty query set, leave-one-out on a
      single item, integer labels float32 cannot hold exactly) raises ``ValueError``/``TypeError`` instead of
      producing a number.

    Args:
        k_values: the k of ``recall_at_<k>``: distinct positive ints in any order (stored sorted); a repeated k
            is a ``ValueError``, as for the loss. A benchmark's k: its dataset class's ``recall_k_values``.
        **kwargs: ``AccuracyCalculator`` arguments: ``include``, ``exclude``, ``avg_of_avgs``,
            ``return_per_class``, ``k``, ``label_comparison_fn``, ``device``, ``knn_func``, ``kmeans_func``.

    Example::

        >>> import torch
        >>> from pml_recallk import RecallAtKAccuracyCalculator
        >>> embeddings = torch.tensor([[0.0], [0.1], [1.0], [1.2], [3.0]])
        >>> labels = torch.tensor([0, 1, 0, 1, 0])
        >>> calc = RecallAtKAccuracyCalculator(k_values=(1, 2), include=("recall_at_1", "recall_at_2"))
        >>> calc.get_accuracy(embeddings, labels)  # leave-one-out: every item queries the others
        {'recall_at_1': 0.0, 'recall_at_2': 0.6}
    """

    def __init__(self, k_values: Sequence[int] = (1, 5, 16, 32), **kwargs: Any) -> None:
        self.k_values = tuple(sorted(check_k_values(k_values)))
        self.recall_metrics = {f"recall_at_{k}": k for k in self.k_values}
        for name, k in self.recall_metrics.items():
            # PML discovers metrics through dir(self) in __init__, which lists instance attributes too.
            setattr(self, f"calculate_{name}", functools.partial(self._calculate_recall_at_k, k=k))
        if kwargs.get("device") is not None:  # PML needs a torch.device (it reads device.type)
            kwargs["device"] = _check_device(kwargs["device"])
        if kwargs.get("knn_func") is None:
            kwargs["knn_func"] = ChunkedKNN()
        if kwargs.get("kmeans_func") is None and not faiss_available():
            kwargs["kmeans_func"] = SklearnKMeans()
        super().__init__(**kwargs)

    def requires_knn(self) -> list[str]:
        return super().requires_knn() + ["mean_reciprocal_rank"] + list(self.recall_metrics)

    def get_accuracy(
        self,
        query,
        query_labels,
        reference=None,
        reference_labels=None,
        ref_includes_query: bool = False,
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """PML's ``get_accuracy``, after input checks, with its label bookkeeping done in O(N) memory.

        PML's version compares every unique label with every reference label (U × N booleans, summed through an
        int64 copy: 6.5 GB at once on SOP) in two module-level helpers; for the length of this call they are
        replaced by O(N) equivalents that return the same tensors (see :func:`_label_match_counts`). Labels may
        also be ``(N, 1)`` (flattened) or numpy strings (mapped to ids shared by query and reference).
        """
        query_labels, reference_labels = _labels_as_ids(query_labels, reference_labels, self.label_comparison_fn)
        _check_inputs(query, query_labels, reference, reference_labels, ref_includes_query)
        with _label_bookkeeping_in_linear_memory():
            return super().get_accuracy(
                query, query_labels, reference, reference_labels, ref_includes_query, include, exclude
            )

    def determine_k(self, bin_counts: torch.Tensor, num_reference_embeddings: int, ref_includes_query: bool) -> int:
        """Neighbours to retrieve: the most that any current metric needs (see the class docstring)."""
        metrics = self.get_curr_metrics()
        pml_knn_metrics = super().requires_knn()
        if isinstance(self.k, int) and any(name in pml_knn_metrics for name in metrics):
            super().determine_k(bin_counts, num_reference_embeddings, ref_includes_query)  # PML's warnings
        available = num_reference_embeddings - int(ref_includes_query)
        too_large = [k for name, k in self.recall_metrics.items() if name in metrics and k > available]
        if too_large:
            c_f.LOGGER.warning(
                f"recall_at_k for k={too_large} uses all {available} neighbours each query has, so it is 1 for "
                f"every query with a positive in the reference"
            )
        columns = self._neighbours_per_metric(metrics, bin_counts, num_reference_embeddings, ref_includes_query)
        return max(columns.values(), default=0)

    def _neighbours_per_metric(
        self, metrics: Iterable[str], bin_counts: torch.Tensor, num_reference_embeddings: int, ref_includes_query: bool
    ) -> dict[str, int]:
        """How many neighbour columns each kNN metric reads; PML's metrics get exactly PML's k columns."""
        self_count = int(ref_includes_query)
        available = num_reference_embeddings - self_count
        largest_class = int(torch.max(bin_counts)) - self_count if len(bin_counts) > 0 else 0
        if self.k is None:
            pml_k = available
        elif self.k == "max_bin_count":
            pml_k = largest_class
        else:
            pml_k = self.k
        pml_k = max(0, min(pml_k, available))
        columns = {}
        for name in metrics:
            if name in self.recall_metrics:
                columns[name] = min(self.recall_metrics[name], available)
            elif name == "precision_at_1":
                columns[name] = min(1, pml_k)
            elif name in _FIRST_R_COLUMN_METRICS:
                columns[name] = max(0, min(pml_k, largest_class))
            elif name in self.requires_knn():
                columns[name] = pml_k
        return columns

    def _get_accuracy(self, function_dict: dict, **kwargs: Any) -> dict[str, Any]:
        if "knn_labels" not in kwargs:
            return super()._get_accuracy(function_dict, **kwargs)
        knn_labels, knn_distances = kwargs["knn_labels"], kwargs["knn_distances"]
        columns = self._neighbours_per_metric(
            function_dict, kwargs["label_counts"][1], len(kwargs["reference"]), kwargs["ref_includes_query"]
        )
        if any(name in self.recall_metrics for name in function_dict):
            # One pass over the (queries × neighbours) labels serves every k.
            kwargs["first_hit_rank"] = self._first_hit_rank(kwargs["query_labels"], knn_labels)
        accuracies = {}
        for name, function in function_dict.items():
            if name in columns and name not in self.recall_metrics:
                n = columns[name]
                accuracies[name] = function(
                    **{**kwargs, "knn_labels": knn_labels[:, :n], "knn_distances": knn_distances[:, :n]}
                )
            else:
                accuracies[name] = function(**kwargs)
        return accuracies

    def _first_hit_rank(self, query_labels: torch.Tensor, knn_labels: torch.Tensor) -> torch.Tensor:
        """0-based rank of each query's first same-label neighbour; the number of neighbours if none."""
        num_queries, num_neighbours = knn_labels.shape[:2]
        first_hit = torch.full((num_queries,), num_neighbours, dtype=torch.long, device=knn_labels.device)
        if num_neighbours == 0:
            return first_hit
        for start in range(0, num_queries, _HIT_RANK_ROWS):
            end = min(start + _HIT_RANK_ROWS, num_queries)
            same = self.label_comparison_fn(query_labels[start:end, None], knn_labels[start:end])
            if same.dim() > 2:  # multi-dimensional labels: a match means every component matches
                same = c_f.torch_all_from_dim_to_end(same, 2)
            if same.shape != (end - start, num_neighbours):
                raise ValueError(
                    f"label_comparison_fn must return a ({end - start}, {num_neighbours}) boolean tensor for "
                    f"query labels (n, 1) and neighbour labels (n, k), got shape {tuple(same.shape)}"
                )
            same = same.bool()
            # argmax returns the first maximum, i.e. the first hit of each row that has one.
            rank = same.to(torch.uint8).argmax(dim=1)
            first_hit[start:end] = torch.where(same.any(dim=1), rank, num_neighbours)
        return first_hit

    def _calculate_recall_at_k(
        self,
        k: int,
        first_hit_rank: torch.Tensor,
        query_labels: torch.Tensor,
        not_lone_query_mask: torch.Tensor,
        label_counts: tuple[torch.Tensor, torch.Tensor],
        **kwargs: Any,
    ) -> float | list[float]:
        if not torch.any(not_lone_query_mask):
            return pml_accuracy.nan_accuracy(label_counts[0], self.return_per_class)
        hits = (first_hit_rank[not_lone_query_mask] < k).to(torch.float64)
        return _average(hits, query_labels[not_lone_query_mask], self.avg_of_avgs, self.return_per_class)


# ------------------------------------------------------------------------------------- label bookkeeping

_PML_GET_LABEL_MATCH_COUNTS = pml_accuracy.get_label_match_counts
_PML_GET_LONE_QUERY_LABELS = pml_accuracy.get_lone_query_labels


def _label_match_counts(
    query_labels: torch.Tensor, reference_labels: torch.Tensor, label_comparison_fn: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """PML's ``get_label_match_counts`` (unique query labels, reference items matching each) in O(N) memory.

    For 1-D labels compared by equality: one ``unique`` of the reference and a binary search, instead of PML's
    (unique query labels × reference) comparison. Any other case is PML's own function.
    """
    if label_comparison_fn is not pml_accuracy.EQUALITY or query_labels.dim() != 1:
        return _PML_GET_LABEL_MATCH_COUNTS(query_labels, reference_labels, label_comparison_fn)
    unique_query_labels = torch.unique(query_labels)
    reference_unique, reference_counts = torch.unique(reference_labels, return_counts=True)
    position = torch.searchsorted(reference_unique, unique_query_labels).clamp_max(len(reference_unique) - 1)
    found = reference_unique[position] == unique_query_labels
    return unique_query_labels, torch.where(found, reference_counts[position], 0)


def _lone_query_labels(
    query_labels: torch.Tensor,
    label_counts: tuple[torch.Tensor, torch.Tensor],
    ref_includes_query: bool,
    label_comparison_fn: Callable,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PML's ``get_lone_query_labels``: labels without a positive in the database, and the other queries' mask.

    Under equality a label always matches itself, so with ``ref_includes_query`` a label is lone when it has one
    reference item (the query). 1-D labels are masked with ``isin`` (PML: queries × lone labels booleans); rows of
    labels ``(N, d)`` with PML's comparison (PML's own function fails on them when ``ref_includes_query``).
    """
    if label_comparison_fn is not pml_accuracy.EQUALITY:
        return _PML_GET_LONE_QUERY_LABELS(query_labels, label_counts, ref_includes_query, label_comparison_fn)
    unique_labels, match_counts = label_counts
    lone_query_labels = unique_labels[match_counts - int(ref_includes_query) <= 0]
    if query_labels.dim() == 1:
        return lone_query_labels, ~torch.isin(query_labels, lone_query_labels)
    same = c_f.torch_all_from_dim_to_end(query_labels[:, None] == lone_query_labels, 2)
    return lone_query_labels, ~torch.any(same, dim=1)


_swap_lock = threading.Lock()
_swap_depth = 0


@contextlib.contextmanager
def _label_bookkeeping_in_linear_memory() -> Iterator[None]:
    """Within the block, PML's ``get_accuracy`` calls :func:`_label_match_counts` and :func:`_lone_query_labels`.

    PML's ``get_accuracy`` looks both helpers up in its module at call time, so swapping the module attributes
    is the one way to change them without copying the method. The replacements return what PML's return (they
    fall back to PML's for custom label comparisons), so another calculator running meanwhile in another thread
    is unaffected; a counter keeps them in place until the last concurrent call ends.
    """
    global _swap_depth
    with _swap_lock:
        if _swap_depth == 0:
            pml_accuracy.get_label_match_counts = _label_match_counts
            pml_accuracy.get_lone_query_labels = _lone_query_labels
        _swap_depth += 1
    try:
        yield
    finally:
        with _swap_lock:
            _swap_depth -= 1
            if _swap_depth == 0:
                pml_accuracy.get_label_match_counts = _PML_GET_LABEL_MATCH_COUNTS
                pml_accuracy.get_lone_query_labels = _PML_GET_LONE_QUERY_LABELS


# ------------------------------------------------------------------------------------------- input checks


def _is_text(labels: Any) -> bool:
    if not isinstance(labels, np.ndarray):
        return False
    if labels.dtype.kind in "US":
        return True
    return labels.dtype.kind == "O" and labels.size > 0 and all(isinstance(x, (str, bytes)) for x in labels.flat)


def _labels_as_ids(query_labels: Any, reference_labels: Any, label_comparison_fn: Callable) -> tuple[Any, Any]:
    """Labels PML can take: ``(N, 1)`` flattened, text labels mapped to ids shared by query and reference.

    Both only under equality, where they do not change which items match; a custom ``label_comparison_fn``
    receives the labels as given, so text labels are refused then.
    """
    if label_comparison_fn is not pml_accuracy.EQUALITY:
        for name, labels in (("query_labels", query_labels), ("reference_labels", reference_labels)):
            if _is_text(labels):
                raise TypeError(f"{name} are strings, which a custom label_comparison_fn cannot be given; pass ids")
        return query_labels, reference_labels
    query_labels, reference_labels = (
        x[:, 0] if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 2 and x.shape[1] == 1 else x
        for x in (query_labels, reference_labels)
    )
    text = [_is_text(x) for x in (query_labels, reference_labels)]
    if not any(text):
        return query_labels, reference_labels
    if reference_labels is not None and not all(text):
        raise TypeError("query_labels and reference_labels must both be strings or both be numbers")
    if query_labels.ndim != 1 or (reference_labels is not None and reference_labels.ndim != 1):
        raise ValueError("string labels must be 1-D (one class name per item)")
    given = [x for x in (query_labels, reference_labels) if x is not None]
    _, ids = np.unique(np.concatenate(given).astype(str), return_inverse=True)
    ids = torch.from_numpy(ids.reshape(-1).astype(np.int64))
    return ids[: len(query_labels)], (None if reference_labels is None else ids[len(query_labels) :])


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(
        f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}; convert with numpy.asarray({name})"
    )


def _check_inputs(query, query_labels, reference, reference_labels, ref_includes_query: bool) -> None:
    """Raise a clear error for input that PML would turn into a crash deep inside, or into a wrong number."""
    if (reference is None) != (reference_labels is None):
        raise ValueError("pass reference and reference_labels together, or neither (leave-one-out on query)")
    sets = [("query", query, "query_labels", query_labels)]
    if reference is not None:
        sets.append(("reference", reference, "reference_labels", reference_labels))
    embedding_size = None
    for name, embeddings, labels_name, labels in sets:
        embeddings, labels = _as_tensor(embeddings, name), _as_tensor(labels, labels_name)
        if embeddings.dim() != 2:
            raise ValueError(f"{name} must be 2-D (num_items, embedding_size), got shape {tuple(embeddings.shape)}")
        if len(embeddings) == 0:
            raise ValueError(f"{name} is empty: there is nothing to evaluate")
        if embedding_size is not None and embeddings.shape[1] != embedding_size:
            raise ValueError(f"query has embedding size {embedding_size} but reference has {embeddings.shape[1]}")
        embedding_size = embeddings.shape[1]
        _check_labels(labels, labels_name, len(embeddings), name)
        if not bool(torch.isfinite(embeddings).all()):
            raise ValueError(f"{name} contains NaN or infinite values; distances to them are undefined")
    leave_one_out = reference is None or ref_includes_query
    if leave_one_out and len(query if reference is None else reference) == 1:
        raise ValueError(
            "leave-one-out evaluation of a single item: the query has no other item to be compared with; "
            "give at least 2 items, or a separate reference with ref_includes_query=False"
        )
    if ref_includes_query and reference is not None and len(reference) < len(query):
        raise ValueError(
            f"ref_includes_query=True needs the queries to be the first rows of reference, but reference has "
            f"{len(reference)} rows and query {len(query)}"
        )


def _check_labels(labels: torch.Tensor, name: str, num_items: int, embeddings_name: str) -> None:
    if labels.dim() not in (1, 2) or len(labels) != num_items:
        raise ValueError(
            f"{name} must have one label (or row of labels) per {embeddings_name} row: {embeddings_name} has "
            f"{num_items} rows, {name} has shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        if not bool(torch.isfinite(labels).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    elif labels.dtype != torch.bool and bool((labels.abs() > _LARGEST_EXACT_FLOAT32_INT).any()):
        raise ValueError(
            f"{name} has values beyond 2**24, which PML's float32 labels cannot tell apart; "
            f"renumber them, e.g. numpy.unique(labels, return_inverse=True)[1]"
        )


def _average(
    per_query: torch.Tensor, labels: torch.Tensor, avg_of_avgs: bool, return_per_class: bool
) -> float | list[float]:
    """PML's ``maybe_get_avg_of_avgs`` in O(N) memory (PML's builds an N × classes float64 matrix)."""
    if not (avg_of_avgs or return_per_class):
        return torch.mean(per_query).item()
    _, group = torch.unique(labels, dim=0, return_inverse=True)
    num_groups = int(group.max()) + 1
    sums = torch.zeros(num_groups, dtype=per_query.dtype, device=per_query.device).index_add_(0, group, per_query)
    per_class = sums / torch.bincount(group, minlength=num_groups)
    if return_per_class:
        return per_class.cpu().tolist()
    return torch.mean(per_class).item()

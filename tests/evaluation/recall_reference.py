"""Brute-force Recall@k in float64 with plain loops: the independent reference for the evaluation tests.

Recall@k of query q: 1 if any of the k nearest items of q's database (the reference, minus reference item q
when the queries are the first reference rows) has q's label. Queries with no same-label item in their
database are left out.

Tie-robust: when several items share the k-th smallest distance, which of them fall inside the top k is
arbitrary, and different kNN implementations break such ties differently. So for each query the reference
returns the lowest and highest hit value over every possible tie-break (two equal values when the top-k set
is unambiguous). ``tolerance`` widens "equal" to "within tolerance of the k-th distance", for float32
implementations compared with this float64 reference: an item more than 2·ε away from the k-th distance
cannot change sides when every distance carries an error below ε.
"""

from __future__ import annotations

import numpy as np


def squared_euclidean(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Full (n_query, n_reference) matrix, float64, one pair at a time."""
    query, reference = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    out = np.empty((len(query), len(reference)))
    for i, q in enumerate(query):
        for j, r in enumerate(reference):
            out[i, j] = float(np.sum((q - r) ** 2))
    return out


def hit_bounds(
    distances: np.ndarray,
    query_labels,
    reference_labels,
    k: int,
    ref_includes_query: bool,
    tolerance: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lowest hit, highest hit, has_positive) per query; smaller distance = nearer."""
    query_labels, reference_labels = np.asarray(query_labels), np.asarray(reference_labels)
    lowest, highest, has_positive = [], [], []
    for i in range(len(distances)):
        # The query is removed by its index, never by its position in the sorted list.
        database = [j for j in range(distances.shape[1]) if not (ref_includes_query and j == i)]
        d = distances[i, database]
        positive = reference_labels[database] == query_labels[i]
        has_positive.append(bool(positive.any()))
        order = np.argsort(d, kind="stable")
        kk = min(k, len(database))
        kth = d[order[kk - 1]]
        inside = d < kth - tolerance
        boundary = np.abs(d - kth) <= tolerance
        taken_from_boundary = kk - int(inside.sum())
        negatives_on_boundary = int((boundary & ~positive).sum())
        certain = bool((positive & inside).any()) or taken_from_boundary > negatives_on_boundary
        possible = bool((positive & inside).any()) or bool((positive & boundary).any())
        lowest.append(certain)
        highest.append(possible)
    return np.array(lowest, float), np.array(highest, float), np.array(has_positive)


def average(per_query: np.ndarray, labels, avg_of_avgs: bool) -> float:
    """Mean over queries, or the mean over classes of each class's mean."""
    if not avg_of_avgs:
        return float(np.mean(per_query))
    return float(np.mean(per_class(per_query, labels)))


def per_class(per_query: np.ndarray, labels) -> list[float]:
    """Per-class means, classes in increasing label order (PML's return_per_class order)."""
    labels = np.asarray(labels)
    return [float(np.mean(per_query[labels == c])) for c in sorted(set(labels.tolist()))]


def recall_bounds(
    distances: np.ndarray,
    query_labels,
    reference_labels,
    k: int,
    ref_includes_query: bool,
    avg_of_avgs: bool = False,
    tolerance: float = 0.0,
) -> tuple[float, float]:
    """Lowest and highest Recall@k any tie-break can give; (nan, nan) when no query has a positive."""
    lowest, highest, has_positive = hit_bounds(
        distances, query_labels, reference_labels, k, ref_includes_query, tolerance
    )
    if not has_positive.any():
        return float("nan"), float("nan")
    labels = np.asarray(query_labels)[has_positive]
    return (
        average(lowest[has_positive], labels, avg_of_avgs),
        average(highest[has_positive], labels, avg_of_avgs),
    )

"""The names of the metrics a run reports, in one place: the metric that picks and reports a run by default, the
MAP@R key, and how a ``recall_at_<k>`` name is read.

PML's ``AccuracyCalculator`` names its metrics ``recall_at_<k>`` (pml-recallk's custom metric) and
``mean_average_precision_at_r``; results, reports and plots read them back through these.

Example:
    >>> recall_k("recall_at_16"), recall_k(MAP_AT_R)
    (16, None)
    >>> [name for name, _ in sorted_by_k({"recall_at_10": 0.9, MAP_AT_R: 0.5, "recall_at_2": 0.7})]
    ['recall_at_2', 'recall_at_10']
    >>> metric_title("recall_at_4"), metric_title(MAP_AT_R)
    ('R@4', 'MAP@R')
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["MAP_AT_R", "PRIMARY_METRIC", "metric_title", "recall_k", "sorted_by_k"]

PRIMARY_METRIC = "recall_at_1"  # the default of eval.select_by, and what a report's headline and plots show
MAP_AT_R = "mean_average_precision_at_r"
_RECALL_PREFIX = "recall_at_"


def recall_k(name: str) -> int | None:
    """The k of a ``recall_at_<k>`` metric name; None for any other name."""
    if not name.startswith(_RECALL_PREFIX) or not name[len(_RECALL_PREFIX) :].isdigit():
        return None
    return int(name[len(_RECALL_PREFIX) :])


def sorted_by_k(metrics: Mapping[str, float]) -> list[tuple[str, float]]:
    """The ``recall_at_<k>`` items of ``metrics`` in increasing k (other metrics left out)."""
    recall = [(name, value) for name, value in metrics.items() if recall_k(name) is not None]
    return sorted(recall, key=lambda item: recall_k(item[0]))


def metric_title(name: str) -> str:
    """A short title: ``R@k`` for Recall@k, ``MAP@R``, else the name itself."""
    k = recall_k(name)
    return f"R@{k}" if k is not None else "MAP@R" if name == MAP_AT_R else name

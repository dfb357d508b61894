"""pml_recallk.experiments.metrics: the one reader of metric names."""

from __future__ import annotations

import pytest

from pml_recallk.experiments.metrics import MAP_AT_R, metric_title, recall_k, sorted_by_k


@pytest.mark.parametrize(
    ("name", "k"),
    [("recall_at_1", 1), ("recall_at_1000", 1000), ("recall_at_", None), ("recall_at_1x", None),
     ("precision_at_1", None), (MAP_AT_R, None), ("recall_at_-1", None)],
)  # fmt: skip
def test_recall_k_reads_only_recall_at_an_integer(name, k):
    assert recall_k(name) == k


def test_sorted_by_k_orders_by_the_number_not_the_text():
    metrics = {"recall_at_10": 0.3, "recall_at_2": 0.2, MAP_AT_R: 0.1, "recall_at_1": 0.1}
    assert [name for name, _ in sorted_by_k(metrics)] == ["recall_at_1", "recall_at_2", "recall_at_10"]
    assert [metric_title(name) for name in (*metrics,)] == ["R@10", "R@2", "MAP@R", "R@1"]

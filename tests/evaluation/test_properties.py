import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from recall_reference import squared_euclidean

from pml_recallk import RecallAtKAccuracyCalculator
from pml_recallk.evaluation import ChunkedKNN

K_VALUES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
RECALL_METRICS = tuple(f"recall_at_{k}" for k in K_VALUES)


@st.composite
def evaluation_sets(draw):
    """(query, query_labels, reference, reference_labels, ref_includes_query): clustered random data."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(2, 40))
    n_classes = draw(st.integers(1, 10))
    dim = draw(st.integers(1, 5))
    labels = rng.integers(0, n_classes, n)
    embeddings = (2 * rng.normal(size=(n_classes, dim))[labels] + rng.normal(size=(n, dim))).astype(np.float32)
    if draw(st.booleans()):
        return embeddings, labels, embeddings, labels, True
    split = draw(st.integers(1, n - 1))
    return embeddings[:split], labels[:split], embeddings[split:], labels[split:], False


def has_no_near_ties(query, reference):
    """True when, for every query, all its distances differ by more than float32 rounding can move them."""
    distances = squared_euclidean(query, reference)
    return all(np.diff(np.sort(row)).min(initial=np.inf) > 1e-4 for row in distances)


def calculator(**kwargs):
    return RecallAtKAccuracyCalculator(K_VALUES, include=RECALL_METRICS, knn_func=ChunkedKNN(backend="torch"), **kwargs)


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=60, deadline=None)
@given(evaluation_sets(), st.booleans())
def test_recall_is_non_decreasing_in_k(data, avg_of_avgs):
    result = calculator(avg_of_avgs=avg_of_avgs).get_accuracy(*data)
    values = [result[name] for name in RECALL_METRICS]
    if math.isnan(values[0]):
        assert all(math.isnan(v) for v in values)
    else:
        assert all(0.0 <= a <= b <= 1.0 for a, b in zip(values, values[1:]))


@settings(max_examples=60, deadline=None)
@given(evaluation_sets(), st.booleans())
def test_recall_at_1_equals_pml_precision_at_1(data, avg_of_avgs):
    query, _, reference, _, ref_includes_query = data
    # Same kNN function asked for the same k: identical neighbours, ties included.
    k = min(max(K_VALUES), len(reference) - int(ref_includes_query))
    knn = ChunkedKNN(backend="torch")
    ours = RecallAtKAccuracyCalculator(K_VALUES, include=("recall_at_1",), avg_of_avgs=avg_of_avgs, knn_func=knn)
    pml = AccuracyCalculator(include=("precision_at_1",), k=k, avg_of_avgs=avg_of_avgs, knn_func=knn)
    assert same(ours.get_accuracy(*data)["recall_at_1"], pml.get_accuracy(*data)["precision_at_1"])


@settings(max_examples=60, deadline=None)
@given(evaluation_sets(), st.randoms(use_true_random=False), st.booleans())
def test_invariant_to_permuting_queries_and_references(data, random, avg_of_avgs):
    query, query_labels, reference, reference_labels, ref_includes_query = data
    assume(has_no_near_ties(query, reference))
    expected = calculator(avg_of_avgs=avg_of_avgs).get_accuracy(*data)
    query_order = random.sample(range(len(query)), len(query))
    if ref_includes_query:  # query i is reference i: permute both together
        permuted = (query[query_order], query_labels[query_order]) * 2 + (True,)
    else:
        reference_order = random.sample(range(len(reference)), len(reference))
        permuted = (
            query[query_order],
            query_labels[query_order],
            reference[reference_order],
            reference_labels[reference_order],
            False,
        )
    result = calculator(avg_of_avgs=avg_of_avgs).get_accuracy(*permuted)
    for name in RECALL_METRICS:
        assert same(result[name], expected[name]), name

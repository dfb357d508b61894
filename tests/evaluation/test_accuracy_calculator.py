import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils import accuracy_calculator as pml_accuracy
from pytorch_metric_learning.utils import inference
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from recall_reference import hit_bounds, per_class, recall_bounds, squared_euclidean

from pml_recallk import RecallAtKAccuracyCalculator
from pml_recallk.evaluation import ChunkedKNN, accuracy_calculator

K_VALUES = (1, 2, 3, 5, 10, 32)
PML_KNN_METRICS = (
    "precision_at_1",
    "r_precision",
    "mean_average_precision_at_r",
    "mean_average_precision",
    "mean_reciprocal_rank",
)


def knn_func(kind):
    if kind == "torch":
        return ChunkedKNN(backend="torch")
    if kind == "torch-chunks-of-7":
        return ChunkedKNN(backend="torch", query_chunk_size=7)
    pytest.importorskip("faiss")
    if kind == "faiss":
        return ChunkedKNN(backend="faiss", query_chunk_size=11)
    return inference.FaissKNN()  # PML's own


KNN_KINDS = ["torch", "torch-chunks-of-7", "faiss", "pml-FaissKNN"]


def class_sizes_to_labels(sizes, rng):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    return labels[rng.permutation(len(labels))]


def gaussian_data(n_classes=40, seed=0, dim=8, max_size=9):
    """Clustered continuous embeddings: ties have probability zero; sizes 1..max_size, so some are lone."""
    rng = np.random.default_rng(seed)
    labels = class_sizes_to_labels(rng.integers(1, max_size + 1, n_classes), rng)
    centres = rng.normal(size=(n_classes, dim))
    embeddings = centres[labels] + 0.9 * rng.normal(size=(len(labels), dim))
    return embeddings.astype(np.float32), labels


def integer_data(n_classes=30, seed=0, dim=3, span=3):
    """Small integer coordinates: float32 distances are exact, so every implementation sees the same exact
    distances, with many exact ties and exact duplicate embeddings (the reference's tie bounds decide)."""
    rng = np.random.default_rng(seed)
    labels = class_sizes_to_labels(rng.integers(1, 8, n_classes), rng)
    embeddings = rng.integers(-span, span + 1, size=(len(labels), dim))
    return embeddings.astype(np.float32), labels


def duplicates_data(seed=0):
    """Groups of exact duplicates with distinct labels, listed first, then one farther positive per label.

    For a duplicate as query, removing another copy instead of the query would keep the query itself as a
    (false) hit. The positives, as queries, see all copies of their group at one tied distance, so only the
    duplicates' recall is unambiguous: ``n_duplicates`` says how many rows they are.
    """
    rng = np.random.default_rng(seed)
    copies, copy_labels, positives, positive_labels = [], [], [], []
    for group in range(12):
        point = rng.normal(size=4) * 10
        for c in range(rng.integers(2, 5)):
            copies.append(point)
            copy_labels.append(group * 10 + c)
            positives.append(point + (1.0 + c + rng.random()) * rng.normal(size=4))
            positive_labels.append(group * 10 + c)
    embeddings = np.array(copies + positives, np.float32)
    return embeddings, np.array(copy_labels + positive_labels)


def n_duplicates(labels):
    return len(labels) // 2


DATA = {"gaussian": gaussian_data, "integer": integer_data, "duplicates": duplicates_data}


# Float data: distances within this of the k-th one count as tied (float32 vs float64 error is ~1e-5).
FLOAT_TOLERANCE = 1e-4


def assert_within(value, bounds, tight=False):
    low, high = bounds
    if math.isnan(low):
        assert math.isnan(value)
        return
    assert low - 1e-12 <= value <= high + 1e-12, (value, bounds)
    if tight:
        assert low == high, "the data should make this value unambiguous"
    assert isinstance(value, float)


def recall_metrics(k_values=K_VALUES):
    return tuple(f"recall_at_{k}" for k in k_values)


@pytest.mark.parametrize("avg_of_avgs", [False, True])
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("kind", KNN_KINDS)
def test_leave_one_out_matches_brute_force(kind, data, avg_of_avgs, device):
    embeddings, labels = DATA[data]()
    calc = RecallAtKAccuracyCalculator(
        K_VALUES, include=recall_metrics(), avg_of_avgs=avg_of_avgs, knn_func=knn_func(kind), device=device
    )
    result = calc.get_accuracy(embeddings, labels)
    distances = squared_euclidean(embeddings, embeddings)
    for k in K_VALUES:
        tolerance = 0.0 if data == "integer" else FLOAT_TOLERANCE
        bounds = recall_bounds(distances, labels, labels, k, True, avg_of_avgs, tolerance)
        # Continuous data leaves no ambiguity; integer data and the positives of duplicates may.
        assert_within(result[f"recall_at_{k}"], bounds, tight=data == "gaussian")


@pytest.mark.parametrize("avg_of_avgs", [False, True])
@pytest.mark.parametrize("data", ["gaussian", "integer"])
@pytest.mark.parametrize("kind", KNN_KINDS)
def test_query_gallery_matches_brute_force(kind, data, avg_of_avgs, device):
    embeddings, labels = DATA[data](seed=1)
    rng = np.random.default_rng(1)
    is_query = rng.random(len(labels)) < 0.4
    query, query_labels = embeddings[is_query], labels[is_query]
    reference, reference_labels = embeddings[~is_query], labels[~is_query]
    assert not set(query_labels) <= set(reference_labels), "some queries must be lone (left out)"
    calc = RecallAtKAccuracyCalculator(
        K_VALUES, include=recall_metrics(), avg_of_avgs=avg_of_avgs, knn_func=knn_func(kind), device=device
    )
    result = calc.get_accuracy(query, query_labels, reference, reference_labels, ref_includes_query=False)
    distances = squared_euclidean(query, reference)
    for k in K_VALUES:
        tolerance = 0.0 if data == "integer" else FLOAT_TOLERANCE
        bounds = recall_bounds(distances, query_labels, reference_labels, k, False, avg_of_avgs, tolerance)
        assert_within(result[f"recall_at_{k}"], bounds, tight=data == "gaussian")


@pytest.mark.parametrize("kind", KNN_KINDS)
def test_queries_first_in_a_larger_reference(kind, device):
    """The tester's layout when the query split is among the reference splits: query i is reference i."""
    embeddings, labels = duplicates_data(seed=2)
    n_query = n_duplicates(labels)
    calc = RecallAtKAccuracyCalculator(K_VALUES, include=recall_metrics(), knn_func=knn_func(kind), device=device)
    result = calc.get_accuracy(embeddings[:n_query], labels[:n_query], embeddings, labels, ref_includes_query=True)
    distances = squared_euclidean(embeddings[:n_query], embeddings)
    for k in K_VALUES:
        bounds = recall_bounds(distances, labels[:n_query], labels, k, True, tolerance=FLOAT_TOLERANCE)
        assert_within(result[f"recall_at_{k}"], bounds, tight=True)


def test_duplicate_of_the_query_is_a_neighbour_not_the_query():
    """Two identical points with different labels: each is the other's nearest neighbour (a miss at k=1),
    whatever order a kNN search lists the two zero distances in."""
    embeddings = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32)
    labels = np.array([0, 1, 0, 1])
    distances = squared_euclidean(embeddings[:2], embeddings)
    for kind in ["torch", "faiss", "pml-FaissKNN"]:
        calc = RecallAtKAccuracyCalculator((1, 2), include=("recall_at_1", "recall_at_2"), knn_func=knn_func(kind))
        result = calc.get_accuracy(embeddings[:2], labels[:2], embeddings, labels, ref_includes_query=True)
        for k in (1, 2):
            bounds = recall_bounds(distances, labels[:2], labels, k, True)
            assert_within(result[f"recall_at_{k}"], bounds, tight=True)
        # Derived by hand: query 0 sees 1 (other label) then 2 (its label); query 1 sees 0, 2, then 3.
        assert result == {"recall_at_1": 0.0, "recall_at_2": 0.5}


@pytest.mark.parametrize("data", ["gaussian", "duplicates"])
def test_return_per_class_matches_brute_force(data):
    embeddings, labels = DATA[data](seed=3)
    n_query = n_duplicates(labels) if data == "duplicates" else len(labels)
    calc = RecallAtKAccuracyCalculator(K_VALUES, include=recall_metrics(), return_per_class=True)
    result = calc.get_accuracy(embeddings[:n_query], labels[:n_query], embeddings, labels, ref_includes_query=True)
    distances = squared_euclidean(embeddings[:n_query], embeddings)
    for k in K_VALUES:
        lowest, highest, has_positive = hit_bounds(distances, labels[:n_query], labels, k, True, FLOAT_TOLERANCE)
        assert np.array_equal(lowest, highest)
        expected = per_class(lowest[has_positive], labels[:n_query][has_positive])
        assert result[f"recall_at_{k}"] == pytest.approx(expected, abs=1e-12)
        assert all(isinstance(v, float) for v in result[f"recall_at_{k}"])


@pytest.mark.parametrize("avg_of_avgs", [False, True])
@pytest.mark.parametrize("pml_k", [None, 4, "max_bin_count"])
@pytest.mark.parametrize("query_gallery", [False, True])
def test_pml_metrics_unchanged(pml_k, avg_of_avgs, query_gallery, device, caplog):
    """Recall needs up to 32 neighbours; PML's metrics must still see exactly the neighbours PML gives them."""
    embeddings, labels = gaussian_data(seed=4, max_size=12)
    if query_gallery:
        args = (embeddings[:150], labels[:150], embeddings[150:], labels[150:], False)
    else:
        args = (embeddings, labels)
    common = dict(k=pml_k, avg_of_avgs=avg_of_avgs, knn_func=ChunkedKNN(backend="torch"), device=device)
    ours = RecallAtKAccuracyCalculator(K_VALUES, include=PML_KNN_METRICS + recall_metrics(), **common)
    # PML cannot compute mean_reciprocal_rank alone; it works next to the other kNN metrics.
    theirs = AccuracyCalculator(include=PML_KNN_METRICS, **common)
    with caplog.at_level(logging.WARNING):
        expected = theirs.get_accuracy(*args)
        got = ours.get_accuracy(*args)
    for name in PML_KNN_METRICS:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    assert got["recall_at_1"] == pytest.approx(expected["precision_at_1"], abs=1e-12)


def test_mean_reciprocal_rank_alone():
    embeddings, labels = gaussian_data(seed=5)
    knn = ChunkedKNN(backend="torch")
    with pytest.raises(TypeError):  # PML's omission from requires_knn(), fixed in the subclass
        AccuracyCalculator(include=("mean_reciprocal_rank",), knn_func=knn).get_accuracy(embeddings, labels)
    expected = AccuracyCalculator(include=("mean_reciprocal_rank", "precision_at_1"), knn_func=knn).get_accuracy(
        embeddings, labels
    )
    got = RecallAtKAccuracyCalculator(include=("mean_reciprocal_rank",), knn_func=knn).get_accuracy(embeddings, labels)
    assert got == {"mean_reciprocal_rank": pytest.approx(expected["mean_reciprocal_rank"], abs=1e-12)}


class SpyKNN:
    """Records the k the calculator asks for."""

    def __init__(self):
        self.inner = ChunkedKNN(backend="torch")
        self.requested = []

    def __call__(self, query, k, reference, ref_includes_query=False):
        self.requested.append(k)
        return self.inner(query, k, reference, ref_includes_query)


@pytest.mark.parametrize(
    "include,pml_k,expected",
    [
        (("recall_at_1", "recall_at_16"), None, lambda n, largest: 16),
        (("recall_at_1",), None, lambda n, largest: 1),
        (("recall_at_16",), 100, lambda n, largest: 16),
        (("precision_at_1",), None, lambda n, largest: 1),
        (("recall_at_1", "mean_average_precision_at_r"), None, lambda n, largest: largest - 1),
        (("recall_at_16", "r_precision"), 5, lambda n, largest: 16),
        (("recall_at_16", "mean_average_precision"), 40, lambda n, largest: 40),
        (("recall_at_16", "mean_reciprocal_rank"), None, lambda n, largest: n - 1),
        (("recall_at_1", "mean_average_precision"), "max_bin_count", lambda n, largest: largest - 1),
        (("NMI",), None, None),
    ],
)
def test_retrieves_only_the_neighbours_needed(include, pml_k, expected):
    embeddings, labels = gaussian_data(seed=6, max_size=30)
    largest = int(np.bincount(labels).max())
    assert largest > 17
    spy = SpyKNN()
    calc = RecallAtKAccuracyCalculator((1, 16), include=include, k=pml_k, knn_func=spy)
    calc.get_accuracy(embeddings, labels)
    assert spy.requested == ([] if expected is None else [expected(len(labels), largest)])


def test_k_larger_than_the_reference_is_capped(caplog):
    embeddings, labels = gaussian_data(n_classes=6, seed=7)
    n = len(labels)
    spy = SpyKNN()
    calc = RecallAtKAccuracyCalculator((1, n - 1, 1000), include=recall_metrics((1, n - 1, 1000)), knn_func=spy)
    with caplog.at_level(logging.WARNING):
        result = calc.get_accuracy(embeddings, labels)
    assert spy.requested == [n - 1]
    assert "1000" in caplog.text
    # The whole database is within the k nearest: every query with a positive has a hit.
    assert result[f"recall_at_{n - 1}"] == 1.0
    assert result["recall_at_1000"] == 1.0
    distances = squared_euclidean(embeddings, embeddings)
    bounds = recall_bounds(distances, labels, labels, 1, True, tolerance=FLOAT_TOLERANCE)
    assert_within(result["recall_at_1"], bounds, tight=True)


def test_every_query_lone_gives_nan():
    embeddings, labels = gaussian_data(seed=8)
    calc = RecallAtKAccuracyCalculator((1, 5), include=("recall_at_1", "recall_at_5", "precision_at_1"))
    result = calc.get_accuracy(embeddings[:10], labels[:10], embeddings[10:], labels[10:] + 1000, False)
    assert all(math.isnan(v) for v in result.values())
    per_class = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",), return_per_class=True)
    result = per_class.get_accuracy(embeddings[:10], labels[:10], embeddings[10:], labels[10:] + 1000, False)
    assert len(result["recall_at_1"]) == len(set(labels[:10])) and all(math.isnan(v) for v in result["recall_at_1"])


def test_label_bookkeeping_matches_pml():
    """The O(N) label counts and lone-query mask equal PML's U × N versions."""
    embeddings, labels = gaussian_data(seed=9)
    query_labels = torch.tensor(labels[:100], dtype=torch.float)
    reference_labels = torch.tensor(labels[100:], dtype=torch.float)
    for ref_includes_query, reference in [
        (False, reference_labels),
        (True, torch.cat([query_labels, reference_labels])),
    ]:
        ours = accuracy_calculator._label_match_counts(query_labels, reference, pml_accuracy.EQUALITY)
        theirs = pml_accuracy.get_label_match_counts(query_labels, reference, pml_accuracy.EQUALITY)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        ours_lone = accuracy_calculator._lone_query_labels(
            query_labels, ours, ref_includes_query, pml_accuracy.EQUALITY
        )
        theirs_lone = pml_accuracy.get_lone_query_labels(
            query_labels, theirs, ref_includes_query, pml_accuracy.EQUALITY
        )
        assert all(torch.equal(a, b) for a, b in zip(ours_lone, theirs_lone))
    assert not ours_lone[1].all() and ours_lone[1].any()


def test_names_are_sql_identifiers_and_values_python_floats():
    embeddings, labels = gaussian_data(seed=10)
    calc = RecallAtKAccuracyCalculator((1, 4, 16), exclude=("NMI", "AMI"))
    result = calc.get_accuracy(embeddings, labels)
    assert {"recall_at_1", "recall_at_4", "recall_at_16"} <= set(result)
    for name, value in result.items():
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
        assert type(value) is float, (name, type(value))


def test_k_values_are_sorted():
    calc = RecallAtKAccuracyCalculator(k_values=[16, 1, np.int64(5)])
    assert calc.k_values == (1, 5, 16) and all(type(k) is int for k in calc.k_values)
    assert {"recall_at_1", "recall_at_5", "recall_at_16"} <= set(calc.get_curr_metrics())


def test_shims_of_release_0_1_are_gone():
    # for_dataset and DATASET_K_VALUES made evaluation import datasets; a benchmark's k live with its dataset class.
    import pml_recallk.evaluation as evaluation

    assert not hasattr(RecallAtKAccuracyCalculator, "for_dataset")
    assert not hasattr(evaluation, "DATASET_K_VALUES") and not hasattr(accuracy_calculator, "DATASET_K_VALUES")


@pytest.mark.parametrize("device", ["cuda", "cuda:7", torch.device("cuda", 3)])
def test_a_gpu_device_this_machine_lacks_is_named(device, monkeypatch):
    # A16: device="cuda" without a GPU raised torch's "Found no NVIDIA driver" from deep inside, device not named.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="device=.cuda.*no GPU.*device='cpu'"):
        RecallAtKAccuracyCalculator(device=device)


def test_a_device_that_is_no_device_is_named():
    with pytest.raises(ValueError, match="device must be a torch.device or its name"):
        RecallAtKAccuracyCalculator(device="gpu0")


def test_cpu_device_by_name_or_object():
    for device in ("cpu", torch.device("cpu")):
        assert RecallAtKAccuracyCalculator(device=device).device == torch.device("cpu")


@pytest.mark.parametrize(
    "k_values,error,match",
    [
        ((0, 1), ValueError, "positive"),
        ((-5,), ValueError, "positive"),
        ((), ValueError, "empty"),
        ((1, 4, 1), ValueError, "duplicates"),  # a repeated k is a typo, as for the loss's k_values
        ((1.5,), TypeError, "ints"),
        ((True,), TypeError, "ints"),
        ("15", TypeError, "sequence"),
        (5, TypeError, "sequence"),
        ({1, 2}, TypeError, "sequence"),
    ],
)
def test_bad_k_values(k_values, error, match):
    with pytest.raises(error, match=match):
        RecallAtKAccuracyCalculator(k_values=k_values)


def test_unknown_metric_in_include():
    with pytest.raises(ValueError):
        RecallAtKAccuracyCalculator(k_values=(1, 5), include=("recall_at_10",))


def bad_inputs():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    nan = x.copy()
    nan[2, 1] = np.nan
    inf = x.copy()
    inf[0, 0] = np.inf
    return [
        ("labels shorter", (x, y[:5]), ValueError, "query_labels"),
        ("reference labels longer", (x, y, x, np.append(y, 3), False), ValueError, "reference_labels"),
        ("embedding sizes differ", (x, y, x[:, :2], y, False), ValueError, "embedding size"),
        ("nan query", (nan, y), ValueError, "NaN"),
        ("inf reference", (x, y, inf, y, False), ValueError, "reference contains NaN or infinite"),
        ("empty query", (x[:0], y[:0], x, y, False), ValueError, "query is empty"),
        ("empty reference", (x, y, x[:0], y[:0], False), ValueError, "reference is empty"),
        ("1-D query", (x[0], y[:1]), ValueError, "2-D"),
        ("reference without labels", (x, y, x, None, False), ValueError, "together"),
        ("list query", (x.tolist(), y), TypeError, "query must be"),
        # PML's own check and message
        ("queries not first in reference", (x, y, x[::-1].copy(), y, True), ValueError, "must be equal to query"),
        ("reference shorter than query", (x, y, x[:3], y[:3], True), ValueError, "first rows of reference"),
        ("huge integer labels", (x, y + 2**25), ValueError, "2\\*\\*24"),
        ("nan labels", (x, np.array([0, 0, 1, np.nan, 2, 2])), ValueError, "query_labels contains NaN"),
    ]


@pytest.mark.parametrize("args,error,match", [case[1:] for case in bad_inputs()], ids=[c[0] for c in bad_inputs()])
def test_bad_input(args, error, match):
    calc = RecallAtKAccuracyCalculator((1, 2), include=("recall_at_1",))
    with pytest.raises(error, match=match):
        calc.get_accuracy(*args)


def test_works_without_faiss(monkeypatch):
    """PML's default calculator fails without faiss; ours falls back to torch kNN and sklearn k-means."""
    monkeypatch.delattr(inference, "faiss", raising=False)
    with pytest.raises(NameError):
        AccuracyCalculator()
    calc = RecallAtKAccuracyCalculator((1, 5))
    assert isinstance(calc.knn_func, ChunkedKNN) and not calc.knn_func.uses_faiss(torch.device("cpu"))
    embeddings, labels = gaussian_data(seed=11)
    result = calc.get_accuracy(embeddings, labels)
    assert {"NMI", "AMI", "mean_average_precision", "recall_at_5"} <= set(result)
    assert 0 <= result["NMI"] <= 1
    distances = squared_euclidean(embeddings, embeddings)
    for k in (1, 5):
        assert_within(
            result[f"recall_at_{k}"],
            recall_bounds(distances, labels, labels, k, True, tolerance=FLOAT_TOLERANCE),
            tight=True,
        )


# ------------------------------------------------------------------------------------------ label forms

LABEL_FORM_METRICS = ("recall_at_1", "recall_at_5", "precision_at_1", "mean_average_precision_at_r")


def _pml_reference(query, query_labels, reference=None, reference_labels=None, ref_includes_query=False):
    """PML's own calculator on plain 1-D integer labels: the reference for its metrics."""
    pml = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count", knn_func=ChunkedKNN()
    )
    return pml.get_accuracy(query, query_labels, reference, reference_labels, ref_includes_query)


def _assert_label_form_result(result, distances, query_ids, reference_ids, ref_includes_query, pml):
    for k in (1, 5):
        bounds = recall_bounds(distances, query_ids, reference_ids, k, ref_includes_query, tolerance=FLOAT_TOLERANCE)
        assert_within(result[f"recall_at_{k}"], bounds, tight=True)
    for name in ("precision_at_1", "mean_average_precision_at_r"):
        assert result[name] == pytest.approx(pml[name], abs=1e-6)


def _check_label_form(given_labels, seed, query_gallery):
    """``given_labels`` (another form of gaussian_data's integer labels) give the references' values."""
    embeddings, labels = gaussian_data(seed=seed)
    calc = RecallAtKAccuracyCalculator((1, 5), include=LABEL_FORM_METRICS, k="max_bin_count")
    if query_gallery:
        # Query and reference are given separately: a label must mean the same class in both.
        q, r = slice(0, 110), slice(110, None)
        result = calc.get_accuracy(embeddings[q], given_labels[q], embeddings[r], given_labels[r], False)
        pml = _pml_reference(embeddings[q], labels[q], embeddings[r], labels[r], False)
        distances = squared_euclidean(embeddings[q], embeddings[r])
        _assert_label_form_result(result, distances, labels[q], labels[r], False, pml)
    else:
        result = calc.get_accuracy(embeddings, given_labels)
        distances = squared_euclidean(embeddings, embeddings)
        _assert_label_form_result(result, distances, labels, labels, True, _pml_reference(embeddings, labels))


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("query_gallery", [False, True])
def test_n_by_1_labels_are_one_label_per_item(as_tensor, query_gallery):
    # PML fails on (N, 1) labels in leave-one-out (a broadcast in get_lone_query_labels); they are flattened.
    labels = gaussian_data(seed=20)[1]
    column = torch.from_numpy(labels)[:, None] if as_tensor else labels[:, None]
    _check_label_form(column, seed=20, query_gallery=query_gallery)


@pytest.mark.parametrize("dtype", ["U", "S", "O"])
@pytest.mark.parametrize("query_gallery", [False, True])
def test_string_labels_are_class_names(dtype, query_gallery):
    names = np.array([f"class-{c:03d}" for c in gaussian_data(seed=22)[1]])
    names = names.astype("S") if dtype == "S" else names.astype(object) if dtype == "O" else names
    _check_label_form(names, seed=22, query_gallery=query_gallery)


def test_rows_of_labels_match_when_every_component_matches():
    # (N, 2) labels under equality: a positive shares both components (PML's multi-dimensional labels).
    embeddings, labels = gaussian_data(seed=21)
    rows = np.stack([labels % 3, labels // 3], axis=1)
    ids = {}
    row_ids = np.array([ids.setdefault(tuple(row), len(ids)) for row in rows.tolist()])
    calc = RecallAtKAccuracyCalculator((1, 5), include=("recall_at_1", "recall_at_5"))
    result = calc.get_accuracy(embeddings, rows)
    distances = squared_euclidean(embeddings, embeddings)
    for k in (1, 5):
        bounds = recall_bounds(distances, row_ids, row_ids, k, True, tolerance=FLOAT_TOLERANCE)
        assert_within(result[f"recall_at_{k}"], bounds, tight=True)


def test_string_labels_per_class_follow_the_sorted_names():
    embeddings, labels = gaussian_data(seed=23)
    names = np.array([f"n{99 - c:02d}" for c in labels])  # name order reverses the integer order
    calc = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",), return_per_class=True)
    per_name = calc.get_accuracy(embeddings, names)["recall_at_1"]
    per_int = calc.get_accuracy(embeddings, labels)["recall_at_1"]
    classes = sorted(c for c in set(labels.tolist()) if np.sum(labels == c) > 1)  # lone classes are left out
    assert len(per_int) == len(classes)
    assert per_name == [per_int[classes.index(c)] for c in sorted(classes, key=lambda c: f"n{99 - c:02d}")]


def test_string_label_errors():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    names = np.array(list("aabbcc"))
    calc = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",))
    with pytest.raises(TypeError, match="both be strings"):
        calc.get_accuracy(x, names, x, np.array([0, 0, 1, 1, 2, 2]), False)
    with pytest.raises(TypeError, match="numpy array"):
        calc.get_accuracy(x, list("aabbcc"))
    custom = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",), label_comparison_fn=lambda a, b: a == b)
    with pytest.raises(TypeError, match="label_comparison_fn"):
        custom.get_accuracy(x, names)


# ------------------------------------------------------------------------------------------ tiny sets


def test_single_item_leave_one_out_is_an_error():
    x = np.zeros((1, 3), np.float32)
    calc = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",))
    with pytest.raises(ValueError, match="single item"):
        calc.get_accuracy(x, np.array([0]))
    with pytest.raises(ValueError, match="single item"):
        calc.get_accuracy(x, np.array([0]), x, np.array([0]), True)


def test_single_query_against_a_separate_reference_is_defined():
    query = np.zeros((1, 2), np.float32)
    reference = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)
    calc = RecallAtKAccuracyCalculator((1, 2), include=("recall_at_1", "recall_at_2"))
    # nearest is reference 0 (label 5, a miss), then reference 1 (label 7, a hit)
    result = calc.get_accuracy(query, np.array([7]), reference, np.array([5, 7]), False)
    assert result == {"recall_at_1": 0.0, "recall_at_2": 1.0}


def test_two_items_leave_one_out():
    x = np.array([[0.0], [1.0]], np.float32)
    calc = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",))
    assert calc.get_accuracy(x, np.array([3, 3])) == {"recall_at_1": 1.0}
    # No query has a positive: NaN with PML's warning, PML's convention for an empty average.
    assert math.isnan(calc.get_accuracy(x, np.array([3, 4]))["recall_at_1"])


# ------------------------------------------------------------------------------------------ PML's helpers


def test_pml_helpers_are_restored_after_a_call_and_after_an_error():
    originals = (pml_accuracy.get_label_match_counts, pml_accuracy.get_lone_query_labels)
    embeddings, labels = gaussian_data(seed=24)
    calc = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",))
    calc.get_accuracy(embeddings, labels)
    assert (pml_accuracy.get_label_match_counts, pml_accuracy.get_lone_query_labels) == originals

    def broken_knn(*args, **kwargs):
        assert pml_accuracy.get_label_match_counts is accuracy_calculator._label_match_counts  # swapped inside
        raise RuntimeError("knn failed")

    failing = RecallAtKAccuracyCalculator((1,), include=("recall_at_1",), knn_func=broken_knn)
    with pytest.raises(RuntimeError, match="knn failed"):
        failing.get_accuracy(embeddings, labels)
    assert (pml_accuracy.get_label_match_counts, pml_accuracy.get_lone_query_labels) == originals


def test_concurrent_calls_give_their_own_results_and_restore_the_helpers():
    originals = (pml_accuracy.get_label_match_counts, pml_accuracy.get_lone_query_labels)
    data = [gaussian_data(seed=30 + i) for i in range(4)]
    calc = RecallAtKAccuracyCalculator((1, 5), include=("recall_at_1", "recall_at_5"))
    alone = [calc.get_accuracy(x, y) for x, y in data]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda xy: calc.get_accuracy(*xy), data * 3))
    assert together == alone * 3
    assert (pml_accuracy.get_label_match_counts, pml_accuracy.get_lone_query_labels) == originals


def test_pml_calculator_meanwhile_gets_pml_results():
    # A plain PML calculator running while ours holds the swap sees functions that return what PML's return.
    embeddings, labels = gaussian_data(seed=25)
    expected = _pml_reference(embeddings, labels)
    with accuracy_calculator._label_bookkeeping_in_linear_memory():
        assert pml_accuracy.get_lone_query_labels is accuracy_calculator._lone_query_labels
        assert _pml_reference(embeddings, labels) == expected

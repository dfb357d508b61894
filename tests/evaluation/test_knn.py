import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from pytorch_metric_learning.utils import inference

from pml_recallk.evaluation import ChunkedKNN

BACKENDS = ["torch", "faiss"]


def make_knn(backend, **kwargs):
    if backend == "faiss":
        pytest.importorskip("faiss")
    return ChunkedKNN(backend=backend, **kwargs)


def random_embeddings(n, dim=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype)


def brute_force_knn(query, reference, k, ref_includes_query, distance_fn, largest):
    """float64, one query at a time, the query's own index removed before a stable sort."""
    indices, values = [], []
    for i, q in enumerate(query.double()):
        scores = np.array([distance_fn(q, r) for r in reference.double()])
        candidates = [j for j in range(len(reference)) if not (ref_includes_query and j == i)]
        order = sorted(candidates, key=lambda j: -scores[j] if largest else scores[j])[:k]
        indices.append(order)
        values.append(scores[order])
    return np.array(indices, dtype=np.int64).reshape(len(query), k), np.array(values).reshape(len(query), k)


def sq_euclidean(q, r):
    return float(((q - r) ** 2).sum())


def euclidean(q, r):
    return float(((q - r) ** 2).sum().sqrt())


def manhattan(q, r):
    return float((q - r).abs().sum())


def cosine(q, r):
    return float(q @ r / (q.norm() * r.norm()))


def dot(q, r):
    return float(q @ r)


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


# (distance, plain reference, whether the reference needs normalised inputs, backends that support it)
DISTANCES = {
    "default squared L2": (None, sq_euclidean, False, BACKENDS),
    "L2 normalised": (LpDistance(), euclidean, True, BACKENDS),
    "L2 power 2 raw": (LpDistance(normalize_embeddings=False, power=2), sq_euclidean, False, BACKENDS),
    "cosine": (CosineSimilarity(), cosine, False, BACKENDS),
    "dot": (DotProductSimilarity(normalize_embeddings=False), dot, False, BACKENDS),
    "L1 (generic path)": (LpDistance(normalize_embeddings=False, p=1), manhattan, False, ["torch"]),
}


@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
@pytest.mark.parametrize("ref_includes_query", [True, False])
@pytest.mark.parametrize("backend,name", [(backend, name) for name, spec in DISTANCES.items() for backend in spec[3]])
def test_matches_brute_force(backend, name, ref_includes_query, chunk, device):
    distance, plain, normalise, _ = DISTANCES[name]
    reference = random_embeddings(40, seed=1).to(device)
    query = reference[:25] if ref_includes_query else random_embeddings(25, seed=2).to(device)
    k = 10
    knn = make_knn(backend, distance=distance, query_chunk_size=chunk)
    distances, indices = knn(query, k, reference, ref_includes_query)
    prepare = unit if normalise else (lambda x: x)
    largest = distance is not None and distance.is_inverted
    expected_indices, expected_values = brute_force_knn(
        prepare(query.cpu()), prepare(reference.cpu()), k, ref_includes_query, plain, largest
    )
    assert distances.shape == indices.shape == (25, k)
    assert indices.dtype == torch.long and indices.device == query.device
    assert np.array_equal(indices.cpu().numpy(), expected_indices)
    np.testing.assert_allclose(distances.cpu().double().numpy(), expected_values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_query_never_returned_among_identical_points(backend, chunk):
    """All points equal: every other point ties with the query, which must still never be returned."""
    x = torch.zeros(9, 3)
    _, indices = make_knn(backend, query_chunk_size=chunk)(x, 8, x, ref_includes_query=True)
    for i, row in enumerate(indices.tolist()):
        assert sorted(row) == [j for j in range(9) if j != i]


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_with_another_index_is_kept(backend):
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0], [1.0, 0.0]])
    distances, indices = make_knn(backend)(x, 1, x, ref_includes_query=True)
    assert indices[:, 0].tolist()[0] == 2 and indices[:, 0].tolist()[2] == 0
    assert distances[0, 0] == 0 and distances[2, 0] == 0


def test_faiss_and_torch_and_pml_faiss_agree():
    pytest.importorskip("faiss")
    x = random_embeddings(300, dim=16, seed=3)
    results = [
        ChunkedKNN(backend="torch", query_chunk_size=64)(x, 50, x, True),
        ChunkedKNN(backend="faiss", query_chunk_size=64)(x, 50, x, True),
        inference.FaissKNN()(x, 50, x, True),
    ]
    for distances, indices in results[1:]:
        assert torch.equal(indices, results[0][1])
        torch.testing.assert_close(distances, results[0][0], rtol=1e-4, atol=1e-4)


def test_float64_stays_float64():
    x = random_embeddings(20, dtype=torch.float64)
    distances, _ = ChunkedKNN(backend="torch")(x, 3, x, True)
    assert distances.dtype == torch.float64


class RecordingDistance(LpDistance):
    """Squared L1 through the generic path, recording each score block's shape."""

    def __init__(self):
        super().__init__(normalize_embeddings=False, p=1)
        self.blocks = []

    def compute_mat(self, query_emb, ref_emb):
        self.blocks.append((len(query_emb), len(ref_emb)))
        return super().compute_mat(query_emb, ref_emb)


@pytest.mark.parametrize("chunk,expected_rows", [(4, [4, 4, 4, 4, 4, 3]), (None, [23])])
def test_memory_is_one_chunk_of_queries_by_the_reference(chunk, expected_rows):
    distance = RecordingDistance()
    x = random_embeddings(23)
    ChunkedKNN(distance, query_chunk_size=chunk, backend="torch")(x, 5, x, True)
    assert distance.blocks == [(rows, 23) for rows in expected_rows]


def test_default_chunk_keeps_the_block_near_128_mib():
    distance = RecordingDistance()
    reference = random_embeddings(2**16, dim=2)
    ChunkedKNN(distance, backend="torch")(reference[:1200], 1, reference, True)
    # 128 MiB of float32 / 65536 references = 512 queries per block.
    assert distance.blocks == [(512, 2**16), (512, 2**16), (176, 2**16)]


@pytest.mark.parametrize(
    "num_reference,k,uses_faiss,expected",
    [
        (60502, 1000, False, 554),  # 128 MiB / (60,502 × 4 bytes)
        (136093, 32, False, 246),
        (2**30, 1, False, 1),
        (60502, 1000, True, 2048),
        (60502, 60501, True, 184),  # 128 MiB / (60,502 × 12 bytes of faiss results)
    ],
)
def test_default_chunk_size(num_reference, k, uses_faiss, expected):
    assert ChunkedKNN.default_chunk_size(num_reference, k, uses_faiss) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_zero_and_empty_query(backend):
    x = random_embeddings(5)
    distances, indices = make_knn(backend)(x, 0, x, True)
    assert distances.shape == indices.shape == (5, 0)
    distances, indices = make_knn(backend)(x[:0], 2, x, False)
    assert distances.shape == indices.shape == (0, 2)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda knn, x: knn(x, 5, x, True), ValueError, "only 4 reference items besides itself"),
        (lambda knn, x: knn(x, 6, x, False), ValueError, "only 5 reference items"),
        (lambda knn, x: knn(x, -1, x, False), ValueError, "k must be >= 0"),
        (lambda knn, x: knn(x, 1.5, x, False), TypeError, "k must be an int"),
        (lambda knn, x: knn(x, 1, x[:3], True), ValueError, "query i to be reference i"),
    ],
)
def test_bad_calls(call, error, match):
    with pytest.raises(error, match=match):
        call(ChunkedKNN(backend="torch"), random_embeddings(5))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"backend": "annoy"}, ValueError, "backend"),
        ({"query_chunk_size": 0}, ValueError, "query_chunk_size"),
        ({"query_chunk_size": 2.5}, TypeError, "query_chunk_size"),
        ({"query_chunk_size": True}, TypeError, "query_chunk_size"),
        ({"backend": None}, TypeError, "backend"),
        ({"distance": "cosine"}, TypeError, "distance"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        ChunkedKNN(**kwargs)


def test_faiss_backend_rejects_unsupported_distance():
    pytest.importorskip("faiss")
    with pytest.raises(ValueError, match="backend='torch'"):
        ChunkedKNN(LpDistance(p=1), backend="faiss")
    # "auto" falls back to torch instead.
    assert not ChunkedKNN(LpDistance(p=1)).uses_faiss(torch.device("cpu"))
    assert ChunkedKNN().uses_faiss(torch.device("cpu"))
    assert not ChunkedKNN().uses_faiss(torch.device("cuda"))


def test_faiss_backend_without_faiss(monkeypatch):
    monkeypatch.delattr(inference, "faiss", raising=False)
    with pytest.raises(ImportError, match="faiss-cpu"):
        ChunkedKNN(backend="faiss")
    assert not ChunkedKNN().uses_faiss(torch.device("cpu"))


# ---- ChunkedKNN as the knn_func of PML's InferenceModel (train_knn / add_to_knn / get_nearest_neighbors)


def inference_model(knn_func):
    torch.manual_seed(0)
    trunk = torch.nn.Linear(6, 4)
    return inference.InferenceModel(trunk, knn_func=knn_func, data_device=torch.device("cpu")), trunk


def plain_embeddings(trunk, x):
    with torch.no_grad():
        return torch.nn.functional.normalize(trunk(x), dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_model_nearest_neighbours_equal_brute_force(backend):
    model, trunk = inference_model(make_knn(backend, query_chunk_size=3))
    database, queries = random_embeddings(40, dim=6, seed=1), random_embeddings(7, dim=6, seed=2)
    model.train_knn(database, batch_size=16)
    distances, indices = model.get_nearest_neighbors(queries, k=5)
    expected_indices, expected_distances = brute_force_knn(
        plain_embeddings(trunk, queries), plain_embeddings(trunk, database), 5, False, sq_euclidean, largest=False
    )
    assert indices.tolist() == expected_indices.tolist()
    np.testing.assert_allclose(distances.numpy(), expected_distances, rtol=1e-4, atol=1e-5)


def test_inference_model_add_to_knn_continues_the_indices():
    database, queries = random_embeddings(30, dim=6, seed=1), random_embeddings(5, dim=6, seed=2)
    whole, _ = inference_model(ChunkedKNN(backend="torch"))
    whole.train_knn(database)
    parts, _ = inference_model(ChunkedKNN(backend="torch"))
    parts.train_knn(database[:12])
    parts.add_to_knn(database[12:20])
    parts.add_to_knn(database[20:])
    assert torch.equal(parts.get_nearest_neighbors(queries, 4)[1], whole.get_nearest_neighbors(queries, 4)[1])
    parts.train_knn(database[:3])  # train replaces what was stored, as FaissKNN.train does
    assert parts.get_nearest_neighbors(queries, 3)[1].max() < 3


def test_inference_model_agrees_with_pml_faiss_knn():
    pytest.importorskip("faiss")
    database, queries = random_embeddings(200, dim=6, seed=4), random_embeddings(9, dim=6, seed=5)
    ours, _ = inference_model(ChunkedKNN(backend="torch", query_chunk_size=4))
    pml, _ = inference_model(inference.FaissKNN(reset_before=False, reset_after=False))
    for model in (ours, pml):
        model.train_knn(database)
    (our_d, our_i), (pml_d, pml_i) = ours.get_nearest_neighbors(queries, 10), pml.get_nearest_neighbors(queries, 10)
    assert torch.equal(our_i, pml_i)
    torch.testing.assert_close(our_d, pml_d, rtol=1e-4, atol=1e-5)


def test_inference_model_save_and_load_knn_func(tmp_path):
    database, queries = random_embeddings(25, dim=6, seed=1), random_embeddings(4, dim=6, seed=2)
    saved, _ = inference_model(ChunkedKNN(backend="torch"))
    saved.train_knn(database)
    saved.save_knn_func(str(tmp_path / "knn.pt"))
    loaded, _ = inference_model(ChunkedKNN(backend="torch"))
    loaded.load_knn_func(str(tmp_path / "knn.pt"))
    assert torch.equal(loaded.get_nearest_neighbors(queries, 6)[1], saved.get_nearest_neighbors(queries, 6)[1])


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda knn: knn(random_embeddings(3), 1), ValueError, "no reference.*train"),
        (lambda knn: knn.save("unused.pt"), ValueError, "nothing to save"),
        (lambda knn: knn.add(torch.zeros(3)), ValueError, "2-D"),
        (lambda knn: (knn.train(torch.zeros(3, 2)), knn.add(torch.zeros(3, 4))), ValueError, "4 dimensions.*has 2"),
        (lambda knn: (knn.train(torch.zeros(3, 2)), knn.reset(), knn(torch.zeros(1, 2), 1)), ValueError, "no ref"),
    ],
)
def test_stored_reference_misuse(call, error, match):
    with pytest.raises(error, match=match):
        call(ChunkedKNN(backend="torch"))


def test_load_rejects_a_foreign_file(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a file written by ChunkedKNN.save"):
        ChunkedKNN().load(tmp_path / "other.pt")

"""The tiled path of RecallKSurrogateLoss: the same numbers and gradients as the dense path, without any Nq×N tensor.

The dense path is itself pinned to the plain float64 reference (tests/references/rsk_reference.py) in
test_recall_k_surrogate_loss.py; here the tiled path is compared with both.
"""

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances, miners, reducers
from rsk_reference import reference_loss
from torch.utils._python_dispatch import TorchDispatchMode

from pml_recallk import RecallKSurrogateLoss, _tiled
from pml_recallk import functional as rsk_functional
from pml_recallk.losses import recall_k_surrogate_loss as rsk_module


def _similarity(name):
    return distances.CosineSimilarity() if name == "cosine" else distances.DotProductSimilarity()


@st.composite
def loss_problems(draw):
    """A batch (labels with any class sizes, some without positives), maybe a separate reference set, and sizes of
    the tiles and chunks, in float64."""
    n = draw(st.integers(1, 24))
    labels = torch.tensor(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    dim = draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    emb = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    ref = None
    if draw(st.booleans()):
        m = draw(st.integers(1, 20))
        ref_labels = torch.tensor(draw(st.lists(st.integers(0, 5), min_size=m, max_size=m)))
        ref = (torch.randn(m, dim, generator=gen, dtype=torch.float64), ref_labels)
    options = {
        "tile_size": draw(st.integers(1, n + 2)),
        "query_chunk_size": draw(st.sampled_from([None, 1, 3])),
        "count_query_in_rank": draw(st.booleans()),
        "distance": _similarity(draw(st.sampled_from(["cosine", "dot"]))),
        "rank_temperature": draw(st.sampled_from([0.01, 0.1])),
        "k_values": draw(st.sampled_from([(1, 2, 4, 8, 16), (1, 3)])),
    }
    return emb, labels, ref, options


def _element_losses_and_grads(path, emb, labels, ref, options):
    loss_fn = RecallKSurrogateLoss(path=path, reducer=reducers.DoNothingReducer(), **options)
    emb = emb.clone().requires_grad_(True)
    inputs = [emb]
    if ref is None:
        out = loss_fn(emb, labels)["loss"]
    else:
        ref_emb = ref[0].clone().requires_grad_(True)
        inputs.append(ref_emb)
        out = loss_fn(emb, labels, ref_emb=ref_emb, ref_labels=ref[1])["loss"]
    losses = out["losses"]
    if not torch.is_tensor(losses):  # no query has a positive: PML's zero loss
        return None, None, None
    weights = torch.linspace(0.5, 1.5, len(losses), dtype=losses.dtype)
    grads = torch.autograd.grad((losses * weights).sum(), inputs)
    return losses.detach(), out["indices"], grads


@settings(max_examples=60, deadline=None)
@given(problem=loss_problems(), keep_tiles=st.booleans())
def test_tiled_equals_dense_in_float64_with_gradients(problem, keep_tiles):
    """Both ways of the tiled backward: with the forward tiles kept (small batches) and recomputed (large ones)."""
    emb, labels, ref, options = problem
    dense = _element_losses_and_grads("dense", emb, labels, ref, options)
    with mock.patch.dict(_tiled._CACHE_ELEMENTS, {"cpu": 1 << 24 if keep_tiles else 0}):
        tiled = _element_losses_and_grads("tiled", emb, labels, ref, options)
    if dense[0] is None:
        assert tiled[0] is None
        return
    torch.testing.assert_close(tiled[0], dense[0], rtol=1e-10, atol=1e-13)
    assert torch.equal(tiled[1], dense[1])
    for got, expected in zip(tiled[2], dense[2]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("count_query_in_rank", [False, True])
@pytest.mark.parametrize("with_ref", [False, True])
def test_tiled_matches_plain_reference(count_query_in_rank, with_ref, dtype):
    gen = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 4, 4, 4, 5])
    emb = torch.randn(len(labels), 5, generator=gen, dtype=torch.float64)
    ref_emb, ref_labels = (
        (torch.randn(9, 5, generator=gen, dtype=torch.float64), labels[:9]) if with_ref else (None,) * 2
    )
    loss_fn = RecallKSurrogateLoss(
        rank_temperature=0.05, count_query_in_rank=count_query_in_rank, path="tiled", tile_size=4, query_chunk_size=2
    )
    kwargs = {"ref_emb": ref_emb.to(dtype), "ref_labels": ref_labels} if with_ref else {}
    got = loss_fn(emb.to(dtype), labels, **kwargs)
    expected = reference_loss(
        emb, labels, ref_emb, ref_labels, rank_temperature=0.05, count_query_in_rank=count_query_in_rank
    )
    assert got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_tiled_soft_ranks_with_excluded_columns_equal_dense():
    """Excluded columns (padded with -1), as SimilarityMixup's database mode and cross-batch memories pass them."""
    gen = torch.Generator().manual_seed(6)
    queries, database = torch.randn(11, 4, generator=gen, dtype=torch.float64), torch.randn(17, 4, generator=gen)
    database = database.double()
    query_labels, database_labels = torch.randint(0, 3, (11,), generator=gen), torch.randint(0, 3, (17,), generator=gen)
    excluded = torch.randint(-1, 17, (11, 4), generator=gen)
    index, valid = rsk_functional.build_positive_index(query_labels, database_labels, excluded_index=excluded)
    grad_out = torch.randn(index.shape, generator=gen, dtype=torch.float64)
    results = []
    for tiled in (False, True):
        q, db = queries.clone().requires_grad_(True), database.clone().requires_grad_(True)
        if tiled:
            ranks = rsk_functional.tiled_soft_ranks(
                q, db, index, valid, excluded_index=excluded, rank_temperature=0.05, tile_size=3, query_chunk_size=2
            )
        else:
            ranks = rsk_functional.soft_ranks(q @ db.T, index, valid, excluded_index=excluded, rank_temperature=0.05)
        ranks.backward(grad_out)
        results.append((ranks.detach(), q.grad, db.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("miner", [miners.MultiSimilarityMiner(epsilon=0.5), miners.TripletMarginMiner(margin=0.5)])
def test_miner_weights_are_the_same_on_both_paths(miner):
    gen = torch.Generator().manual_seed(7)
    emb, labels = torch.randn(24, 6, generator=gen, dtype=torch.float64), torch.arange(6).repeat_interleave(4)
    got = {}
    for path in ("dense", "tiled"):
        e = emb.clone().requires_grad_(True)
        loss = RecallKSurrogateLoss(path=path, tile_size=5)(e, labels, miner(e, labels))
        loss.backward()
        got[path] = (loss.detach(), e.grad)
    torch.testing.assert_close(got["tiled"][0], got["dense"][0], rtol=1e-10, atol=0)
    torch.testing.assert_close(got["tiled"][1], got["dense"][1], rtol=1e-10, atol=1e-13)


def test_tiled_float32_under_autocast_equals_float32():
    gen = torch.Generator().manual_seed(8)
    emb, labels = torch.randn(30, 8, generator=gen), torch.arange(10).repeat_interleave(3)
    grads = []
    for autocast in (False, True):
        e = emb.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = RecallKSurrogateLoss(path="tiled", tile_size=7)(e, labels)
            loss.backward()
        assert loss.dtype == torch.float32
        grads.append((loss.detach(), e.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-7)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any floating-point tensor an op returns (the label comparisons of
    build_positive_index are bool chunks of at most 16 M elements, whatever the batch)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(x) and x.is_floating_point():
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("path,holds_batch_squared", [("tiled", False), ("dense", True)])
def test_tiled_path_never_holds_a_batch_by_batch_tensor(path, holds_batch_squared):
    batch, dim = 240, 8
    emb = torch.randn(batch, dim, requires_grad=True)
    labels = torch.arange(batch // 4).repeat_interleave(4)
    loss_fn = RecallKSurrogateLoss(path=path, tile_size=12, query_chunk_size=3)
    with mock.patch.dict(_tiled._CACHE_ELEMENTS, {"cpu": 0}), _LargestTensor() as record:
        loss_fn(emb, labels).backward()
    # One tile is 12 × 240; one chunk of sigmoids 3 × 3 × 240; the inputs 240 × 8.
    assert (record.largest >= batch * batch) == holds_batch_squared
    if not holds_batch_squared:
        assert record.largest <= 12 * batch


def test_auto_path_is_dense_for_small_and_tiled_for_large_batches(monkeypatch):
    loss_fn = RecallKSurrogateLoss()
    assert loss_fn.resolve_path(4096, 4096) == "dense"
    assert loss_fn.resolve_path(4097, 4097) == "tiled"
    assert RecallKSurrogateLoss(path="dense").resolve_path(10**6, 10**6) == "dense"
    assert RecallKSurrogateLoss(path="tiled").resolve_path(2, 2) == "tiled"
    # The rule is applied in forward: with the threshold lowered, a small batch goes through the tiled function.
    calls = []
    tiled = rsk_functional.recall_k_surrogate_loss_tiled
    monkeypatch.setattr(rsk_module, "AUTO_TILED_MIN_SIMILARITIES", 10)
    monkeypatch.setattr(
        rsk_functional, "recall_k_surrogate_loss_tiled", lambda *a, **k: calls.append(1) or tiled(*a, **k)
    )
    RecallKSurrogateLoss()(torch.randn(8, 3), torch.arange(4).repeat(2))
    assert calls == [1]


def test_other_similarities_keep_the_dense_path():
    class Scaled(distances.BaseDistance):  # an inverted similarity that is not a dot product
        def __init__(self):
            super().__init__(is_inverted=True)

        def compute_mat(self, query_emb, ref_emb):
            return -torch.cdist(query_emb, ref_emb)

    assert RecallKSurrogateLoss(distance=Scaled()).resolve_path(10**5, 10**5) == "dense"
    with pytest.raises(ValueError, match="path='dense'"):
        RecallKSurrogateLoss(distance=Scaled(), path="tiled")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"path": "fast"}, ValueError, "path must be one of"),
        ({"path": 1}, TypeError, "path must be one of"),
        ({"tile_size": 0}, ValueError, "tile_size"),
        ({"tile_size": 2.0}, TypeError, "tile_size"),
    ],
)
def test_bad_path_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RecallKSurrogateLoss(**kwargs)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.tuples(st.integers(1, 20), st.integers(1, 25)),
    seed=st.integers(0, 2**16),
    with_self=st.booleans(),
    excluded_width=st.sampled_from([0, 1, 4]),
    chunk_size=st.sampled_from([None, 1, 3]),
)
def test_positive_index_lists_the_positives_written_out(sizes, seed, with_self, excluded_width, chunk_size):
    """Each query's positives, in increasing column order: same label, not itself, not excluded (any int labels)."""
    gen = torch.Generator().manual_seed(seed)
    num_queries, database_size = sizes
    query_labels = torch.randint(-3, 4, (num_queries,), generator=gen)
    database_labels = torch.randint(-3, 4, (database_size,), generator=gen)
    self_index = torch.randint(0, database_size, (num_queries,), generator=gen) if with_self else None
    excluded = (
        torch.randint(-1, database_size, (num_queries, excluded_width), generator=gen) if excluded_width else None
    )
    index, valid = rsk_functional.build_positive_index(query_labels, database_labels, self_index, excluded, chunk_size)
    expected = []
    for q in range(num_queries):
        outside = ({int(self_index[q])} if with_self else set()) | (
            set(excluded[q].tolist()) if excluded_width else set()
        )
        expected.append([z for z in range(database_size) if database_labels[z] == query_labels[q] and z not in outside])
    assert index.shape[1] == max(1, max(len(p) for p in expected))
    for q, positives in enumerate(expected):
        assert index[q][valid[q]].tolist() == positives
        assert not valid[q, len(positives) :].any() and (index[q][~valid[q]] == 0).all()

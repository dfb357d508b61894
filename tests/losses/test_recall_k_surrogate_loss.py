import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances, losses, miners, reducers, regularizers
from rsk_reference import reference_loss

from pml_recallk import RecallKSurrogateLoss
from pml_recallk import functional as rsk_functional


def random_batch(num_classes, sizes, dim=6, seed=0, shuffle=True):
    """Embeddings and labels with the given class sizes, in a random (or sorted) order."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in zip(range(num_classes), sizes)])
    if shuffle:
        labels = labels[torch.randperm(len(labels), generator=g)]
    # Class centres plus noise, so that ranks are neither all perfect nor random.
    centres = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    emb = centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return emb, labels


@pytest.mark.parametrize("count_query_in_rank", [False, True])
@pytest.mark.parametrize(
    "sizes,k_values,k_temperature",
    [
        ((4, 4, 4, 4, 4), (1, 2, 4, 8, 16), 1.0),
        ((2, 5, 1, 3, 7, 4), (1, 2, 4, 8, 16), 1.0),
        ((3, 1, 6, 2), (1, 3), (0.5, 2.0)),
        ((5, 5, 2), (2,), 0.3),
        ((1, 1, 2), (1, 4, 8), (1.0, 2.0, 4.0)),
    ],
)
def test_matches_plain_reference(sizes, k_values, k_temperature, count_query_in_rank, dtype):
    emb, labels = random_batch(len(sizes), sizes, seed=len(sizes))
    loss_fn = RecallKSurrogateLoss(
        k_values=k_values,
        rank_temperature=0.05,
        k_temperature=k_temperature,
        count_query_in_rank=count_query_in_rank,
    )
    got = loss_fn(emb.to(dtype), labels)
    expected = reference_loss(
        emb,
        labels,
        k_values=k_values,
        rank_temperature=0.05,
        k_temperature=k_temperature,
        count_query_in_rank=count_query_in_rank,
    )
    assert got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("k_margin", [0.0, 0.5, -0.3])
def test_matches_reference_with_default_temperatures_and_margin(k_margin):
    emb, labels = random_batch(6, (4,) * 6, dim=4, seed=3)
    got = RecallKSurrogateLoss(k_margin=k_margin)(emb, labels)
    assert got.item() == pytest.approx(reference_loss(emb, labels, k_margin=k_margin), rel=1e-10)


def test_ref_emb_database_is_all_of_ref(dtype):
    emb, labels = random_batch(4, (3, 2, 4, 1), seed=5)
    ref, ref_labels = random_batch(5, (2, 3, 3, 2, 4), seed=6)
    loss_fn = RecallKSurrogateLoss(rank_temperature=0.05, k_values=(1, 2, 4))
    got = loss_fn(emb.to(dtype), labels, ref_emb=ref.to(dtype), ref_labels=ref_labels)
    expected = reference_loss(emb, labels, ref, ref_labels, k_values=(1, 2, 4), rank_temperature=0.05)
    assert got.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_dot_product_similarity_is_accepted():
    emb, labels = random_batch(3, (3, 3, 3), seed=7)

    def dot(a, b):
        return [[sum(x * y for x, y in zip(u, v)) for v in b] for u in a]

    loss_fn = RecallKSurrogateLoss(
        rank_temperature=0.5, distance=distances.DotProductSimilarity(normalize_embeddings=False)
    )
    assert loss_fn(emb, labels).item() == pytest.approx(
        reference_loss(emb, labels, rank_temperature=0.5, similarity=dot), rel=1e-10
    )


def test_spec_anchor_numbers_for_well_separated_classes():
    """docs/method.md §2 checked numbers: 50 well-separated classes × 4 give loss ≈ 0.29 (query counted) and ≈ 0.11."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(50, 64, generator=g), dim=1)
    emb = centres.repeat_interleave(4, 0) + 0.05 * torch.randn(200, 64, generator=g)
    labels = torch.arange(50).repeat_interleave(4)
    assert RecallKSurrogateLoss(count_query_in_rank=True)(emb, labels).item() == pytest.approx(0.29, abs=0.02)
    assert RecallKSurrogateLoss()(emb, labels).item() == pytest.approx(0.11, abs=0.02)
    assert RecallKSurrogateLoss()(torch.randn(200, 64, generator=g), labels).item() > 0.9


# ---- zero-temperature limit ------------------------------------------------------------------------------------


@st.composite
def distinct_similarity_batches(draw):
    """A batch whose pairwise similarities are all distinct and well separated (gaps ≫ temperatures)."""
    n = draw(st.integers(3, 12))
    labels = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    # Similarities are a random permutation of well separated levels, symmetric with an unused diagonal.
    num_pairs = n * (n - 1) // 2
    order = draw(st.permutations(list(range(num_pairs))))
    sim = torch.zeros(n, n, dtype=torch.float64)
    iu = torch.triu_indices(n, n, 1)
    levels = torch.tensor(order, dtype=torch.float64) / num_pairs
    sim[iu[0], iu[1]] = levels
    sim[iu[1], iu[0]] = levels
    sim.fill_diagonal_(2.0)
    return sim, labels


def plain_exact_recall(sim, labels, k_values, k_margin):
    """Exact limit of docs/method.md §2 by brute force: integer ranks among the query's database, ½ at the boundary."""
    n = len(labels)
    out = {}
    for q in range(n):
        database = [z for z in range(n) if z != q]
        positives = [p for p in database if labels[p] == labels[q]]
        if not positives:
            continue
        ranked = sorted(database, key=lambda z: -float(sim[q, z]))
        rank = {z: i + 1 for i, z in enumerate(ranked)}
        values = []
        for k in k_values:
            hits = sum(1.0 if rank[p] < k + k_margin else 0.5 if rank[p] == k + k_margin else 0.0 for p in positives)
            values.append(min(hits, k) / min(k, len(positives)))
        out[q] = values
    return out


@settings(max_examples=40, deadline=None)
@given(batch=distinct_similarity_batches(), k_margin=st.sampled_from([0.0, 0.5]))
def test_zero_temperature_limit_is_exact_recall(batch, k_margin):
    sim, labels = batch
    k_values = (1, 2, 4, 8)
    self_index = torch.arange(len(labels))
    pos_idx, pos_valid = rsk_functional.build_positive_index(labels, labels, self_index)
    ranks = rsk_functional.soft_ranks(sim, pos_idx, pos_valid, self_index, rank_temperature=1e-5)
    soft = rsk_functional.surrogate_recall_at_k(ranks, pos_valid, k_values, k_temperature=1e-5, k_margin=k_margin)
    expected = plain_exact_recall(sim, labels, k_values, k_margin)
    for q, values in expected.items():
        assert soft[q].tolist() == pytest.approx(values, abs=1e-6)
    # The functional's own exact counterparts agree with the brute force.
    exact = rsk_functional.exact_ranks(sim, pos_idx, pos_valid, self_index)
    zero_t = rsk_functional.zero_temperature_recall_at_k(exact, pos_valid, k_values, k_margin)
    for q, values in expected.items():
        assert zero_t[q].tolist() == pytest.approx(values, abs=1e-12)
    if k_margin == 0.5:  # exactly the normalised recall@k
        normalised = rsk_functional.normalised_recall_at_k(exact, pos_valid, k_values)
        for q, values in expected.items():
            assert normalised[q].tolist() == pytest.approx(values, abs=1e-12)


# ---- properties ------------------------------------------------------------------------------------------------


@st.composite
def labelled_batches(draw):
    n = draw(st.integers(2, 24))
    labels = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    emb = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return emb, torch.tensor(labels)


@settings(max_examples=40, deadline=None)
@given(batch=labelled_batches(), data=st.data())
def test_invariant_to_permutation_relabelling_and_chunking(batch, data):
    emb, labels = batch
    n = len(labels)
    loss_fn = RecallKSurrogateLoss(rank_temperature=0.05)
    base = loss_fn(emb, labels)
    assert 0.0 <= base.item() <= 1.0
    perm = torch.tensor(data.draw(st.permutations(list(range(n)))))
    assert loss_fn(emb[perm], labels[perm]).item() == pytest.approx(base.item(), abs=1e-12)
    mapping = torch.tensor(data.draw(st.permutations(list(range(6))))) * 7 - 3  # any ints, negative too
    assert loss_fn(emb, mapping[labels]).item() == pytest.approx(base.item(), abs=1e-12)
    chunk = data.draw(st.integers(1, n))
    chunked = RecallKSurrogateLoss(rank_temperature=0.05, query_chunk_size=chunk)
    assert chunked(emb, labels).item() == pytest.approx(base.item(), abs=1e-12)


# ---- gradients --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count_query_in_rank", [False, True])
@pytest.mark.parametrize("with_ref", [False, True])
def test_gradcheck(count_query_in_rank, with_ref):
    emb, labels = random_batch(4, (3, 1, 4, 2), dim=4, seed=11)
    emb.requires_grad_(True)
    loss_fn = RecallKSurrogateLoss(
        k_values=(1, 2, 4), rank_temperature=0.1, count_query_in_rank=count_query_in_rank, query_chunk_size=3
    )
    if with_ref:
        ref, ref_labels = random_batch(4, (2, 2, 3, 2), dim=4, seed=12)
        ref.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda e, r: loss_fn(e, labels, ref_emb=r, ref_labels=ref_labels), (emb, ref))
    else:
        assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (emb,))


def test_gradients_match_plain_autograd_and_do_not_depend_on_chunking():
    """Our recomputing backward against autograd through the plain B×P×B formula (float64)."""
    emb, labels = random_batch(6, (4, 3, 5, 4, 2, 6), dim=8, seed=13)
    tau = 0.02

    def plain(e):
        e = F.normalize(e, dim=1)
        sim = e @ e.T
        n = len(labels)
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool)
        db = ~torch.eye(n, dtype=torch.bool)
        diff = (sim[:, None, :] - sim[:, :, None]) / tau  # [q, p, z]
        rank = 1 + (torch.sigmoid(diff) * db[:, None, :] * ~torch.eye(n, dtype=torch.bool)[None]).sum(2)
        recalls = []
        for k in (1, 2, 4, 8, 16):
            hits = (torch.sigmoid(k - rank) * same).sum(1)
            recalls.append(torch.clamp(hits, max=k) / same.sum(1).clamp(max=k))
        return (1 - torch.stack(recalls, 1).mean(1)).mean()

    grads = []
    for chunk in (None, 1, 4, 100):
        e = emb.clone().requires_grad_(True)
        RecallKSurrogateLoss(rank_temperature=tau, query_chunk_size=chunk)(e, labels).backward()
        grads.append(e.grad)
    e = emb.clone().requires_grad_(True)
    plain(e).backward()
    for g in grads:
        torch.testing.assert_close(g, e.grad, rtol=1e-9, atol=1e-12)


def test_saturated_sigmoids_give_finite_gradients():
    emb = torch.tensor([[1.0, 0.0], [1.0, 1e-3], [-1.0, 0.0], [-1.0, 1e-3], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2])
    loss = RecallKSurrogateLoss(rank_temperature=1e-4, k_temperature=1e-3)(emb, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_float32_under_autocast():
    emb, labels = random_batch(5, (4,) * 5, dim=8, seed=14)
    emb32 = emb.float().requires_grad_(True)
    expected = RecallKSurrogateLoss()(emb32, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = RecallKSurrogateLoss()(emb32, labels)
        got_half_input = RecallKSurrogateLoss()(emb32.bfloat16(), labels)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got_half_input.dtype == torch.float32
    assert got_half_input.item() == pytest.approx(expected.item(), abs=0.05)  # only input rounding differs
    got.backward()
    assert torch.isfinite(emb32.grad).all()


# ---- PML contract -------------------------------------------------------------------------------------------------


def test_do_nothing_reducer_returns_element_losses_of_queries_with_positives():
    emb, labels = random_batch(4, (3, 1, 2, 1), seed=15)
    out = RecallKSurrogateLoss(reducer=reducers.DoNothingReducer())(emb, labels)
    info = out["loss"]
    assert info["reduction_type"] == "element"
    has_positive = torch.tensor([int((labels == labels[i]).sum()) > 1 for i in range(len(labels))])
    assert info["indices"].tolist() == torch.where(has_positive)[0].tolist()
    assert len(info["losses"]) == int(has_positive.sum())


def test_batch_without_positives_gives_zero_loss_that_backpropagates():
    emb = torch.randn(5, 4, requires_grad=True)
    loss = RecallKSurrogateLoss()(emb, torch.arange(5))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


@pytest.mark.parametrize("miner", [miners.MultiSimilarityMiner(epsilon=0.5), miners.TripletMarginMiner(margin=0.5)])
def test_miner_weights_queries_like_pml_listwise_losses(miner):
    emb, labels = random_batch(5, (4, 3, 4, 2, 3), seed=16)
    emb = emb.float()
    indices_tuple = miner(emb, labels)
    # PML's convention (FastAP/SmoothAP): each element weighted by how often it appears in the tuple / max count.
    counts = torch.zeros(len(labels))
    for part in indices_tuple:
        for i in part.tolist():
            counts[i] += 1
    weights = counts / counts.max()
    got = RecallKSurrogateLoss(rank_temperature=0.05)(emb, labels, indices_tuple)
    expected = reference_loss(emb, labels, rank_temperature=0.05, weights=weights)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_recordable_attributes_and_embedding_regulariser():
    emb, labels = random_batch(3, (3, 3, 3), seed=17)
    loss_fn = RecallKSurrogateLoss(embedding_regularizer=regularizers.LpRegularizer(), embedding_reg_weight=0.1)
    for name in ("k_values", "rank_temperature", "k_temperature", "k_margin", "count_query_in_rank"):
        assert name in loss_fn._record_these
    plain = RecallKSurrogateLoss()(emb, labels)
    reg = emb.norm(dim=1).mean() * 0.1
    assert loss_fn(emb, labels).item() == pytest.approx(plain.item() + reg.item(), rel=1e-9)


def test_trains_inside_pml_metric_loss_only(tmp_path):
    from pytorch_metric_learning import samplers, trainers
    from pytorch_metric_learning.utils import common_functions as c_f

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(8)
    data = torch.randn(10, 16, generator=g)[labels] + 0.5 * torch.randn(80, 16, generator=g)
    dataset = c_f.EmbeddingDataset(data, labels)  # (input, label) pairs
    trunk = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    loss_fn = RecallKSurrogateLoss()
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-2)},
        batch_size=40,
        loss_funcs={"metric_loss": loss_fn},
        mining_funcs={"tuple_miner": miners.MultiSimilarityMiner()},
        dataset=dataset,
        sampler=samplers.MPerClassSampler(labels, m=4, batch_size=40, length_before_new_iter=400),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
    )
    before = RecallKSurrogateLoss()(trunk(data), labels).item()
    trainer.train(num_epochs=3)
    after = RecallKSurrogateLoss()(trunk(data), labels).item()
    assert after < before


def test_works_as_cross_batch_memory_style_reference():
    """Queries from the batch, database from a memory bank of detached embeddings (as XBM feeds losses)."""
    emb, labels = random_batch(4, (3, 3, 3, 3), seed=18)
    memory, memory_labels = random_batch(4, (5, 5, 5, 5), seed=19)
    emb.requires_grad_(True)
    loss = RecallKSurrogateLoss(rank_temperature=0.05)(emb, labels, ref_emb=memory, ref_labels=memory_labels)
    loss.backward()
    assert emb.grad.abs().sum() > 0
    assert loss.item() == pytest.approx(
        reference_loss(emb.detach(), labels, memory, memory_labels, rank_temperature=0.05), rel=1e-10
    )


# ---- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"k_values": ()}, ValueError, "k_values is empty"),
        ({"k_values": (1, 0)}, ValueError, "positive"),
        ({"k_values": (1, 2.5)}, TypeError, "ints"),
        ({"k_values": 4}, TypeError, "sequence"),
        ({"k_values": (1, 1)}, ValueError, "duplicates"),
        ({"rank_temperature": 0.0}, ValueError, "rank_temperature"),
        ({"rank_temperature": -1}, ValueError, "rank_temperature"),
        ({"k_temperature": 0.0}, ValueError, "k_temperature"),
        ({"k_temperature": (1.0, 2.0)}, ValueError, "one per k"),
        ({"k_temperature": "1"}, TypeError, "k_temperature"),
        ({"query_chunk_size": 0}, ValueError, "query_chunk_size"),
        ({"count_query_in_rank": 1}, TypeError, "count_query_in_rank"),
        ({"distance": distances.LpDistance()}, ValueError, "CosineSimilarity"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RecallKSurrogateLoss(**kwargs)


@pytest.mark.parametrize(
    "emb,labels,error,match",
    [
        (torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), torch.tensor([0, 0]), ValueError, "NaN or inf"),
        (torch.tensor([[float("inf"), 0.0], [1.0, 0.0]]), torch.tensor([0, 0]), ValueError, "NaN or inf"),
        (torch.randn(3, 2), torch.tensor([0, 0]), ValueError, "one label per row"),
        (torch.randn(2, 2), torch.tensor([[0], [0]]), ValueError, "1-D"),
        (torch.randn(2, 2), torch.tensor([0.0, 1.0]), TypeError, "integer"),
        (torch.randn(0, 2), torch.zeros(0, dtype=torch.long), ValueError, "empty"),
        (torch.randn(2), torch.tensor([0, 0]), ValueError, "2-D"),
    ],
)
def test_bad_inputs(emb, labels, error, match):
    with pytest.raises(error, match=match):
        RecallKSurrogateLoss()(emb, labels)


def test_ref_emb_without_ref_labels():
    with pytest.raises(ValueError, match="ref_labels"):
        RecallKSurrogateLoss()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), ref_emb=torch.randn(5, 3))


def test_labels_required():
    with pytest.raises(ValueError, match="labels"):
        RecallKSurrogateLoss()(torch.randn(4, 3))


def test_recorded_by_pml_loss_classes_list():
    # A PML user finds it where PML's own losses are; our class is a BaseMetricLossFunction.
    assert isinstance(RecallKSurrogateLoss(), losses.BaseMetricLossFunction)


def test_pml_logging_hooks_record_the_hyper_parameters(tmp_path):
    """HookContainer hands every recordable attribute of the loss to record-keeper, which fails on tuples
    (so k_values and per-k temperatures are stored as lists) and writes the scalars to its tables."""
    from pytorch_metric_learning.utils import logging_presets

    record_keeper, _, _ = logging_presets.get_record_keeper(str(tmp_path / "logs"))
    loss_fn = RecallKSurrogateLoss(k_values=(1, 4), k_temperature=(1.0, 2.0), calibration_weight=0.25)
    emb, labels = random_batch(3, (3, 3, 3), seed=20)
    loss_fn(emb, labels)
    record_keeper.update_records({"metric_loss": loss_fn}, global_iteration=1)
    record_keeper.save_records()
    table = (tmp_path / "logs" / "metric_loss_RecallKSurrogateLoss.csv").read_text()
    # ~iteration~, rank_temperature, k_margin, count_query_in_rank, calibration_weight
    assert table.splitlines()[1] == "1,0.01,0.0,False,0.25"


@pytest.mark.parametrize("path", ["dense", "tiled"])
def test_similarities_that_overflow_raise_instead_of_a_silent_nan(path):
    emb, labels = random_batch(3, (3, 3, 3), seed=21)
    loss_fn = RecallKSurrogateLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False), path=path)
    assert torch.isfinite(loss_fn(emb.float(), labels))
    with pytest.raises(ValueError, match="similarities overflow"):
        loss_fn(emb.float() * 1e20, labels)  # finite embeddings, infinite dot products in float32


@pytest.mark.parametrize("path", ["dense", "tiled"])
def test_nan_embeddings_raise_naming_the_cause(path):
    emb, labels = random_batch(3, (3, 3, 3), seed=22)
    emb[4, 1] = float("nan")
    with pytest.raises(ValueError, match="embeddings contain NaN or inf.*stop_on_nan=False"):
        RecallKSurrogateLoss(path=path)(emb, labels)


@pytest.mark.parametrize("distance", [distances.DotProductSimilarity(power=2), distances.CosineSimilarity(power=3)])
def test_a_similarity_raised_to_a_power_is_refused(distance):
    """s² ranks a similarity of −0.9 above one of 0.5, and SiMix mixes similarities linearly: power must be 1."""
    with pytest.raises(ValueError, match="power=1"):
        RecallKSurrogateLoss(distance=distance)


@pytest.mark.parametrize(
    "ref_emb,ref_labels,error,match",
    [
        (torch.randn(5, 3, dtype=torch.float64), [0, 0, 1, 1, 2], TypeError, "ref_labels must be a 1-D torch tensor"),
        (torch.randn(5, 3, dtype=torch.float64), np.array([0, 0, 1, 1, 2]), TypeError, "torch.as_tensor\\(ref_labels"),
        (torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 0, 1]), ValueError, "ref_labels has 3 entries"),
        (torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2]), ValueError, "embedding size 4"),
        (torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 2]), TypeError, "ref_emb is torch.float32"),
        ([[0.0, 1.0, 0.0]], torch.tensor([0]), TypeError, "ref_emb must be a 2-D torch tensor"),
    ],
    ids=["labels_list", "labels_numpy", "labels_length", "embedding_size", "dtype", "ref_emb_list"],
)
def test_bad_reference_sets_name_the_argument(ref_emb, ref_labels, error, match):
    emb, labels = random_batch(2, (2, 2), dim=3, seed=23)
    with pytest.raises(error, match=match):
        RecallKSurrogateLoss()(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], np.array([0, 0, 1, 1])], ids=["list", "numpy"])
def test_labels_that_are_not_tensors_name_the_argument(labels):
    with pytest.raises(TypeError, match="labels must be a 1-D torch tensor"):
        RecallKSurrogateLoss()(torch.randn(4, 3), labels)


def test_ref_labels_without_ref_emb():
    with pytest.raises(ValueError, match="ref_labels was given without ref_emb"):
        RecallKSurrogateLoss()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), ref_labels=torch.tensor([0, 1]))

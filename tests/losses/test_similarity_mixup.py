import itertools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances, losses, reducers
from rsk_reference import per_query_recalls

from pml_recallk import RecallKSurrogateLoss, SimilarityMixup


def batch(sizes, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    centres = torch.randn(len(sizes), dim, generator=g, dtype=torch.float64)
    return centres[labels] + 0.9 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64), labels


def materialised_reference(embeddings, labels, alpha, mode, rank_temperature, k_values=(1, 2, 4, 8, 16)):
    """docs/method.md §3 written plainly: build every virtual embedding, then apply §2 with explicit databases."""
    emb = [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in embeddings.double().tolist()]
    labels = [int(x) for x in labels]
    items, item_labels, parents = list(emb), list(labels), [()] * len(emb)
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        for i, j in itertools.combinations(members, 2):
            items.append([alpha * a + (1 - alpha) * b for a, b in zip(emb[i], emb[j])])
            item_labels.append(c)
            parents.append((i, j))
    sim = [[sum(a * b for a, b in zip(u, v)) for v in items] for u in items]
    n_real, n_all = len(emb), len(items)
    if mode == "queries_and_database":
        queries = range(n_all)
        databases = [[z for z in range(n_all) if z != q] for q in queries]
    else:
        queries = range(n_real)
        databases = [[z for z in range(n_all) if z != q and q not in parents[z]] for q in queries]
    recalls = per_query_recalls(
        [sim[q] for q in queries],
        [item_labels[q] for q in queries],
        item_labels,
        databases,
        list(queries),
        k_values,
        rank_temperature,
        [1.0] * len(k_values),
        0.0,
    )
    losses_ = [1 - sum(r) / len(r) for r in recalls.values()]
    return sum(losses_) / len(losses_), n_all - n_real


@pytest.mark.parametrize("path", ["dense", "tiled"])
@pytest.mark.parametrize("mode", ["queries_and_database", "database_only"])
@pytest.mark.parametrize("alpha", [0.3, 0.0, 1.0])
@pytest.mark.parametrize("sizes", [(4, 4, 4), (2, 5, 1, 3), (3, 1, 1)])
def test_fixed_alpha_matches_materialised_reference(mode, alpha, sizes, path, dtype):
    emb, labels = batch(sizes, seed=sum(sizes))
    loss = RecallKSurrogateLoss(rank_temperature=0.05, path=path, tile_size=5, query_chunk_size=2)
    mixup = SimilarityMixup(loss, mode=mode, alpha_range=(alpha, alpha))
    got = mixup(emb.to(dtype), labels)
    expected, num_virtual = materialised_reference(emb, labels, alpha, mode, rank_temperature=0.05)
    assert mixup.num_virtual == num_virtual == sum(n * (n - 1) // 2 for n in sizes)
    assert got.item() == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_extreme_alpha_in_official_mode_is_the_plain_loss_on_duplicated_items(alpha):
    """α ∈ {0, 1} mixes nothing: every virtual item is a copy of a parent, so the official mode equals the plain
    loss on the batch with those copies appended (exact duplicates tie, σ(0) = ½ each)."""
    emb, labels = batch((3, 4, 2), seed=1)
    unit = torch.nn.functional.normalize(emb, dim=1)
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    copies = torch.tensor([i if alpha == 1.0 else j for i, j in pairs])
    plain = RecallKSurrogateLoss(rank_temperature=0.05)
    expected = plain(torch.cat([unit, unit[copies]]), torch.cat([labels, labels[copies]]))
    mixed = SimilarityMixup(RecallKSurrogateLoss(rank_temperature=0.05), alpha_range=(alpha, alpha))(emb, labels)
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("path", ["dense", "tiled"])
@pytest.mark.parametrize("mode", ["queries_and_database", "database_only"])
@pytest.mark.parametrize("count_query_in_rank", [False, True])
def test_gradcheck_flows_to_both_parents(mode, count_query_in_rank, path):
    emb, labels = batch((3, 2, 3, 1), dim=4, seed=2)
    emb.requires_grad_(True)
    loss = RecallKSurrogateLoss(
        k_values=(1, 2, 4), rank_temperature=0.2, count_query_in_rank=count_query_in_rank, path=path, tile_size=3
    )
    mixup = SimilarityMixup(loss, mode=mode, alpha_range=(0.35, 0.35))
    assert torch.autograd.gradcheck(lambda e: mixup(e, labels), (emb,))


def test_gradient_reaches_parents_through_the_virtual_item_only():
    """With one pair (classes of 1 otherwise), the database-mode gradient of query 2 reaches items 0 and 1 only via
    the virtual item, weighted α and 1−α: it matches autograd through the materialised virtual embedding."""
    emb, labels = batch((2, 1, 1, 1), dim=4, seed=3)
    alpha = 0.3
    # The only query with a positive in database mode is neither parent... so add one more item of class 0.
    emb = torch.cat([emb, emb[labels == 0][:1] + 0.1])
    labels = torch.cat([labels, torch.tensor([0])])
    e1 = emb.clone().requires_grad_(True)
    loss = SimilarityMixup(RecallKSurrogateLoss(rank_temperature=0.1), mode="database_only", alpha_range=(alpha, alpha))
    loss(e1, labels).backward()
    # Materialised: database columns are the real items plus each virtual item (a, b) built from unit vectors.
    e2 = emb.clone().requires_grad_(True)
    unit = torch.nn.functional.normalize(e2, dim=1)
    members = torch.where(labels == 0)[0].tolist()
    pairs = list(itertools.combinations(members, 2))
    virtual = torch.stack([alpha * unit[a] + (1 - alpha) * unit[b] for a, b in pairs])
    sim = unit @ torch.cat([unit, virtual]).T
    n = len(labels)
    total, count = 0.0, 0
    for q in range(n):
        database = [z for z in range(n + len(pairs)) if z != q and (z < n or q not in pairs[z - n])]
        positives = [z for z in database if (labels[z] if z < n else 0) == labels[q]]
        if not positives:
            continue
        recalls = []
        ranks = {
            p: 1 + sum(torch.sigmoid((sim[q, z] - sim[q, p]) / 0.1) for z in database if z != p) for p in positives
        }
        for k in (1, 2, 4, 8, 16):
            hits = sum(torch.sigmoid(k - ranks[p]) for p in positives)
            recalls.append(torch.clamp(hits, max=k) / min(k, len(positives)))
        total = total + 1 - sum(recalls) / 5
        count += 1
    (total / count).backward()
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-9, atol=1e-12)


# ---- pairs ------------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(labels=st.lists(st.integers(-3, 6), min_size=1, max_size=40), cap=st.one_of(st.none(), st.integers(1, 8)))
def test_number_of_virtual_items(labels, cap):
    labels = torch.tensor(labels)
    mixup = SimilarityMixup(RecallKSurrogateLoss(), max_pairs_per_class=cap)
    counts = torch.unique(labels, return_counts=True)[1].tolist()
    expected = sum(n * (n - 1) // 2 if cap is None else min(cap, n * (n - 1) // 2) for n in counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixup(torch.randn(len(labels), 4), labels)
    assert mixup.num_virtual == expected


def test_capped_pairs_are_same_class_distinct_and_vary_between_steps():
    from pml_recallk.losses.similarity_mixup import same_class_pairs

    labels = torch.tensor([2, 0, 2, 1, 2, 0, 2, 2, 0, 1])
    seen = set()
    for _ in range(20):
        first, second = same_class_pairs(labels, max_pairs_per_class=2)
        pairs = list(zip(first.tolist(), second.tolist()))
        assert all(labels[i] == labels[j] and i < j for i, j in pairs)
        assert len(set(pairs)) == len(pairs)
        per_class = {}
        for i, _ in pairs:
            per_class[int(labels[i])] = per_class.get(int(labels[i]), 0) + 1
        assert per_class == {0: 2, 1: 1, 2: 2}
        seen.add(tuple(pairs))
    assert len(seen) > 1


def test_alpha_is_drawn_per_pair_and_step():
    emb, labels = batch((4, 4), seed=4)
    mixup = SimilarityMixup(RecallKSurrogateLoss(), alpha_range=(0.2, 0.8))
    values = {round(mixup(emb, labels).item(), 12) for _ in range(5)}
    assert len(values) == 5


# ---- modes, wrapping and PML ----------------------------------------------------------------------------------


def test_eval_mode_is_exactly_the_wrapped_loss():
    emb, labels = batch((4, 4, 4), seed=5)
    inner = RecallKSurrogateLoss()
    mixup = SimilarityMixup(inner)
    assert mixup(emb, labels).item() != pytest.approx(inner(emb, labels).item())
    mixup.eval()
    assert mixup(emb, labels).item() == inner(emb, labels).item()
    mixup.train()
    assert mixup(emb, labels).item() != pytest.approx(inner(emb, labels).item())


def test_other_pml_loss_in_official_mode_sees_the_materialised_batch():
    emb, labels = batch((3, 3, 2), seed=6)
    inner = losses.ContrastiveLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False))
    mixup = SimilarityMixup(inner, alpha_range=(0.25, 0.25))
    unit = torch.nn.functional.normalize(emb, dim=1)
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    virtual = torch.stack([0.25 * unit[i] + 0.75 * unit[j] for i, j in pairs])
    expected = inner(torch.cat([unit, virtual]), torch.cat([labels, labels[[i for i, _ in pairs]]]))
    assert mixup(emb, labels).item() == pytest.approx(expected.item(), rel=1e-12)


def test_do_nothing_reducer_and_miner_weights_pass_through():
    emb, labels = batch((4, 4), seed=7)
    mixup = SimilarityMixup(RecallKSurrogateLoss(reducer=reducers.DoNothingReducer()), mode="database_only")
    out = mixup(emb, labels)
    assert out["loss"]["reduction_type"] == "element" and len(out["loss"]["losses"]) == 8


def test_inside_pml_metric_loss_only():
    from pytorch_metric_learning import samplers, trainers
    from pytorch_metric_learning.utils import common_functions as c_f

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(8)
    data = torch.randn(6, 12, generator=g)[labels] + 0.5 * torch.randn(48, 12, generator=g)
    trunk = torch.nn.Linear(12, 8)
    mixup = SimilarityMixup(RecallKSurrogateLoss(), mode="database_only")
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-2)},
        batch_size=24,
        loss_funcs={"metric_loss": mixup},
        dataset=c_f.EmbeddingDataset(data, labels),
        sampler=samplers.MPerClassSampler(labels, m=4, batch_size=24, length_before_new_iter=240),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
    )
    trainer.train(num_epochs=2)
    assert mixup.training and mixup.num_virtual == 6 * 6  # 6 classes × C(4, 2) per batch of 24


# ---- bad input ----------------------------------------------------------------------------------------------------


def test_no_pairs_warns_once_and_is_the_plain_loss():
    emb = torch.randn(5, 4)
    labels = torch.arange(5)
    mixup = SimilarityMixup(RecallKSurrogateLoss())
    with pytest.warns(UserWarning, match="nothing to mix"):
        out = mixup(emb, labels)
    assert out.item() == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixup(emb, labels)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"mode": "queries"}, ValueError, "mode"),
        ({"alpha_range": (-0.1, 0.5)}, ValueError, "alpha_range"),
        ({"alpha_range": (0.6, 0.5)}, ValueError, "alpha_range"),
        ({"alpha_range": (0.0, 1.5)}, ValueError, "alpha_range"),
        ({"alpha_range": 0.5}, TypeError, "alpha_range"),
        ({"max_pairs_per_class": 0}, ValueError, "max_pairs_per_class"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SimilarityMixup(RecallKSurrogateLoss(), **kwargs)


def test_refuses_losses_that_cannot_take_virtual_items():
    with pytest.raises(ValueError, match="DotProductSimilarity"):
        SimilarityMixup(losses.ContrastiveLoss())
    with pytest.raises(ValueError, match="mode='database_only' needs RecallKSurrogateLoss"):
        SimilarityMixup(
            losses.ContrastiveLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False)),
            mode="database_only",
        )


@pytest.mark.parametrize("old", ["official", "database"])
def test_the_mode_names_of_release_0_1_are_refused_by_the_library(old):
    """Only a config file's old spelling is translated (experiments.config.upgrade_tables)."""
    with pytest.raises(ValueError, match="mode must be one of"):
        SimilarityMixup(RecallKSurrogateLoss(), mode=old)


def test_refuses_a_similarity_that_mixing_is_not_linear_in():
    with pytest.raises(ValueError, match="power=1"):
        SimilarityMixup(RecallKSurrogateLoss(distance=distances.CosineSimilarity(power=2)))


def test_bad_inputs():
    mixup = SimilarityMixup(RecallKSurrogateLoss())
    with pytest.raises(ValueError, match="NaN"):
        mixup(torch.tensor([[float("nan"), 1.0], [1.0, 0.0]]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="one label per row"):
        mixup(torch.randn(3, 2), torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="integer"):
        mixup(torch.randn(2, 2), torch.tensor([0.0, 0.0]))


def test_pml_logging_hooks_record_the_number_of_virtual_items(tmp_path):
    from pytorch_metric_learning.utils import logging_presets

    record_keeper, _, _ = logging_presets.get_record_keeper(str(tmp_path))
    mixup = SimilarityMixup(RecallKSurrogateLoss(), mode="database_only")
    mixup(torch.randn(12, 4), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4]))
    record_keeper.update_records({"metric_loss": mixup}, global_iteration=1)
    record_keeper.save_records()
    rows = (tmp_path / "metric_loss_SimilarityMixup.csv").read_text().splitlines()
    assert rows == ["~iteration~,mode,num_virtual", "1,database_only,11"]  # 3 + 1 + 6 + 0 + 1 pairs

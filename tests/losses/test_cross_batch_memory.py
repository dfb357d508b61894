"""CrossBatchMemory with RS@k (and SiMix) against a plain float64 reference with explicit databases, and with
PML's losses against PML's own CrossBatchMemory."""

import csv
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners, reducers
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils import logging_presets
from torch import nn

import pml_recallk
from pml_recallk import CrossBatchMemory, MemoryEfficientTrainer, RecallKSurrogateLoss, SimilarityMixup

K_VALUES = (1, 2, 4)
TAU = 0.1


def reference_loss(queries, query_labels, items, item_labels, databases, weights=None):
    """docs/method.md §2 written plainly: loops over queries and positives, an explicit database per query.

    ``items`` is a list of (d,) float64 tensors, the vectors the similarity sees (unit vectors for real items);
    s(q, z) = q̂ · item_z. ``databases[q]`` lists the items in query q's database. Differentiable w.r.t. ``queries``
    (Q, d). Returns (mean loss, {q: ℓ(q)})."""
    per_query = {}
    for q in range(len(queries)):
        query = queries[q] / queries[q].norm()
        sim = {z: torch.dot(query, items[z]) for z in databases[q]}
        positives = [z for z in databases[q] if item_labels[z] == query_labels[q]]
        if not positives:
            continue
        ranks = {p: 1 + sum(torch.sigmoid((sim[z] - sim[p]) / TAU) for z in databases[q] if z != p) for p in positives}
        recalls = [
            torch.clamp(
                sum(torch.sigmoid(torch.as_tensor(k, dtype=torch.float64) - ranks[p]) for p in positives), max=k
            )
            / min(k, len(positives))
            for k in K_VALUES
        ]
        per_query[q] = (1 - sum(recalls) / len(K_VALUES)) * (1.0 if weights is None else weights[q])
    if not per_query:
        return queries.sum() * 0.0, per_query  # PML's zero loss: no query has a positive
    # + 0·Σ queries: a loss that is constant here (e.g. one positive, no negative) still has a (zero) gradient.
    return sum(per_query.values()) / len(per_query) + queries.sum() * 0.0, per_query


class ReferenceQueue:
    """What the memory should hold: the last ``memory_size`` items enqueued, with their ids and the step and row
    each was enqueued at. The loss does not depend on the order of the database, so no queue index is needed."""

    def __init__(self, memory_size):
        self.memory_size, self.entries = memory_size, []

    def enqueue(self, embeddings, labels, ids, step):
        for row in range(len(embeddings)):
            self.entries.append((embeddings[row].detach().double(), int(labels[row]), int(ids[row]), step, row))
        self.entries = self.entries[-self.memory_size :]

    def items(self, step, live=None):
        """Unit vectors of the entries; those enqueued at ``step`` are rows of ``live`` (the batch's embeddings,
        with gradient) unless ``live`` is None (detached copies)."""
        vectors = [live[row] if live is not None and z_step == step else e for e, _, _, z_step, row in self.entries]
        return [v / v.norm() for v in vectors]

    def loss(self, queries, query_labels, query_ids, step, own_entries, exclude_stale, weights=None, live=None):
        items = self.items(step, live)
        labels = [e[1] for e in self.entries]
        databases = []
        for q in range(len(queries)):
            databases.append(
                [
                    z
                    for z, (_, _, sample_id, z_step, z_row) in enumerate(self.entries)
                    if not (own_entries and z_step == step and z_row == q)
                    and not (exclude_stale and sample_id == int(query_ids[q]))
                ]
            )
        return reference_loss(queries, [int(y) for y in query_labels], items, labels, databases, weights)


def make_batch(batch_size, dim, num_classes, num_ids, seed, dtype, device):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_ids, (batch_size,), generator=g)
    labels = ids % num_classes  # one label per id, as for images of a data set
    centres = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    emb = centres[labels] + 0.8 * torch.randn(batch_size, dim, generator=g, dtype=torch.float64)
    return emb.to(device, dtype).requires_grad_(), labels.to(device), ids.to(device)


def tolerance(dtype):
    return {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}


def rsk():
    return RecallKSurrogateLoss(k_values=K_VALUES, rank_temperature=TAU)


def check_step(memory, queue, emb, labels, ids, step, use_ids, dtype):
    got = memory(emb, labels, sample_ids=ids if use_ids else None)
    (got_grad,) = torch.autograd.grad(got, emb)
    queue.enqueue(emb, labels, ids, step)
    queries = emb.detach().double().requires_grad_()
    live = None if memory.detach_batch else queries
    expected, _ = queue.loss(queries, labels, ids, step, own_entries=True, exclude_stale=use_ids, live=live)
    (expected_grad,) = torch.autograd.grad(expected, queries)
    torch.testing.assert_close(got.double(), expected.detach(), **tolerance(dtype))
    torch.testing.assert_close(got_grad.double(), expected_grad, **tolerance(dtype))
    assert got.dtype == dtype


@pytest.mark.parametrize("detach_batch", [False, True], ids=["live_batch", "detached_batch"])
@pytest.mark.parametrize("use_ids", [False, True], ids=["no_ids", "sample_ids"])
@pytest.mark.parametrize("memory_size", [6, 16, 18], ids=lambda m: f"memory{m}")
def test_values_and_gradients_match_reference_before_and_after_wrap_around(
    memory_size, use_ids, detach_batch, dtype, device
):
    """Batches of 6 into memories of 6 (the batch only), 16 (wraps mid-batch) and 18 (fills exactly); ids recur
    across steps, so with sample_ids the stale copies of a query's image must leave its database."""
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=memory_size, detach_batch=detach_batch)
    queue = ReferenceQueue(memory_size)
    for step in range(5):
        emb, labels, ids = make_batch(6, 3, num_classes=3, num_ids=9, seed=step, dtype=dtype, device=device)
        check_step(memory, queue, emb, labels, ids, step, use_ids, dtype)
    assert memory.has_been_filled and memory.queue_idx == 30 % memory_size


@pytest.mark.parametrize("use_simix", [False, True], ids=["rsk", "simix"])
def test_tiled_path_matches_reference(use_simix, device):
    """The loss's tiled path (similarities recomputed tile by tile) gets the same memory, exclusions and mixing."""
    loss = RecallKSurrogateLoss(k_values=K_VALUES, rank_temperature=TAU, path="tiled", tile_size=2)
    loss = SimilarityMixup(loss, mode="database_only", alpha_range=(0.3, 0.3)) if use_simix else loss
    memory = CrossBatchMemory(loss=loss, embedding_size=3, memory_size=10)
    queue = ReferenceQueue(10)
    for step in range(4):
        emb, labels, ids = make_batch(
            6, 3, num_classes=2, num_ids=8, seed=50 + step, dtype=torch.float64, device=device
        )
        got = memory(emb, labels, sample_ids=None if use_simix else ids)
        (got_grad,) = torch.autograd.grad(got, emb)
        queue.enqueue(emb, labels, ids, step)
        queries = emb.detach().double().requires_grad_()
        if use_simix:
            pairs = [(i, j) for i, j in itertools.combinations(range(6), 2) if labels[i] == labels[j]]
            expected = simix_reference(queue, queries, labels, step, [0.3] * len(pairs), pairs)
        else:
            expected, _ = queue.loss(queries, labels, ids, step, True, True, live=queries)
        torch.testing.assert_close(got, expected.detach())
        torch.testing.assert_close(got_grad, torch.autograd.grad(expected, queries)[0])


@settings(max_examples=20, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    extra_memory=st.integers(0, 12),
    num_classes=st.integers(1, 4),
    use_ids=st.booleans(),
    detach_batch=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_any_sequence_of_batch_sizes_matches_reference(
    batch_sizes, extra_memory, num_classes, use_ids, detach_batch, seed
):
    memory_size = max(batch_sizes) + extra_memory
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=memory_size, detach_batch=detach_batch)
    queue = ReferenceQueue(memory_size)
    for step, batch_size in enumerate(batch_sizes):
        emb, labels, ids = make_batch(
            batch_size, 3, num_classes, 2 * num_classes + 1, seed + step, torch.float64, "cpu"
        )
        check_step(memory, queue, emb, labels, ids, step, use_ids, torch.float64)


@pytest.mark.parametrize("memory_size", [12, 40], ids=["memory_is_the_batch", "memory_not_full"])
def test_the_query_is_never_its_own_positive(memory_size, dtype, device):
    """A memory that holds only the batch gives the loss of the batch alone (each query's own entry left out),
    and with the batch's columns live (the default) its gradient too."""
    emb, labels, _ = make_batch(12, 4, num_classes=3, num_ids=12, seed=3, dtype=dtype, device=device)
    got = CrossBatchMemory(loss=rsk(), embedding_size=4, memory_size=memory_size)(emb, labels)
    expected = rsk()(emb, labels)
    torch.testing.assert_close(got, expected, **tolerance(dtype))
    torch.testing.assert_close(torch.autograd.grad(got, emb)[0], torch.autograd.grad(expected, emb)[0])


def test_a_singleton_class_has_no_positive_in_a_memory_holding_only_the_batch(device):
    """Without the exclusion the query's own copy would be its one positive and the loss would be < 1 - 0."""
    emb, _, _ = make_batch(4, 4, num_classes=4, num_ids=4, seed=0, dtype=torch.float64, device=device)
    labels = torch.arange(4, device=device)
    memory = CrossBatchMemory(loss=rsk(), embedding_size=4, memory_size=4)
    assert memory(emb, labels).item() == 0.0
    raw = CrossBatchMemory(loss=RecallKSurrogateLoss(reducer=reducers.DoNothingReducer()), embedding_size=4)
    assert raw(emb, labels)["loss"]["reduction_type"] == "already_reduced"  # PML's zero loss: no query counted


@pytest.mark.parametrize("detach_batch", [False, True], ids=["live_batch", "detached_batch"])
@pytest.mark.parametrize("use_ids", [False, True], ids=["no_ids", "sample_ids"])
def test_enqueue_mask_queries_are_not_in_the_memory(use_ids, detach_batch, dtype, device):
    """PML's enqueue_mask: masked rows are enqueued, the others are queries against the memory (no self entry)."""
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=10, detach_batch=detach_batch)
    queue = ReferenceQueue(10)
    for step in range(4):
        emb, labels, ids = make_batch(8, 3, num_classes=3, num_ids=9, seed=10 + step, dtype=dtype, device=device)
        mask = torch.arange(8, device=device) % 2 == 0
        got = memory(emb, labels, enqueue_mask=mask, sample_ids=ids if use_ids else None)
        (got_grad,) = torch.autograd.grad(got, emb)
        queue.enqueue(emb[mask], labels[mask], ids[mask], step)
        full = emb.detach().double().requires_grad_()
        live = None if detach_batch else full[mask]
        expected, _ = queue.loss(full[~mask], labels[~mask], ids[~mask], step, False, use_ids, live=live)
        (expected_grad,) = torch.autograd.grad(expected, full)
        torch.testing.assert_close(got.double(), expected.detach(), **tolerance(dtype))
        torch.testing.assert_close(got_grad.double(), expected_grad, **tolerance(dtype))
        if detach_batch:
            assert torch.count_nonzero(got_grad[mask]) == 0


def test_enqueue_mask_with_nothing_enqueued_leaves_the_memory_as_it_was(device):
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=10)
    emb, labels, _ = make_batch(4, 3, num_classes=2, num_ids=4, seed=1, dtype=torch.float64, device=device)
    memory(emb, labels)
    before = memory.embedding_memory.clone()
    memory(emb, labels, enqueue_mask=torch.zeros(4, dtype=torch.bool, device=device))
    assert memory.queue_idx == 4 and not memory.has_been_filled
    torch.testing.assert_close(memory.embedding_memory, before)


def test_enqueue_mask_with_every_row_enqueued_has_no_query(device):
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=10)
    emb, labels, _ = make_batch(4, 3, num_classes=2, num_ids=4, seed=1, dtype=torch.float64, device=device)
    loss = memory(emb, labels, enqueue_mask=torch.ones(4, dtype=torch.bool, device=device))
    loss.backward()
    assert loss.item() == 0.0 and memory.queue_idx == 4
    torch.testing.assert_close(memory.embedding_memory[:4], emb.detach())


def simix_reference(queue, queries, labels, step, alpha, pairs):
    """Virtual items v = α·ê_i + (1−α)·ê_j built from the batch's live embeddings (docs/method.md §3), not
    re-normalised, appended to the reference set; query q's database leaves out its own entry and every virtual
    item with q as a parent."""
    items = queue.items(step, live=queries)
    item_labels = [e[1] for e in queue.entries]
    own = {e[4]: z for z, e in enumerate(queue.entries) if e[3] == step}
    n_memory = len(items)
    for v, (i, j) in enumerate(pairs):
        items.append(alpha[v] * items[own[i]] + (1 - alpha[v]) * items[own[j]])
        item_labels.append(int(labels[i]))
    databases = [
        [z for z in range(len(items)) if z != own[q] and (z < n_memory or q not in pairs[z - n_memory])]
        for q in range(len(queries))
    ]
    loss, _ = reference_loss(queries, [int(y) for y in labels], items, item_labels, databases)
    return loss


@pytest.mark.parametrize("alpha_range", [(0.3, 0.3), (0.0, 1.0)], ids=["alpha0.3", "alpha_random"])
def test_simix_database_mode_extends_the_memory_with_virtual_items(alpha_range, dtype, device):
    memory = CrossBatchMemory(
        loss=SimilarityMixup(rsk(), mode="database_only", alpha_range=alpha_range), embedding_size=3, memory_size=14
    )
    queue = ReferenceQueue(14)
    for step in range(3):
        emb, labels, ids = make_batch(6, 3, num_classes=2, num_ids=12, seed=20 + step, dtype=dtype, device=device)
        torch.manual_seed(step)
        got = memory(emb, labels)
        (got_grad,) = torch.autograd.grad(got, emb)
        # The same draw as the wrapper's: α ~ U(alpha_range), one per pair, in float64.
        pairs = [(i, j) for i, j in itertools.combinations(range(6), 2) if labels[i] == labels[j]]
        torch.manual_seed(step)
        low, high = alpha_range
        alpha = (torch.rand(len(pairs), device=device, dtype=torch.float64) * (high - low) + low).cpu()
        alpha = alpha.to(dtype).double()  # the wrapper mixes in the loss's precision
        queue.enqueue(emb, labels, ids, step)
        queries = emb.detach().double().requires_grad_()
        expected = simix_reference(queue, queries, labels, step, alpha, pairs)
        (expected_grad,) = torch.autograd.grad(expected, queries)
        assert memory.loss.num_virtual == len(pairs)
        torch.testing.assert_close(got.double(), expected.detach(), **tolerance(dtype))
        torch.testing.assert_close(got_grad.double(), expected_grad, **tolerance(dtype))


def test_simix_in_eval_mode_is_the_plain_memory_loss(device):
    emb, labels, _ = make_batch(8, 3, num_classes=2, num_ids=8, seed=2, dtype=torch.float64, device=device)
    mixed = CrossBatchMemory(loss=SimilarityMixup(rsk(), mode="database_only"), embedding_size=3, memory_size=8).eval()
    plain = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=8)
    torch.testing.assert_close(mixed(emb, labels), plain(emb, labels))


def test_user_indices_tuple_weights_each_query_by_its_anchor_count(device):
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=12)
    queue = ReferenceQueue(12)
    emb, labels, ids = make_batch(6, 3, num_classes=2, num_ids=6, seed=5, dtype=torch.float64, device=device)
    anchors = torch.tensor([0, 0, 0, 1, 3, 3], device=device)  # counts 3, 1, 2 → weights 1, 1/3, 2/3, 0 elsewhere
    triplets = (anchors, torch.zeros_like(anchors), torch.ones_like(anchors))
    got = memory(emb, labels, indices_tuple=triplets)
    queue.enqueue(emb, labels, ids, 0)
    weights = [1.0, 1 / 3, 0.0, 2 / 3, 0.0, 0.0]
    expected, _ = queue.loss(emb.detach(), labels, ids, 0, own_entries=True, exclude_stale=False, weights=weights)
    torch.testing.assert_close(got, expected)


class FixedMiner(BaseMiner):
    """Returns a fixed pair tuple (anchors into the batch, columns into the memory), self-comparisons included."""

    def __init__(self, tuple_):
        super().__init__()
        self.tuple_ = tuple_

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        return self.tuple_


def test_miner_self_comparisons_are_removed_before_weighting(device):
    """A batch of 4 into an empty memory sits in columns 0..3; the miner's pairs (0, 0) and (2, 2) are self
    comparisons and must not count, as in PML's CrossBatchMemory."""
    a1 = torch.tensor([0, 0, 1, 2], device=device)
    p = torch.tensor([0, 1, 0, 2], device=device)
    a2 = torch.tensor([2, 3, 3], device=device)
    n = torch.tensor([1, 0, 1], device=device)
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=8, miner=FixedMiner((a1, p, a2, n)))
    emb, _, ids = make_batch(4, 3, num_classes=2, num_ids=4, seed=6, dtype=torch.float64, device=device)
    labels = torch.tensor([0, 0, 1, 1], device=device)
    got = memory(emb, labels)
    # Anchors left: 0 (pair 0-1), 1, 2 (negative), 3, 3 → counts 1, 1, 1, 2.
    queue = ReferenceQueue(8)
    queue.enqueue(emb, labels, ids, 0)
    expected, _ = queue.loss(emb.detach(), labels, ids, 0, True, False, weights=[0.5, 0.5, 0.5, 1.0])
    torch.testing.assert_close(got, expected)


def test_do_nothing_reducer_returns_the_per_query_losses(device):
    memory = CrossBatchMemory(
        loss=RecallKSurrogateLoss(k_values=K_VALUES, rank_temperature=TAU, reducer=reducers.DoNothingReducer()),
        embedding_size=3,
        memory_size=9,
    )
    queue = ReferenceQueue(9)
    for step in range(3):
        emb, labels, ids = make_batch(
            5, 3, num_classes=3, num_ids=6, seed=30 + step, dtype=torch.float64, device=device
        )
        out = memory(emb, labels, sample_ids=ids)["loss"]
        queue.enqueue(emb, labels, ids, step)
        _, per_query = queue.loss(emb.detach(), labels, ids, step, own_entries=True, exclude_stale=True)
        if not per_query:
            assert out["reduction_type"] == "already_reduced"
            continue
        assert out["reduction_type"] == "element"
        assert out["indices"].tolist() == sorted(per_query)
        torch.testing.assert_close(out["losses"], torch.stack([per_query[q] for q in sorted(per_query)]))


def test_memory_is_detached_and_on_the_embeddings_device(device):
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=12)
    first, labels, _ = make_batch(6, 3, num_classes=2, num_ids=6, seed=7, dtype=torch.float32, device=device)
    memory(first, labels)
    assert memory.embedding_memory.device.type == torch.device(device).type
    assert not memory.embedding_memory.requires_grad
    second, labels, _ = make_batch(6, 3, num_classes=2, num_ids=6, seed=8, dtype=torch.float32, device=device)
    memory(second, labels).backward()
    assert first.grad is None and second.grad is not None


def test_loss_and_memory_are_float32_under_autocast(device):
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).to(device)
    inputs = torch.randn(8, 5, device=device)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3], device=device)
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=16)
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        emb = layer(inputs)
        got = memory(emb, labels)
    assert emb.dtype == torch.bfloat16 and got.dtype == torch.float32
    assert memory.embedding_memory.dtype == torch.float32
    expected = rsk()(emb.detach().float(), labels)
    torch.testing.assert_close(got, expected)


PML_LOSSES = {
    "contrastive": lambda: pml_losses.ContrastiveLoss(),
    "multi_similarity": lambda: pml_losses.MultiSimilarityLoss(),
    "ntxent": lambda: pml_losses.NTXentLoss(),
    "triplet": lambda: pml_losses.TripletMarginLoss(margin=0.1),
}


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "enqueue_mask"])
@pytest.mark.parametrize("use_miner", [False, True], ids=["no_miner", "miner"])
@pytest.mark.parametrize("name", sorted(PML_LOSSES))
def test_pml_losses_give_the_numbers_of_pml_cross_batch_memory(name, use_miner, masked, device):
    ours = CrossBatchMemory(
        PML_LOSSES[name](), 3, memory_size=10, miner=miners.MultiSimilarityMiner() if use_miner else None
    )
    theirs = pml_losses.CrossBatchMemory(
        PML_LOSSES[name](), 3, memory_size=10, miner=miners.MultiSimilarityMiner() if use_miner else None
    )
    assert isinstance(ours, pml_losses.CrossBatchMemory)
    for step in range(4):
        emb, labels, _ = make_batch(6, 3, num_classes=2, num_ids=6, seed=40 + step, dtype=torch.float64, device=device)
        mask = (torch.arange(6, device=device) % 3 == 0) if masked else None
        got = ours(emb, labels, enqueue_mask=mask)
        (got_grad,) = torch.autograd.grad(got, emb)
        expected = theirs(emb, labels, enqueue_mask=mask)
        (expected_grad,) = torch.autograd.grad(expected, emb)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=0)
        torch.testing.assert_close(ours.embedding_memory, theirs.embedding_memory, rtol=0, atol=0)
        assert ours.queue_idx == theirs.queue_idx


def test_imports_and_recorded_hyper_parameters():
    assert pml_recallk.CrossBatchMemory is pml_recallk.losses.CrossBatchMemory is CrossBatchMemory
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=64)
    assert {"embedding_size", "memory_size", "queue_idx", "detach_batch"} <= set(memory._record_these)


def test_state_dict_round_trip_keeps_the_queue_and_its_ids(device):
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=8)
    emb, labels, ids = make_batch(6, 3, num_classes=2, num_ids=6, seed=9, dtype=torch.float32, device=device)
    memory(emb, labels, sample_ids=ids)
    restored = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=8)
    restored.load_state_dict(memory.state_dict())
    assert restored.sample_id_memory[:6].tolist() == ids.tolist()
    assert restored.sample_id_memory[6:].tolist() == [-1, -1]
    assert (restored.queue_idx, restored.has_been_filled) == (6, False)
    more, more_labels, more_ids = make_batch(
        6, 3, num_classes=2, num_ids=6, seed=10, dtype=torch.float32, device=device
    )
    torch.testing.assert_close(
        restored(more, more_labels, sample_ids=more_ids), memory(more, more_labels, sample_ids=more_ids)
    )
    assert (restored.queue_idx, restored.has_been_filled) == (4, True)


def test_loads_the_state_dict_of_pml_cross_batch_memory():
    """PML's class saves no sample ids and no queue position: ids unknown, queue position 0 (as PML resumes)."""
    theirs = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), 3, memory_size=8)
    theirs(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
    ours = CrossBatchMemory(pml_losses.ContrastiveLoss(), 3, memory_size=8)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.embedding_memory, theirs.embedding_memory)
    assert ours.sample_id_memory.tolist() == [-1] * 8 and ours.queue_idx == 0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m(torch.randn(9, 3), torch.zeros(9, dtype=torch.long)), ValueError, "memory_size=8 is smaller"),
        (lambda m: m(torch.randn(4, 5), torch.zeros(4, dtype=torch.long)), ValueError, "embedding_size=3"),
        (lambda m: m(torch.randn(4, 3), torch.zeros(3, dtype=torch.long)), ValueError, "labels has 3 entries"),
        (lambda m: m(torch.randn(4, 3), torch.zeros(4)), TypeError, "labels must hold integer"),
        (
            lambda m: m(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), sample_ids=torch.arange(5)),
            ValueError,
            "sample_ids has 5 entries",
        ),
        (
            lambda m: m(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), sample_ids=-torch.arange(1, 5)),
            ValueError,
            "sample_ids must be >= 0",
        ),
        (
            lambda m: m(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), enqueue_mask=torch.ones(3, dtype=bool)),
            ValueError,
            "enqueue_mask has shape",
        ),
        (lambda m: m(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), enqueue_mask=torch.ones(4)), TypeError,
         "bool tensor"),
        (lambda m: m(torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long)), ValueError, "NaN"),
    ],
    ids=["memory_too_small", "embedding_size", "labels_length", "float_labels", "ids_length", "negative_ids",
         "mask_length", "mask_dtype", "nan"],
)  # fmt: skip
def test_bad_input_raises_naming_the_argument(call, error, match):
    memory = CrossBatchMemory(loss=rsk(), embedding_size=3, memory_size=8)
    with pytest.raises(error, match=match):
        call(memory)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"loss": rsk(), "embedding_size": 0}, ValueError, "embedding_size must be a positive int"),
        ({"loss": rsk(), "embedding_size": 3, "memory_size": 2.5}, TypeError, "memory_size must be a positive int"),
        ({"loss": SimilarityMixup(rsk()), "embedding_size": 3}, ValueError, "database mode"),
        ({"loss": pml_losses.FastAPLoss(), "embedding_size": 3}, ValueError, "not supported for FastAPLoss"),
    ],
    ids=["embedding_size", "memory_size", "simix_official", "unsupported_loss"],
)
def test_bad_constructor_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        CrossBatchMemory(**kwargs)


def test_sample_ids_with_a_pml_loss_is_an_error():
    memory = CrossBatchMemory(loss=pml_losses.ContrastiveLoss(), embedding_size=3, memory_size=8)
    with pytest.raises(ValueError, match="sample_ids is supported with RecallKSurrogateLoss only"):
        memory(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), sample_ids=torch.arange(4))


class PairedImages(torch.utils.data.Dataset):
    def __init__(self, num_classes=6, per_class=8):
        generator = torch.Generator().manual_seed(0)
        self.labels = np.repeat(np.arange(num_classes), per_class)
        centres = torch.randn(num_classes, 6, generator=generator)
        self.inputs = centres[self.labels] + 0.5 * torch.randn(len(self.labels), 6, generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.inputs[index], int(self.labels[index])


@pytest.mark.parametrize("trainer_class", [MetricLossOnly, MemoryEfficientTrainer])
def test_trainers_run_with_the_memory_and_record_its_size(trainer_class, device, tmp_path):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).to(device)
    record_keeper, _, _ = logging_presets.get_record_keeper(str(tmp_path / "logs"), str(tmp_path / "tensorboard"))
    hooks = logging_presets.get_hook_container(record_keeper, primary_metric="precision_at_1", log_freq=1)
    dataset = PairedImages()
    memory = CrossBatchMemory(loss=RecallKSurrogateLoss(), embedding_size=4, memory_size=40)
    extra = {"chunk_size": 5} if trainer_class is MemoryEfficientTrainer else {}
    trainer = trainer_class(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1)},
        batch_size=16,
        loss_funcs={"metric_loss": memory},
        mining_funcs={},
        dataset=dataset,
        sampler=MPerClassSampler(dataset.labels, m=4, batch_size=16, length_before_new_iter=48),
        data_device=device,
        dataloader_num_workers=0,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        **extra,
    )
    before = [p.detach().clone() for p in trunk.parameters()]
    trainer.train(num_epochs=2)
    record_keeper.save_records()
    history = hooks.get_loss_history()
    assert len(history["total_loss"]) == 6 and np.isfinite(history["total_loss"]).all()
    assert memory.has_been_filled and memory.queue_idx == (6 * 16) % 40
    assert any(not torch.equal(b, p) for b, p in zip(before, trunk.parameters()))
    recorded = list((tmp_path / "logs").rglob("metric_loss_CrossBatchMemory.csv"))
    assert recorded, "record-keeper wrote no table for the memory"
    with open(recorded[0]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {row["memory_size"] for row in rows} == {"40"}
    assert [int(row["queue_idx"]) for row in rows] == [(16 * i) % 40 for i in range(1, 7)]

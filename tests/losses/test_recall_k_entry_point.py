"""RecallKSurrogateLoss.forward with ref_emb, self_index, excluded and ref_mixup: the one entry point for "these
queries, this database, these exclusions", against the plain float64 loops of tests/references/rsk_reference.py."""

import pytest
import torch
from pytorch_metric_learning.distances import BaseDistance
from rsk_reference import cosine_matrix, per_query_recalls

from pml_recallk import RecallKSurrogateLoss

K_VALUES, TAU = (1, 2, 4), 0.05


def problem(seed=0):
    """5 queries; a database of 12 whose columns 3..7 hold the queries themselves; labels with 3 classes."""
    g = torch.Generator().manual_seed(seed)
    database = torch.randn(12, 5, generator=g, dtype=torch.float64)
    database_labels = torch.randint(0, 3, (12,), generator=g)
    queries = database[3:8].clone()
    self_index = torch.arange(3, 8)
    excluded = torch.tensor([[0, 9], [-1, -1], [11, -1], [2, 13], [-1, 12]])  # 12, 13: virtual items
    mixup = (torch.tensor([0, 4]), torch.tensor([1, 10]), torch.tensor([0.25, 0.6], dtype=torch.float64))
    return queries, database_labels[3:8], database, database_labels, self_index, excluded, mixup


def reference(queries, labels, database, database_labels, self_index, excluded, mixup, count_query_in_rank=False):
    sim = cosine_matrix(queries.tolist(), database.tolist())
    db_labels = [int(x) for x in database_labels]
    first, second, alpha = (x.tolist() for x in mixup)
    for row in sim:
        row.extend(a * row[i] + (1 - a) * row[j] for i, j, a in zip(first, second, alpha))
    db_labels += [db_labels[i] for i in first]
    databases, self_columns = [], []
    for q in range(len(sim)):
        own = int(self_index[q])
        out = {int(x) for x in excluded[q] if x >= 0} | (set() if count_query_in_rank else {own})
        databases.append([z for z in range(len(sim[q])) if z not in out])
        self_columns.append(own)
    recalls = per_query_recalls(
        sim, [int(x) for x in labels], db_labels, databases, self_columns, K_VALUES, TAU, [1.0] * 3, 0.0
    )
    return sum(1 - sum(r) / len(r) for r in recalls.values()) / len(recalls)


@pytest.mark.parametrize("path", ["dense", "tiled"])
@pytest.mark.parametrize("count_query_in_rank", [False, True])
def test_entry_point_matches_the_plain_reference(path, count_query_in_rank):
    queries, labels, database, database_labels, self_index, excluded, mixup = problem()
    loss_fn = RecallKSurrogateLoss(
        K_VALUES, rank_temperature=TAU, count_query_in_rank=count_query_in_rank, path=path, tile_size=2
    )
    got = loss_fn(
        queries,
        labels,
        ref_emb=database,
        ref_labels=database_labels,
        self_index=self_index,
        excluded=excluded,
        ref_mixup=mixup,
    )
    expected = reference(queries, labels, database, database_labels, self_index, excluded, mixup, count_query_in_rank)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_the_batch_as_its_own_reference_with_self_index_equals_the_plain_call():
    queries, labels, *_ = problem(1)
    loss_fn = RecallKSurrogateLoss(K_VALUES, rank_temperature=TAU)
    plain = loss_fn(queries, labels)
    explicit = loss_fn(queries, labels, ref_emb=queries.clone(), ref_labels=labels, self_index=torch.arange(5))
    assert explicit.item() == pytest.approx(plain.item(), rel=1e-12)


def test_minus_one_in_self_index_means_no_own_column():
    queries, labels, database, database_labels, *_ = problem(2)
    loss_fn = RecallKSurrogateLoss(K_VALUES, rank_temperature=TAU)
    none = loss_fn(queries, labels, ref_emb=database, ref_labels=database_labels)
    minus_one = loss_fn(queries, labels, ref_emb=database, ref_labels=database_labels, self_index=torch.full((5,), -1))
    assert minus_one.item() == pytest.approx(none.item(), rel=1e-12)


@pytest.mark.parametrize(
    "keywords,error,words",
    [
        ({"self_index": torch.arange(4)}, ValueError, "self_index must have shape"),
        ({"self_index": torch.arange(5) + 8}, ValueError, "self_index holds a column outside"),
        ({"self_index": torch.arange(5.0)}, TypeError, "self_index must be an integer tensor"),
        ({"excluded": torch.tensor([[12]] * 5)}, ValueError, "excluded holds a column outside"),
        ({"excluded": torch.tensor([0, 1, 2, 3, 4])}, ValueError, "excluded must have shape"),
        ({"ref_mixup": (torch.tensor([0]), torch.tensor([1]))}, TypeError, "ref_mixup must be a tuple"),
        ({"ref_mixup": (torch.tensor([0]), torch.tensor([12]), torch.tensor([0.5]))}, ValueError, "second"),
        ({"ref_mixup": (torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))}, TypeError, "alpha"),
    ],
)
def test_bad_exclusions_are_named(keywords, error, words):
    queries, labels, database, database_labels, *_ = problem()
    with pytest.raises(error, match=words):
        RecallKSurrogateLoss()(queries, labels, ref_emb=database, ref_labels=database_labels, **keywords)


def test_exclusions_need_ref_emb():
    queries, labels, *_ = problem()
    with pytest.raises(ValueError, match="name columns of ref_emb"):
        RecallKSurrogateLoss()(queries, labels, self_index=torch.arange(5))


class NegativeEuclidean(BaseDistance):  # an inverted similarity that is not a dot product
    def __init__(self):
        super().__init__(is_inverted=True)

    def compute_mat(self, query_emb, ref_emb):
        return -torch.cdist(query_emb, ref_emb)


def test_ref_mixup_needs_a_dot_product_similarity():
    queries, labels, database, database_labels, *_, mixup = problem()
    with pytest.raises(ValueError, match="ref_mixup mixes similarities linearly"):
        RecallKSurrogateLoss(distance=NegativeEuclidean())(
            queries, labels, ref_emb=database, ref_labels=database_labels, ref_mixup=mixup
        )


@pytest.mark.parametrize(
    "indices_tuple,words",
    [
        ((torch.tensor([100]), torch.tensor([1]), torch.tensor([2])), r"indices_tuple\[0\] holds index 100"),
        ((torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([-3])), r"indices_tuple\[3\]"),
        ((torch.tensor([0]), torch.tensor([16]), torch.tensor([2])), "outside the database .* which has 16 rows"),
    ],
)
def test_out_of_range_indices_tuple_is_named(indices_tuple, words):
    # N33: an anchor index 100 in a batch of 16 raised an IndexError from inside PML's loss_and_miner_utils.
    embeddings, labels = torch.randn(16, 8), torch.arange(4).repeat_interleave(4)
    with pytest.raises(ValueError, match=words):
        RecallKSurrogateLoss()(embeddings, labels, indices_tuple)


def test_indices_tuple_of_the_wrong_shape_is_named():
    with pytest.raises(TypeError, match="indices_tuple must be a tuple"):
        RecallKSurrogateLoss()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), (torch.tensor([0]),))

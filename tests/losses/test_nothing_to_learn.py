"""N16: RS@k that cannot train (no positive, or every k beyond every database) says so once, naming the fix."""

import warnings

import pytest
import torch

from pml_recallk import RecallKSurrogateLoss
from pml_recallk.losses.recall_k_surrogate_loss import NothingToLearnWarning

LABELS = torch.arange(4).repeat_interleave(4)  # 16 items, 4 per class: each query's database holds 15


def loss_and_grad(loss_fn, labels=LABELS, dtype=torch.float32):
    embeddings = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    embeddings.requires_grad_(True)
    loss = loss_fn(embeddings, labels)
    loss.backward()
    return float(loss), embeddings.grad


def test_k_beyond_every_database_warns_once_naming_k_values():
    loss_fn = RecallKSurrogateLoss(k_values=(1000,))
    with pytest.warns(NothingToLearnWarning, match=r"every k in k_values=\[1000\].*at most 15 items"):
        value, grad = loss_and_grad(loss_fn)
    # The reproducer of the notes: exactly 0, and a gradient that is exactly zero (σ rounds to 1 far past the ceiling).
    assert value == 0.0 and not grad.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NothingToLearnWarning)
        loss_and_grad(loss_fn)  # once per loss object


def test_one_sample_per_class_warns_naming_the_samples_per_class():
    with pytest.warns(NothingToLearnWarning, match="no query of the batch has a positive.*samples_per_class"):
        value, grad = loss_and_grad(RecallKSurrogateLoss(), labels=torch.arange(16))
    assert value == 0.0 and not grad.any()


@pytest.mark.parametrize(
    "k_values,count_query_in_rank,warns",
    [
        ((15,), False, True),  # |Ω| = 15: Recall@15 is 1 for any embedding
        ((14,), False, False),  # a positive can still rank 15th
        ((15,), True, False),  # the query counted in its ranks: |Ω| = 16
        ((16,), True, True),
        ((4, 1000), False, False),  # k = 4 still trains
        ((1, 2, 4, 8, 16), False, False),  # the paper's k on 4 per class
    ],
)
def test_the_warning_fires_exactly_when_the_smallest_k_reaches_the_largest_database(
    k_values, count_query_in_rank, warns
):
    loss_fn = RecallKSurrogateLoss(k_values=k_values, count_query_in_rank=count_query_in_rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, grad = loss_and_grad(loss_fn, dtype=torch.float64)
    assert any(issubclass(w.category, NothingToLearnWarning) for w in caught) == warns
    if not warns:
        assert grad.abs().max() > 1e-6  # below the threshold the loss does train


@pytest.mark.parametrize("dtype,threshold", [(torch.float32, 16.64), (torch.float64, 36.74)])
def test_the_gradient_is_exactly_zero_once_sigma_rounds_to_one(dtype, threshold):
    # Every soft rank is below |Ω| = 15, so (k − r̃)/τ_k > (k − 15)/τ_k; past the threshold σ = 1 and σ' = 0.
    assert torch.sigmoid(torch.tensor(threshold, dtype=dtype)) == 1
    with pytest.warns(NothingToLearnWarning):
        _, grad = loss_and_grad(RecallKSurrogateLoss(k_values=(15 + round(threshold + 0.5),)), dtype=dtype)
    assert not grad.any()


def test_a_reference_database_counts_its_exclusions():
    queries, database = torch.randn(3, 4), torch.randn(6, 4)
    labels, database_labels = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 0, 1, 2])
    reference = {"ref_emb": database, "ref_labels": database_labels}
    with warnings.catch_warnings():  # query 2 excludes nothing: its database holds 6, so k = 5 still trains
        warnings.simplefilter("error", NothingToLearnWarning)
        RecallKSurrogateLoss(k_values=(5,))(queries, labels, **reference, excluded=torch.tensor([[0], [1], [-1]]))
    with pytest.warns(NothingToLearnWarning, match="at most 5 items"):
        RecallKSurrogateLoss(k_values=(5,))(queries, labels, **reference, excluded=torch.tensor([[0], [1], [2]]))

"""RS@k's calibration term (``calibration_weight``): checked against the plain float64 loops of rsk_reference."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from rsk_reference import calibration_per_query, cosine_matrix, reference_loss

from pml_recallk import CrossBatchMemory, RecallKSurrogateLoss
from pml_recallk import functional as rsk_functional
from pml_recallk.losses.recall_k_surrogate_loss import find_recall_k_surrogate


def _batch(seed, n=24, classes=6, dim=5):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    return emb, labels


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    margins=st.tuples(st.floats(0.0, 1.0), st.floats(-1.0, 0.0)),
    n_excluded=st.integers(0, 3),
)
def test_functional_calibration_equals_the_loops(seed, margins, n_excluded):
    emb, labels = _batch(seed)
    ref, ref_labels = _batch(seed + 1, n=17)
    g = torch.Generator().manual_seed(seed)
    self_index = torch.randint(-1, len(ref), (len(emb),), generator=g)
    excluded = torch.randint(-1, len(ref), (len(emb), n_excluded), generator=g)
    sim = torch.tensor(cosine_matrix(emb.tolist(), ref.tolist()), dtype=torch.float64)
    got = rsk_functional.calibration_loss(sim, labels, ref_labels, self_index, excluded, *margins)
    databases = [[z for z in range(len(ref)) if z not in excluded[q].tolist()] for q in range(len(emb))]
    selves = [int(i) if i >= 0 else None for i in self_index]
    expected = calibration_per_query(sim.tolist(), labels.tolist(), ref_labels.tolist(), databases, selves, *margins)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight", [0.1, 0.5, 1.0])
def test_loss_with_calibration_equals_the_reference(weight):
    emb, labels = _batch(3)
    got = RecallKSurrogateLoss(calibration_weight=weight, rank_temperature=0.05)(emb, labels)
    expected = reference_loss(emb, labels, rank_temperature=0.05, calibration_weight=weight)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_loss_with_calibration_against_a_database_equals_the_reference():
    emb, labels = _batch(4)
    ref, ref_labels = _batch(5, n=30)
    loss = RecallKSurrogateLoss(calibration_weight=0.3, calibration_margins=(0.8, 0.2), rank_temperature=0.05)
    got = loss(emb, labels, ref_emb=ref, ref_labels=ref_labels)
    expected = reference_loss(
        emb, labels, ref, ref_labels, rank_temperature=0.05, calibration_weight=0.3, calibration_margins=(0.8, 0.2)
    )
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_weight_zero_is_rsk_alone_bitwise():
    emb, labels = _batch(6)
    assert torch.equal(RecallKSurrogateLoss(calibration_weight=0.0)(emb, labels), RecallKSurrogateLoss()(emb, labels))


@pytest.mark.parametrize("with_database", [False, True])
def test_tiled_path_gives_the_dense_values_and_gradients(with_database):
    emb, labels = _batch(7, n=40)
    emb = F.normalize(emb, dim=1).requires_grad_()
    kwargs = {}
    if with_database:
        ref, ref_labels = _batch(8, n=33)
        ref = ref.requires_grad_()
        kwargs = {"ref_emb": ref, "ref_labels": ref_labels, "excluded": torch.randint(-1, 33, (40, 2))}
    inputs = [emb] + ([kwargs["ref_emb"]] if with_database else [])
    results = []
    for path in ("dense", "tiled"):
        loss = RecallKSurrogateLoss(calibration_weight=0.4, path=path, tile_size=7, rank_temperature=0.05)
        value = loss(emb, labels, **kwargs)
        results.append((value, torch.autograd.grad(value, inputs)))
    (dense, dense_grads), (tiled, tiled_grads) = results
    torch.testing.assert_close(tiled, dense, rtol=1e-12, atol=1e-14)
    for t, d in zip(tiled_grads, dense_grads):
        torch.testing.assert_close(t, d, rtol=1e-10, atol=1e-14)


def test_calibration_gradient_equals_finite_differences():
    emb, labels = _batch(9, n=12, classes=3)
    emb.requires_grad_()
    loss = RecallKSurrogateLoss(calibration_weight=1.0, calibration_margins=(0.5, -0.2))
    torch.autograd.gradcheck(lambda e: loss(e, labels), (emb,), eps=1e-6, atol=1e-6)


def test_closed_hinges_give_no_loss_and_no_gradient():
    """Positives above α and negatives below β: the calibration term is 0 with a zero gradient, so only the smooth
    rank trains (λ = 1 leaves nothing at all)."""
    emb = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]], dtype=torch.float64)
    emb = F.normalize(emb, dim=1).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1])
    value = RecallKSurrogateLoss(calibration_weight=1.0)(emb, labels)
    (grad,) = torch.autograd.grad(value, emb)
    assert value.item() == 0.0
    assert torch.count_nonzero(grad) == 0


def test_cross_batch_memory_leaves_the_query_out_of_the_calibration_term():
    emb, labels = _batch(10, n=8, classes=2)
    emb = F.normalize(emb, dim=1)
    memory = CrossBatchMemory(RecallKSurrogateLoss(calibration_weight=1.0), embedding_size=5, memory_size=64)
    got = memory(emb, labels)  # the memory holds the batch itself: each query's own entry must be left out
    sim = emb @ emb.T
    expected = [
        sum(max(0.0, 0.9 - sim[q, z].item()) for z in range(8) if z != q and labels[z] == labels[q])
        / max(1, sum(1 for z in range(8) if z != q and labels[z] == labels[q]))
        + sum(max(0.0, sim[q, z].item() - 0.6) for z in range(8) if labels[z] != labels[q])
        / max(1, sum(1 for z in range(8) if labels[z] != labels[q]))
        for q in range(8)
        if any(labels[z] == labels[q] for z in range(8) if z != q)
    ]
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-10)


def test_runs_in_float32_under_autocast():
    emb, labels = _batch(11)
    emb = emb.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = RecallKSurrogateLoss(calibration_weight=0.5)(emb.bfloat16(), labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_loss(emb.bfloat16().float(), labels, calibration_weight=0.5), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"calibration_weight": -0.1}, ValueError, "calibration_weight must be in"),
        ({"calibration_weight": 1.5}, ValueError, "calibration_weight must be in"),
        ({"calibration_weight": "0.1"}, TypeError, "calibration_weight must be a real"),
        ({"calibration_weight": float("nan")}, ValueError, "calibration_weight must be finite"),
        ({"calibration_margins": (0.5, 0.9)}, ValueError, "positive margin must not be below"),
        ({"calibration_margins": (0.9,)}, TypeError, "calibration_margins must be two numbers"),
        ({"calibration_margins": "ab"}, TypeError, "calibration_margins must be two numbers"),
        ({"calibration_margins": (0.9, None)}, TypeError, "calibration_margins must be a real"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, match):
    with pytest.raises(error, match=match):
        RecallKSurrogateLoss(**kwargs)


def test_config_sets_the_calibration_term():
    from pml_recallk.experiments.builders import build_loss  # noqa: PLC0415
    from pml_recallk.experiments.config import apply_overrides, default_config, validate_config  # noqa: PLC0415

    config = apply_overrides(default_config(), ["loss.calibration_weight=0.25", "loss.calibration_margins=[0.8, 0.5]"])
    validate_config(config)
    found = find_recall_k_surrogate(build_loss(config, num_classes=10)[0])
    assert (found.calibration_weight, found.calibration_margins) == (0.25, (0.8, 0.5))

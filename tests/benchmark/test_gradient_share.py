"""benchmarks/gradient_share.py: its loss variants and its measure of how a batch's gradient is spread."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pml_recallk.experiments import resolve_config
from pml_recallk.experiments.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gradient_share():
    spec = importlib.util.spec_from_file_location("gradient_share", REPO / "benchmarks/gradient_share.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_variant_sets_keys_of_the_loss_table(gradient_share):
    config = resolve_config()
    calibrated = gradient_share.loss_config(config, "rsk+calibration_weight=0.5+rank_temperature=0.04")
    assert (calibrated["loss"]["calibration_weight"], calibrated["loss"]["rank_temperature"]) == (0.5, 0.04)
    assert gradient_share.loss_config(config, "contrastive")["loss"]["name"] == "contrastive"
    with pytest.raises(ConfigError, match="calibration_weight"):
        gradient_share.loss_config(config, "rsk+calibration_weight=2.0")


def test_gradient_norms_are_the_per_item_gradient_of_the_loss(gradient_share):
    """The norms equal those of an RS@k built by hand with the variant's settings, item by item."""
    from pml_recallk import RecallKSurrogateLoss  # noqa: PLC0415

    config = resolve_config()
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    labels = torch.arange(8).repeat_interleave(4)
    got = gradient_share.gradient_norms("rsk+calibration_weight=0.5", config, embeddings, labels)
    leaf = embeddings.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(RecallKSurrogateLoss(calibration_weight=0.5)(leaf, labels), leaf)
    np.testing.assert_allclose(got, grad.norm(dim=1).double().numpy(), rtol=1e-6)


def test_share_with_a_positive_near_the_top_equals_a_loop(gradient_share):
    g = torch.Generator().manual_seed(3)
    embeddings, labels = torch.randn(40, 3, generator=g), torch.randint(0, 6, (40,), generator=g)
    e = torch.nn.functional.normalize(embeddings.double(), dim=1).tolist()
    hits, counted = 0, 0
    for q in range(40):
        others = [z for z in range(40) if z != q]
        ranked = sorted(others, key=lambda z: -sum(a * b for a, b in zip(e[q], e[z])))
        counted += 1
        hits += any(labels[z] == labels[q] for z in ranked[:5])
    got = gradient_share.share_with_a_positive_near_the_top(embeddings, labels, k=5)
    assert got == pytest.approx(hits / counted)


def test_similarity_spread_equals_a_loop_over_distinct_pairs(gradient_share):
    g = torch.Generator().manual_seed(5)
    embeddings = torch.randn(12, 4, generator=g) + 3.0  # most similarities near 1
    e = torch.nn.functional.normalize(embeddings.double(), dim=1).tolist()
    values = [sum(a * b for a, b in zip(e[i], e[j])) for i in range(12) for j in range(12) if i != j]
    mean, spread = gradient_share.similarity_spread(embeddings)
    assert mean == pytest.approx(np.mean(values), abs=1e-12)
    assert spread == pytest.approx(np.std(values, ddof=1), abs=1e-12)

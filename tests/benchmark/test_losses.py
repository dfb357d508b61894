"""The loss registry (pml_recallk.experiments.registry): each loss is built with its paper's settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pml_recallk.experiments import LOSSES, LossEntry, register_loss, resolve_config
from pml_recallk.experiments.builders import build_loss


def test_losses_are_built_with_the_settings_they_state():
    from pytorch_metric_learning import losses, miners

    config = resolve_config(overrides=["model.embedding_size=8"])
    ms, ms_miner = LOSSES["multi_similarity"].build(config, 10)
    assert isinstance(ms, losses.MultiSimilarityLoss) and (ms.alpha, ms.beta, ms.base) == (2.0, 50.0, 0.5)
    assert isinstance(ms_miner, miners.MultiSimilarityMiner) and ms_miner.epsilon == 0.1
    triplet, triplet_miner = LOSSES["triplet"].build(config, 10)
    assert triplet.margin == 0.1 and (triplet_miner.margin, triplet_miner.type_of_triplets) == (0.1, "semihard")
    proxy, _ = LOSSES["proxy_anchor"].build(config, 10)
    assert proxy.proxies.shape == (10, 8) and (proxy.margin, proxy.alpha) == (0.1, 32.0)
    assert LOSSES["proxy_anchor"].loss_lr_factor == 100.0
    assert LOSSES["fastap"].build(config, 10)[0].num_bins == 10
    contrastive, _ = LOSSES["contrastive"].build(config, 10)
    assert (contrastive.pos_margin, contrastive.neg_margin) == (0.0, 1.0)
    for name in ("multi_similarity", "triplet", "proxy_anchor", "fastap", "contrastive"):
        assert LOSSES[name].settings.split("(")[0] in {type(LOSSES[name].build(config, 10)[0]).__name__}


def test_rsk_takes_the_config_loss_table_and_the_wrappers():
    config = resolve_config(overrides=["loss.k_values=[1, 4]", "loss.rank_temperature=0.05", "mixup.enabled=true"])
    loss, miner = build_loss(config, num_classes=10)
    assert type(loss).__name__ == "SimilarityMixup" and miner is None
    assert tuple(loss.loss.k_values) == (1, 4) and loss.loss.rank_temperature == 0.05


def test_a_registered_loss_is_a_config_choice(monkeypatch):
    from pytorch_metric_learning import losses

    monkeypatch.setitem(
        LOSSES, "circle", LossEntry(lambda config, classes: (losses.CircleLoss(), None), "CircleLoss()")
    )
    loss, _ = build_loss(resolve_config(overrides=["loss.name=circle"]), num_classes=4)
    assert isinstance(loss, losses.CircleLoss)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("circle", LOSSES["circle"])
    with pytest.raises(ValueError, match="identifier"):
        register_loss("my loss", LOSSES["circle"])
    with pytest.raises(TypeError, match="LossEntry"):
        register_loss("other", "CircleLoss")


def reference_smooth_ap_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.01) -> float:
    """Smooth-AP (Brown et al., 2020) with positives chosen by label, the query among its own positives as in the
    authors' code: 1 − mean_q mean_{p ∈ P_q} (1 + Σ_{j∈P_q, j≠p} σ_pj) / (1 + Σ_{j≠p} σ_pj)."""
    e = F.normalize(embeddings.double(), dim=1)
    s = e @ e.T
    aps = []
    for q in range(len(labels)):
        positives = [j for j in range(len(labels)) if labels[j] == labels[q]]
        terms = []
        for p in positives:
            above = torch.sigmoid((s[q] - s[q, p]) / temperature)
            above[p] = 0.0
            terms.append((1 + above[positives].sum()) / (1 + above.sum()))
        aps.append(torch.stack(terms).mean())
    return float(1 - torch.stack(aps).mean())


def test_pml_smooth_ap_is_left_out_because_it_ignores_labels_on_benchmark_batches():
    """PML 2.9's SmoothAPLoss is not in the benchmark: on MPerClassSampler batches (C classes × m = 4, in blocks)
    it differs from Smooth-AP unless C = m. If this test fails, PML has fixed it: add it to the registry."""
    from pytorch_metric_learning.losses import SmoothAPLoss

    torch.manual_seed(0)
    for classes, agrees in ((4, True), (8, False)):
        labels = torch.arange(classes).repeat_interleave(4)
        embeddings = torch.randn(4 * classes, 16) + 2 * torch.randn(classes, 16).repeat_interleave(4, dim=0)
        pml = float(SmoothAPLoss(temperature=0.01)(embeddings, labels))
        assert (abs(pml - reference_smooth_ap_loss(embeddings, labels)) < 1e-4) == agrees
    assert "smooth_ap" not in LOSSES

"""RankTemperatureSchedule and train.rank_temperature_end: the temperature each step sees, against the formula."""

from __future__ import annotations

import pytest
import torch

from pml_recallk import CrossBatchMemory, RecallKSurrogateLoss, SimilarityMixup
from pml_recallk.experiments import resolve_config
from pml_recallk.experiments.config import ConfigError
from pml_recallk.experiments.train import run_experiment
from pml_recallk.losses import RankTemperatureSchedule


def geometric(start: float, end: float, total: int, step: int) -> float:
    """The schedule written out: the fraction of the run done, capped at the last step, as an exponent."""
    if total == 1:
        return end
    fraction = min(step, total - 1) / (total - 1)
    return start * (end / start) ** fraction


def test_steps_follow_the_geometric_formula_and_stay_at_the_end():
    loss = RecallKSurrogateLoss()
    schedule = RankTemperatureSchedule(loss, start=0.05, end=0.005, total_steps=5)
    seen = [loss.rank_temperature]
    for _ in range(7):
        schedule.step()
        seen.append(loss.rank_temperature)
    assert seen == pytest.approx([geometric(0.05, 0.005, 5, t) for t in range(8)], rel=1e-12)
    assert seen[0] == pytest.approx(0.05) and seen[4:] == pytest.approx([0.005] * 4)


def test_set_step_is_all_the_state():
    a, b = RecallKSurrogateLoss(), RecallKSurrogateLoss()
    stepped = RankTemperatureSchedule(a, 0.04, 0.01, total_steps=10)
    for _ in range(6):
        stepped.step()
    RankTemperatureSchedule(b, 0.04, 0.01, total_steps=10, last_step=6)
    assert a.rank_temperature == b.rank_temperature


@pytest.mark.parametrize("wrap", ["mixup", "memory"])
def test_reaches_the_loss_inside_a_wrapper(wrap):
    inner = RecallKSurrogateLoss()
    outer = SimilarityMixup(inner) if wrap == "mixup" else CrossBatchMemory(inner, embedding_size=4, memory_size=8)
    RankTemperatureSchedule(outer, 0.03, 0.01, total_steps=4)
    assert inner.rank_temperature == pytest.approx(0.03)


def test_the_loss_uses_the_scheduled_temperature():
    emb, labels = torch.randn(16, 4, dtype=torch.float64), torch.arange(4).repeat_interleave(4)
    scheduled = RecallKSurrogateLoss()
    RankTemperatureSchedule(scheduled, 0.07, 0.01, total_steps=3)
    assert scheduled(emb, labels) == RecallKSurrogateLoss(rank_temperature=0.07)(emb, labels)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.nn.MSELoss(), 0.1, 0.01, 5), TypeError, "needs a RecallKSurrogateLoss"),
        ((RecallKSurrogateLoss(), 0.0, 0.01, 5), ValueError, "start"),
        ((RecallKSurrogateLoss(), 0.1, -1.0, 5), ValueError, "end"),
        ((RecallKSurrogateLoss(), 0.1, 0.01, 0), ValueError, "total_steps"),
        ((RecallKSurrogateLoss(), 0.1, 0.01, 2.5), TypeError, "total_steps"),
    ],
)
def test_bad_arguments_name_themselves(args, error, match):
    with pytest.raises(error, match=match):
        RankTemperatureSchedule(*args)


def test_a_run_with_rank_temperature_end_anneals_step_by_step(tiny_overrides, tmp_path, monkeypatch):
    seen = []
    original = RecallKSurrogateLoss.compute_loss

    def recording(self, *args, **kwargs):
        seen.append(self.rank_temperature)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RecallKSurrogateLoss, "compute_loss", recording)
    config = resolve_config(
        overrides=[*tiny_overrides, "train.epochs=3", "loss.rank_temperature=0.04", "train.rank_temperature_end=0.01"]
    )
    run_experiment(config, tmp_path / "run", log=lambda message: None)
    steps = 3 * config["train"]["iterations_per_epoch"]
    assert seen == pytest.approx([geometric(0.04, 0.01, steps, t) for t in range(steps)], rel=1e-12)


def test_rank_temperature_end_needs_rsk(tiny_overrides):
    with pytest.raises(ConfigError, match="train.rank_temperature_end anneals RS@k"):
        resolve_config(overrides=[*tiny_overrides, "loss.name=contrastive", "train.rank_temperature_end=0.01"])

"""RecallAtKAccuracyCalculator inside PML's training loop: tester, logging hooks and record-keeper's database."""

import math
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import losses, testers, trainers
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import logging_presets

from pml_recallk import RecallAtKAccuracyCalculator
from pml_recallk.evaluation import ChunkedKNN

pytest.importorskip("record_keeper")
pytest.importorskip("tensorboard")  # PML's get_record_keeper imports SummaryWriter

K_VALUES = (1, 2, 4, 8)
EPOCHS = 3


def clustered_dataset(n_classes, per_class, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    features = 3 * torch.randn(n_classes, 16, generator=g)[labels] + torch.randn(len(labels), 16, generator=g)
    return c_f.EmbeddingDataset(features, labels)


def test_tester_and_hooks_record_every_recall_and_save_the_best_model(tmp_path: Path):
    torch.manual_seed(0)
    record_keeper, _, _ = logging_presets.get_record_keeper(str(tmp_path / "logs"))
    hooks = logging_presets.get_hook_container(record_keeper, primary_metric="recall_at_1")
    calculator = RecallAtKAccuracyCalculator(
        K_VALUES,
        include=tuple(f"recall_at_{k}" for k in K_VALUES) + ("mean_average_precision_at_r",),
        knn_func=ChunkedKNN(backend="torch"),
    )
    tester = testers.GlobalEmbeddingSpaceTester(
        end_of_testing_hook=hooks.end_of_testing_hook,
        accuracy_calculator=calculator,
        dataloader_num_workers=0,
        batch_size=64,
    )
    model_folder = tmp_path / "models"
    end_of_epoch_hook = hooks.end_of_epoch_hook(tester, {"val": clustered_dataset(12, 6, seed=1)}, str(model_folder))
    trunk = torch.nn.Linear(16, 8)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.01)},
        batch_size=32,
        loss_funcs={"metric_loss": losses.TripletMarginLoss()},
        dataset=clustered_dataset(20, 8, seed=0),
        dataloader_num_workers=0,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
    )
    trainer.train(num_epochs=EPOCHS)

    history = hooks.get_accuracy_history(tester, "val", return_all_metrics=True)
    assert history["epoch"] == list(range(1, EPOCHS + 1))
    for k in K_VALUES:
        values = history[f"recall_at_{k}_level0"]
        assert len(values) == EPOCHS and all(isinstance(v, float) and 0 <= v <= 1 for v in values)
    # The database holds what the tester computed at the last epoch.
    last = tester.all_accuracies["val"]
    for k in K_VALUES:
        assert math.isclose(history[f"recall_at_{k}_level0"][-1], last[f"recall_at_{k}_level0"])

    best_epoch, best_accuracy = hooks.get_best_epoch_and_accuracy(tester, "val")
    recall_at_1 = history["recall_at_1_level0"]
    assert best_accuracy == max(recall_at_1)
    assert best_epoch == recall_at_1.index(max(recall_at_1)) + 1  # the first epoch that reached the best
    assert (model_folder / f"trunk_best{best_epoch}.pth").exists()
    assert (model_folder / f"trunk_{EPOCHS}.pth").exists()


def test_primary_metric_must_be_a_current_metric(tmp_path: Path):
    record_keeper, _, _ = logging_presets.get_record_keeper(str(tmp_path / "logs"))
    hooks = logging_presets.get_hook_container(record_keeper, primary_metric="recall_at_16")
    tester = testers.GlobalEmbeddingSpaceTester(accuracy_calculator=RecallAtKAccuracyCalculator((1, 4)))
    with pytest.raises(ValueError, match="recall_at_4"):
        hooks.end_of_epoch_hook(tester, {}, str(tmp_path / "models"))

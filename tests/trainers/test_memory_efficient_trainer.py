"""MemoryEfficientTrainer against PML's MetricLossOnly, and the rest of PML's trainer machinery."""

import copy
import logging
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, testers
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import logging_presets
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from torch import nn

from pml_recallk import MemoryEfficientTrainer

BATCH = 16


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, num_classes=6, per_class=8, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num_classes * per_class, 3, 8, 8, generator=generator)
        self.labels = np.repeat(np.arange(num_classes), per_class)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


class NaNLoss(nn.Module):
    def forward(self, embeddings, labels, indices_tuple=None):
        return embeddings.sum() * float("nan")


@pytest.fixture
def models(ref, device):
    torch.manual_seed(0)
    models = {"trunk": ref.SmallCNN(dropout=0.0), "embedder": nn.Linear(8, 8)}
    return {name: model.to(device, torch.float64) for name, model in models.items()}


@pytest.fixture
def seeded_sampling(monkeypatch):
    """MPerClassSampler draws from c_f.NUMPY_RANDOM: give each run the same generator."""

    def reseed():
        monkeypatch.setattr(c_f, "NUMPY_RANDOM", np.random.default_rng(0))

    return reseed


def make_trainer(trainer_class, models, device, dataset=None, clip=True, **kwargs):
    """One epoch = 3 iterations of 16 (4 classes × 4): miner, loss weight, clipper and lr scheduler on."""
    dataset = dataset or RandomImages()
    optimizers = {
        f"{name}_optimizer": torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9) for name, model in models.items()
    }
    settings = dict(
        models=models,
        optimizers=optimizers,
        batch_size=BATCH,
        loss_funcs={"metric_loss": losses.MultiSimilarityLoss()},
        mining_funcs={"tuple_miner": miners.MultiSimilarityMiner(epsilon=0.1)},
        dataset=dataset,
        sampler=MPerClassSampler(dataset.labels, m=4, batch_size=BATCH, length_before_new_iter=3 * BATCH),
        loss_weights={"metric_loss": 0.5},
        lr_schedulers={
            "trunk_scheduler_by_iteration": torch.optim.lr_scheduler.StepLR(
                optimizers["trunk_optimizer"], step_size=1, gamma=0.5
            )
        },
        gradient_clippers={"trunk_grad_clipper": lambda: nn.utils.clip_grad_norm_(models["trunk"].parameters(), 0.01)}
        if clip
        else None,
        data_device=device,
        dtype=torch.float64,
        dataloader_num_workers=0,
    )
    settings.update(kwargs)
    return trainer_class(**settings)


def parameters(models):
    return [p.detach().clone() for model in models.values() for p in model.parameters()]


def train_recording_losses(trainer, seeded_sampling, num_epochs=1):
    recorded = []
    seeded_sampling()
    trainer.end_of_iteration_hook = lambda t: recorded.append(float(t.losses["total_loss"]))
    trainer.train(num_epochs=num_epochs)
    return recorded


@pytest.mark.parametrize("chunk_size", [5, 16])
def test_steps_equal_metric_loss_only(chunk_size, models, device, seeded_sampling):
    # PML's trainer with its trunk BatchNorm frozen is the reference for batchnorm="freeze".
    plain_models = copy.deepcopy(models)
    plain = make_trainer(MetricLossOnly, plain_models, device, freeze_trunk_batchnorm=True)
    cached = make_trainer(MemoryEfficientTrainer, models, device, chunk_size=chunk_size)

    plain_losses = train_recording_losses(plain, seeded_sampling)
    cached_losses = train_recording_losses(cached, seeded_sampling)

    assert len(cached_losses) == 3
    np.testing.assert_allclose(cached_losses, plain_losses, rtol=1e-10)
    for p, q in zip(parameters(models), parameters(plain_models), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)
    # The iteration scheduler stepped once per iteration, after each step.
    assert cached.optimizers["trunk_optimizer"].param_groups[0]["lr"] == pytest.approx(0.5 * 0.5**3)


def test_gradient_clippers_are_applied(models, device, seeded_sampling):
    # Control for the test above: the clipper changes the result, so equality there includes clipping.
    unclipped_models = copy.deepcopy(models)
    train_recording_losses(make_trainer(MemoryEfficientTrainer, models, device), seeded_sampling)
    train_recording_losses(make_trainer(MemoryEfficientTrainer, unclipped_models, device, clip=False), seeded_sampling)
    assert not torch.allclose(parameters(models)[0], parameters(unclipped_models)[0])


def test_end_of_epoch_hook_can_stop_training(models, device):
    calls = {"iteration": 0, "epoch": 0}

    def end_of_iteration_hook(trainer):
        calls["iteration"] += 1

    def end_of_epoch_hook(trainer):
        calls["epoch"] += 1
        return False

    trainer = make_trainer(
        MemoryEfficientTrainer,
        models,
        device,
        end_of_iteration_hook=end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
    )
    trainer.train(num_epochs=3)
    assert calls == {"iteration": 3, "epoch": 1}


def test_hook_container_logs_tests_saves_and_resumes(models, device, tmp_path):
    record_keeper, _, _ = logging_presets.get_record_keeper(str(tmp_path / "logs"), str(tmp_path / "tensorboard"))
    hooks = logging_presets.get_hook_container(record_keeper, primary_metric="precision_at_1", log_freq=1)
    tester = testers.GlobalEmbeddingSpaceTester(
        end_of_testing_hook=hooks.end_of_testing_hook,
        accuracy_calculator=AccuracyCalculator(
            include=("precision_at_1",), knn_func=CustomKNN(CosineSimilarity()), device=torch.device("cpu")
        ),
        dataloader_num_workers=0,
        data_device=device,
        dtype=torch.float64,
    )
    dataset = RandomImages()
    model_folder = tmp_path / "models"
    end_of_epoch_hook = hooks.end_of_epoch_hook(tester, {"val": dataset}, str(model_folder))
    trainer = make_trainer(
        MemoryEfficientTrainer,
        models,
        device,
        dataset=dataset,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
    )
    trainer.train(num_epochs=2)

    history = hooks.get_loss_history()
    assert len(history["total_loss"]) == 6 and np.isfinite(history["total_loss"]).all()
    assert (model_folder / "trunk_2.pth").exists() and (model_folder / "embedder_2.pth").exists()
    assert hooks.load_latest_saved_models(trainer, str(model_folder), device) == 3


def test_batchnorm_freeze_keeps_running_statistics_and_eval_mode(models, device, ref):
    before = ref.running_statistics(models["trunk"])
    modes = []
    for module in models["trunk"].modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda m, i, o: modes.append(m.training))
    trainer = make_trainer(MemoryEfficientTrainer, models, device, chunk_size=5, batchnorm="freeze")
    trainer.train(num_epochs=1)

    assert modes and not any(modes)
    for stat, stat_before in zip(ref.running_statistics(models["trunk"]), before, strict=True):
        assert torch.equal(stat, stat_before)


def test_batchnorm_no_double_update_updates_once_per_chunk(models, device, ref):
    dataset = RandomImages(num_classes=4, per_class=4)
    reference_trunk = copy.deepcopy(models["trunk"]).train()
    trainer = make_trainer(
        MemoryEfficientTrainer,
        models,
        device,
        dataset=dataset,
        sampler=torch.utils.data.SequentialSampler(dataset),  # one batch: the whole dataset, in order
        chunk_size=5,
        batchnorm="chunk_statistics",
    )
    trainer.train(num_epochs=1)
    with torch.no_grad():
        for chunk in dataset.images.to(device, torch.float64).split(5):
            reference_trunk(chunk)

    for stat, reference_stat in zip(
        ref.running_statistics(models["trunk"]), ref.running_statistics(reference_trunk), strict=True
    ):
        torch.testing.assert_close(stat, reference_stat, rtol=1e-12, atol=1e-12)


def test_bfloat16_autocast_trains_without_a_scaler(ref, device):
    torch.manual_seed(0)
    models = {"trunk": ref.SmallCNN().to(device)}
    before = parameters(models)
    trainer = make_trainer(
        MemoryEfficientTrainer, models, device, dtype=None, amp=torch.bfloat16, iterations_per_epoch=1
    )
    trainer.train(num_epochs=1)
    after = parameters(models)
    assert trainer.grad_scaler is None
    assert all(torch.isfinite(p).all() for p in after)
    assert not torch.equal(before[0], after[0])


# Skipped steps leave the scheduler stepping before the optimizer, as in any PyTorch AMP loop.
@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_float16_autocast_uses_a_grad_scaler_that_skips_overflowing_steps(ref, device):
    torch.manual_seed(0)
    models = {"trunk": ref.SmallCNN().to(device)}
    trainer = make_trainer(
        MemoryEfficientTrainer, models, device, dtype=None, amp=torch.float16, iterations_per_epoch=1
    )
    assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)
    # A scale whose scaled gradients overflow float16: PyTorch skips the step and halves the scale.
    trainer.grad_scaler = torch.amp.GradScaler(device.type, init_scale=2.0**40)
    before = parameters(models)
    trainer.train(num_epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(parameters(models), before, strict=True))
    assert trainer.grad_scaler.get_scale() == 2.0**39

    trainer.grad_scaler = torch.amp.GradScaler(device.type, init_scale=2.0**8)
    trainer.train(num_epochs=1)
    assert not torch.equal(parameters(models)[0], before[0])


def test_nan_loss_stops_naming_the_step_before_any_weight_changes(models, device):
    trainer = make_trainer(MemoryEfficientTrainer, models, device, loss_funcs={"metric_loss": NaNLoss()})
    before = parameters(models)
    with pytest.raises(FloatingPointError, match="epoch 1, iteration 0.*no optimizer step"):
        trainer.train(num_epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(parameters(models), before, strict=True))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_nan_loss_steps_are_skipped_when_not_stopping(models, device, caplog):
    trainer = make_trainer(
        MemoryEfficientTrainer, models, device, loss_funcs={"metric_loss": NaNLoss()}, stop_on_nan=False
    )
    before = parameters(models)
    with caplog.at_level(logging.WARNING, logger=c_f.LOGGER.name):
        trainer.train(num_epochs=1)
    assert all(torch.equal(p, q) for p, q in zip(parameters(models), before, strict=True))
    assert caplog.text.count("skipping this step") == 3


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"chunk_size": 0}, ValueError),
        ({"chunk_size": 1.5}, TypeError),
        ({"batchnorm": "sometimes"}, ValueError),
        ({"amp": torch.float32}, ValueError),
    ],
    ids=["chunk_size_0", "chunk_size_float", "batchnorm", "amp_float32"],
)
def test_rejects_bad_arguments(kwargs, error, models, device):
    with pytest.raises(error, match=next(iter(kwargs))):
        make_trainer(MemoryEfficientTrainer, models, device, **kwargs)


def test_rejects_a_trunk_whose_output_is_not_2d(device):
    trainer = make_trainer(MemoryEfficientTrainer, {"trunk": nn.Conv2d(3, 4, 3).to(device, torch.float64)}, device)
    with pytest.raises(ValueError, match="2-D tensor"):
        trainer.train(num_epochs=1)


# ---- NaN from the model with RS@k, the BatchNorm policy's old name, the whole split as one batch ------------------


def _rsk_trainer(models, device, **kwargs):
    from pml_recallk import RecallKSurrogateLoss

    with torch.no_grad():
        models["embedder"].weight[0, 0] = float("nan")  # every embedding is NaN
    return make_trainer(
        MemoryEfficientTrainer, models, device, loss_funcs={"metric_loss": RecallKSurrogateLoss()}, **kwargs
    )


def _same(before, after):
    return all(torch.equal(p.nan_to_num(), q.nan_to_num()) for p, q in zip(before, after, strict=True))


def test_rsk_with_nan_embeddings_stops_naming_the_step(models, device):
    trainer = _rsk_trainer(models, device)
    before = parameters(models)
    with pytest.raises(FloatingPointError, match="epoch 1, iteration 0: the model returned NaN.*no optimizer step"):
        trainer.train(num_epochs=1)
    assert _same(before, parameters(models))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_rsk_with_nan_embeddings_skips_every_step_and_says_so(models, device, caplog):
    trainer = _rsk_trainer(models, device, stop_on_nan=False)
    before = parameters(models)
    with caplog.at_level(logging.WARNING, logger=c_f.LOGGER.name):
        trainer.train(num_epochs=1)
    assert _same(before, parameters(models))  # momentum SGD would have moved the weights on a zero gradient
    assert caplog.text.count("total_loss is nan") == caplog.text.count("skipping this step") == 3


def test_the_batchnorm_policy_name_of_release_0_1_is_refused(models, device):
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        make_trainer(MemoryEfficientTrainer, models, device, batchnorm="no_double_update")


def test_a_batch_of_the_whole_training_split_steps_like_the_plain_full_batch_gradient(models, device):
    """One iteration whose batch is the whole (48-image) dataset, RS@k on the tiled path, against one plain SGD step
    on the gradient of a single forward of every image."""
    from pml_recallk import RecallKSurrogateLoss

    dataset = RandomImages()
    reference = copy.deepcopy(models)
    loss_fn = RecallKSurrogateLoss(rank_temperature=0.05, path="tiled", tile_size=7)
    trainer = make_trainer(
        MemoryEfficientTrainer,
        models,
        device,
        dataset=dataset,
        batch_size=len(dataset),
        sampler=torch.utils.data.SequentialSampler(dataset),
        loss_funcs={"metric_loss": loss_fn},
        mining_funcs={},
        loss_weights=None,
        lr_schedulers=None,
        gradient_clippers=None,
        chunk_size=10,
        iterations_per_epoch=1,
    )
    trainer.train(num_epochs=1)

    images = dataset.images.to(device, torch.float64)
    labels = torch.as_tensor(dataset.labels, device=device)
    for model in reference.values():
        model.train()
        model.apply(lambda m: m.eval() if isinstance(m, nn.modules.batchnorm._BatchNorm) else None)
    RecallKSurrogateLoss(rank_temperature=0.05, path="dense")(
        reference["embedder"](reference["trunk"](images)), labels
    ).backward()
    with torch.no_grad():
        for model in reference.values():
            for p in model.parameters():
                p -= 0.5 * p.grad  # SGD(lr=0.5, momentum=0.9): the first step has no momentum yet
    for got, expected in zip(parameters(models), parameters(reference), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


class ConstantEmbedder(nn.Module):
    """Every input gets the same embedding: every similarity ties, so RS@k sees no query within reach (loss 1)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(8, dtype=torch.float64))

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_stalled_rsk_loss_warns_once_that_it_gets_no_gradient(device, seeded_sampling, wrapped):
    from pml_recallk import RecallKSurrogateLoss, SimilarityMixup
    from pml_recallk.trainers.collapse import CollapseMonitor, CollapseWarning

    loss, monitor = RecallKSurrogateLoss(), CollapseMonitor()
    torch.manual_seed(0)
    models = {"trunk": ConstantEmbedder().to(device), "embedder": nn.Linear(8, 8).to(device, torch.float64)}
    trainer = make_trainer(
        MemoryEfficientTrainer,
        models,
        device,
        clip=False,
        loss_funcs={"metric_loss": SimilarityMixup(loss, mode="database_only") if wrapped else loss},
        mining_funcs={},
        loss_weights=None,
        lr_schedulers=None,
        chunk_size=64,
        dataset=(data := RandomImages(num_classes=32, per_class=4)),
        batch_size=128,  # tied similarities give every positive the soft rank 1 + 126/2 = 64, far beyond k = 16
        sampler=MPerClassSampler(data.labels, m=4, batch_size=128, length_before_new_iter=3 * 128),
        loss_monitor=monitor.loss_hook(),
    )
    seeded_sampling()
    with pytest.warns(CollapseWarning, match="reaches no query") as caught:
        trainer.train(num_epochs=4)  # 12 steps at loss ≈ 1: the warning comes at the 10th
    assert sum(issubclass(w.category, CollapseWarning) for w in caught) == 1
    assert monitor.collapsed


def test_a_learning_rsk_run_does_not_warn(models, device, seeded_sampling):
    from pml_recallk import RecallKSurrogateLoss
    from pml_recallk.trainers.collapse import CollapseMonitor, CollapseWarning

    monitor, seen = CollapseMonitor(), []
    observe = monitor.loss_hook()
    trainer = make_trainer(
        MemoryEfficientTrainer,
        models,
        device,
        loss_funcs={"metric_loss": RecallKSurrogateLoss()},
        chunk_size=8,
        loss_monitor=lambda losses: (seen.append(dict(losses)), observe(losses)),
    )
    seeded_sampling()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        trainer.train(num_epochs=4)
    assert not monitor.collapsed
    # The hook saw every step's losses, as floats.
    assert len(seen) == 4 * trainer.iterations_per_epoch and all(type(v) is float for v in seen[-1].values())
    assert {"metric_loss", "total_loss"} <= set(seen[-1]) and 0 < seen[-1]["metric_loss"] < 1


def test_loss_monitor_must_be_callable(models, device):
    with pytest.raises(TypeError, match="loss_monitor must be a callable"):
        make_trainer(MemoryEfficientTrainer, models, device, loss_monitor="collapse")

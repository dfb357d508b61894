"""``train.warmup_epochs``: ProxyAnchor's warm-up, in which only the model's embedding layer and the loss's
parameters train (pml_recallk/experiments/train.py, the models' ``embedding_layer()``).

Tiny ProxyAnchor runs on 16-px glyphs record the model's and the loss's states at the start and after every
epoch; weight decay and train-mode BatchNorm are on, so a frozen backbone that moved at all would show.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from pml_recallk.experiments import builders, resolve_config
from pml_recallk.experiments import train as train_module
from pml_recallk.experiments.checkpoints import RunCheckpoints
from pml_recallk.experiments.config import ConfigError, default_config, dumps_toml
from pml_recallk.experiments.train import _backbone_frozen, run_experiment
from pml_recallk.models import SmallConvNet

# A loss with parameters (proxies, their own optimiser) and weight decay, which a frozen backbone must not feel.
WARMUP_RUN = ["loss.name=proxy_anchor", "train.weight_decay=0.01"]
HEAD = "linear."  # SmallConvNet's embedding layer in its state_dict


def quiet(message: str) -> None:
    pass


class _Crash(Exception):
    """Raised by ``on_checkpoint`` after an epoch's checkpoint, so that a crash can be simulated in this process."""


def tiny_config(tiny_overrides: list[str], *overrides: str):
    return resolve_config(overrides=[*tiny_overrides, *WARMUP_RUN, *overrides])


def run_and_record(monkeypatch, config, output, **kwargs) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Run ``config``; return ``[{"model": state, "loss": state}, ...]``: as built, then after every epoch run."""
    states = []

    def record(model_state, loss_state) -> None:
        states.append({"model": copied(model_state), "loss": copied(loss_state)})

    build_setup, save_last = builders.build_setup, RunCheckpoints.save_last

    def recording_build_setup(*args):
        setup = build_setup(*args)
        record(setup.parts.model.state_dict(), setup.parts.loss.state_dict())
        return setup

    def recording_save_last(self, epoch, config, parts, history):
        record(parts.model.state_dict(), parts.loss.state_dict())
        save_last(self, epoch, config, parts, history)

    monkeypatch.setattr(builders, "build_setup", recording_build_setup)
    monkeypatch.setattr(RunCheckpoints, "save_last", recording_save_last)
    run_experiment(config, output, log=quiet, **kwargs)
    return states


def copied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], backbone: bool) -> list[str]:
    """Names of the backbone's (or the head's) tensors, parameters and BatchNorm statistics, that differ."""
    return [k for k in before if k.startswith(HEAD) != backbone and not torch.equal(before[k], after[k])]


@pytest.fixture(scope="module")
def warmed_up(tiny_overrides, tmp_path_factory):
    """Two warm-up epochs of three, uninterrupted."""
    config = tiny_config(tiny_overrides, "train.epochs=3", "train.warmup_epochs=2")
    output = tmp_path_factory.mktemp("warmed-up")
    with pytest.MonkeyPatch.context() as monkeypatch:
        states = run_and_record(monkeypatch, config, output)
    return config, output, states


# ------------------------------------------------------------------------------------------- training


def test_warmup_epochs_leave_the_backbone_bitwise_unchanged_and_train_the_head_and_proxies(warmed_up):
    _, _, states = warmed_up
    assert len(states) == 4  # as built, then after epochs 1, 2 and 3
    start = states[0]
    for epoch in (1, 2):
        # Weights (under weight decay) and the BatchNorm running statistics alike.
        assert changed(start["model"], states[epoch]["model"], backbone=True) == [], epoch
        assert changed(states[epoch - 1]["model"], states[epoch]["model"], backbone=False) != [], epoch
        assert not torch.equal(states[epoch - 1]["loss"]["proxies"], states[epoch]["loss"]["proxies"]), epoch


def test_after_the_warmup_the_backbone_trains(warmed_up):
    _, _, states = warmed_up
    moved = changed(states[2]["model"], states[3]["model"], backbone=True)
    assert "features.0.weight" in moved
    assert "features.1.running_mean" in moved  # BatchNorm trains again


def test_no_warmup_trains_the_backbone_from_the_first_epoch(tiny_overrides, tmp_path, monkeypatch):
    def never(*args):
        raise AssertionError("the backbone was frozen without a warm-up")

    monkeypatch.setattr(train_module, "_backbone_frozen", never)
    config = tiny_config(tiny_overrides, "train.epochs=1")
    assert config["train"]["warmup_epochs"] == 0  # the default
    states = run_and_record(monkeypatch, config, tmp_path)
    moved = changed(states[0]["model"], states[1]["model"], backbone=True)
    assert "features.0.weight" in moved
    assert "features.1.running_mean" in moved


def test_resuming_in_the_middle_of_the_warmup_ends_like_an_uninterrupted_run(warmed_up, tmp_path):
    config, uninterrupted, _ = warmed_up

    def crash_after_epoch_1(epoch: int) -> None:
        if epoch == 1:
            raise _Crash(epoch)

    with pytest.raises(_Crash):
        run_experiment(config, tmp_path, log=quiet, on_checkpoint=crash_after_epoch_1)
    run_experiment(config, tmp_path, resume=True, log=quiet)
    expected = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["epoch"] == expected["epoch"] == 3
    for part in ("model", "loss"):
        for key, tensor in expected[part].items():
            assert torch.equal(tensor, resumed[part][key]), (part, key)
    assert resumed["history"]["loss"] == expected["history"]["loss"]


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_frozen_parameters_get_no_gradient_and_no_weight_decay(optimizer):
    torch.manual_seed(0)
    model = SmallConvNet(embedding_size=8, in_channels=1, width=4)
    config = {"train": {"optimizer": optimizer, "lr": 0.1, "weight_decay": 0.5}, "loss": {"name": "rsk"}}
    step = builders.build_optimizers(config, model, nn.Identity())["trunk_optimizer"]
    trainer = types.SimpleNamespace(freeze_trunk_batchnorm=False)
    before = copied(dict(model.named_parameters()))
    with _backbone_frozen(trainer, model, model.embedding_layer()):
        assert trainer.freeze_trunk_batchnorm  # the trainer's BatchNorm policy (the runs above check the statistics)
        model(torch.randn(4, 1, 16, 16)).sum().backward()
        step.step()
    after = dict(model.named_parameters())
    assert all(p.grad is None for name, p in after.items() if not name.startswith(HEAD))
    assert changed(before, after, backbone=True) == []
    assert changed(before, after, backbone=False) != []
    # Afterwards everything trains again, BatchNorm included.
    assert all(p.requires_grad for p in model.parameters())
    assert trainer.freeze_trunk_batchnorm is False


def test_parameters_frozen_by_the_model_stay_frozen_after_the_warmup():
    model = SmallConvNet(embedding_size=8, in_channels=1, width=4)
    model.features[0].weight.requires_grad_(False)
    with _backbone_frozen(types.SimpleNamespace(freeze_trunk_batchnorm=False), model, model.embedding_layer()):
        pass
    assert not model.features[0].weight.requires_grad
    assert model.features[1].weight.requires_grad


# ------------------------------------------------------------------------------------------ the models


def _resnet50():
    from pml_recallk.models import ResNet50GeM

    return ResNet50GeM(embedding_size=8)


def _vit():
    from pml_recallk.models import ViTEmbedder

    return ViTEmbedder("vit_tiny_patch16_224", embedding_size=8)


@pytest.mark.parametrize(
    "build", [lambda: SmallConvNet(embedding_size=8), _resnet50, _vit], ids=["small_cnn", "resnet50", "vit"]
)
def test_every_model_names_its_final_projection_as_its_embedding_layer(build):
    model = build()
    layer = model.embedding_layer()
    assert layer is not model and any(module is layer for module in model.modules())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert any(m is linears[-1] for m in layer.modules())  # the last Linear of the model: the projection
    assert linears[-1].out_features == model.embedding_size


def test_a_model_without_an_embedding_layer_is_refused_before_anything_is_written(
    tiny_overrides, tmp_path, monkeypatch
):
    build_model = builders.build_model
    monkeypatch.setattr(builders, "build_model", lambda *args: nn.Sequential(build_model(*args)))
    config = tiny_config(tiny_overrides, "train.epochs=2", "train.warmup_epochs=1")
    output = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train\.warmup_epochs .* Sequential names none"):
        run_experiment(config, output, log=quiet)
    assert not output.exists()


# ------------------------------------------------------------------------------------------ the config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.warmup_epochs=1.5"], "train.warmup_epochs must be int, got 1.5"),
        (["train.warmup_epochs=true"], "train.warmup_epochs must be int"),
        (["train.warmup_epochs=-1"], "train.warmup_epochs must be at least 0"),
        (["train.epochs=2", "train.warmup_epochs=2"], r"train.warmup_epochs \(2\) must be below train.epochs \(2\)"),
        (["train.epochs=2", "train.warmup_epochs=5"], r"train.warmup_epochs \(5\) must be below train.epochs \(2\)"),
    ],
)
def test_a_bad_warmup_is_a_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(overrides=overrides)


def test_warmup_epochs_default_to_none_and_are_printed_with_their_meaning():
    assert default_config()["train"]["warmup_epochs"] == 0
    assert "warmup_epochs = 0" in dumps_toml(default_config(), comments=True)
    assert "ProxyAnchor's warm-up" in dumps_toml(default_config(), comments=True)

"""Config → pieces (pml_recallk.experiments.builders): the data-set arguments, channels, loss wrappers, device."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pml_recallk.cli import main
from pml_recallk.datasets import HanGlyphs
from pml_recallk.experiments import builders, resolve_config
from pml_recallk.experiments.config import ConfigError


class FakeHanGlyphs(HanGlyphs):
    """Stands in for HanGlyphs (whose fonts are a separate download): its declarations and from_config, with an
    __init__ that records its arguments and serves "L" images."""

    calls: list[dict] = []

    def __init__(self, split="train", **kwargs):
        FakeHanGlyphs.calls.append({"split": split, **kwargs})
        rng = np.random.default_rng({"train": 0, "test": 1, "pretrain": 2}[split])
        self.labels = np.repeat(np.arange(12), 4)
        self.patterns = rng.integers(0, 256, size=(12, 16, 16), dtype=np.uint8)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return Image.fromarray(self.patterns[self.labels[index]], mode="L"), int(self.labels[index])


@pytest.fixture
def fake_han(monkeypatch):
    FakeHanGlyphs.calls = []
    real = builders.dataset_class
    monkeypatch.setattr(builders, "dataset_class", lambda name: FakeHanGlyphs if name == "han_glyphs" else real(name))
    return FakeHanGlyphs


def test_han_glyphs_gets_its_config_keys_and_one_channel(fake_han, tmp_path):
    overrides = ["data.han_font_dir=/fonts/han", "data.images_per_class=6", "data.split_seed=3",
                 f"data.glyphs_cache_dir={json.dumps(str(tmp_path))}", "data.image_size=16"]  # fmt: skip
    config = resolve_config("han_glyphs", overrides=overrides)
    parts = builders.build_datasets(config)
    assert list(parts) == ["train", "val", "test"]
    expected = {
        "font_dir": "/fonts/han",
        "image_size": 16,
        "images_per_class": 6,
        "seed": 3,
        "cache_dir": str(tmp_path),
    }
    assert fake_han.calls == [{"split": "train", **expected}, {"split": "test", **expected}]
    image, _ = parts["train"][0]
    assert image.shape == (1, 16, 16)  # the small CNN takes the glyphs' one channel
    assert builders.build_model(config)(image[None]).shape == (1, config["model"]["embedding_size"])
    # images_per_class 0 and an empty font folder leave HanGlyphs its own defaults.
    builders.build_datasets(resolve_config("han_glyphs", overrides=["data.image_size=16"]), ["test"])
    assert fake_han.calls[-1] == {"split": "test", "font_dir": None, "image_size": 16, "seed": 0, "cache_dir": None}


def test_pml_recallk_train_dataset_han_glyphs_runs(fake_han, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    small = ["data.image_size=16", "data.batch_size=16", "train.iterations_per_epoch=1", "model.width=4"]
    argv = ["train", "--dataset", "han_glyphs", "--epochs", "1", "--output-dir", str(tmp_path / "run")]
    assert main([*argv, *(a for s in small for a in ("--set", s))]) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["trained"]) == {f"recall_at_{k}" for k in (1, 2, 4, 8, 16, 32)}  # HanGlyphs' preset
    assert "Recall@32" in capsys.readouterr().out


def test_a_split_han_glyphs_has_is_accepted(fake_han):
    config = resolve_config("han_glyphs", overrides=["data.image_size=16"])
    assert len(builders.build_datasets(config, ["pretrain"])["pretrain"]) == 48
    with pytest.raises(ConfigError, match="its splits are train, val, test, pretrain"):
        builders.build_datasets(config, ["level2"])


@pytest.mark.parametrize(
    "overrides, wrapper, inner",
    [
        (["mixup.enabled=true"], "SimilarityMixup", "RecallKSurrogateLoss"),
        (["memory.enabled=true", "memory.size=64"], "CrossBatchMemory", "RecallKSurrogateLoss"),
        (["memory.enabled=true", "memory.size=64", "loss.name=contrastive"], "CrossBatchMemory", "ContrastiveLoss"),
    ],
)
def test_the_loss_is_wrapped_as_the_config_says(overrides, wrapper, inner):
    loss, _ = builders.build_loss(resolve_config(overrides=overrides), num_classes=10)
    assert type(loss).__name__ == wrapper and type(loss.loss).__name__ == inner


def test_a_memory_takes_the_miner():
    config = resolve_config(overrides=["loss.name=multi_similarity", "memory.enabled=true", "memory.size=64"])
    loss, miner = builders.build_loss(config, num_classes=10)
    assert miner is None and type(loss.miner).__name__ == "MultiSimilarityMiner"
    assert loss.memory_size == 64 and loss.embedding_size == config["model"]["embedding_size"]


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_a_device_torch_cannot_see_is_a_clear_error(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no"):
        builders.device_of(resolve_config(overrides=[f"train.device={device}"]))
    assert builders.device_of(resolve_config(overrides=["train.device=auto"])) == torch.device("cpu")


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet_v2_block13"])
def test_channels_last_changes_the_layout_of_the_convolutions_not_what_the_network_computes(name):
    config = resolve_config(overrides=[f"model.name={name}", "model.embedding_size=16", "train.channels_last=true"])
    torch.manual_seed(0)
    model = builders.build_model(config, channels=3).train()  # BatchNorm on batch statistics, as in training
    reference = copy.deepcopy(model).double()
    assert builders.place_model(model, config, torch.device("cpu")) is model
    convolutions = [p for p in model.parameters() if p.ndim == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert not all(p.is_contiguous() for p in convolutions)  # a real change of layout, not a 1x1 no-op
    assert all(p.is_contiguous() for p in model.parameters() if p.ndim != 4)

    images, weights = torch.randn(16, 3, 32, 32), torch.randn(16, 16)
    output = model(images)
    (output * weights).sum().backward()
    embeddings = reference(images.double())
    (embeddings * weights.double()).sum().backward()
    # Against float64: float32 rounding through MobileNetV2's 40 layers measured 3e-5 on these unit embeddings in
    # this layout (4e-6 in the default one) and a gradient 1.4 % off in norm (0.3 %); a layout that mixed channels up
    # would be off by the size of the values.
    assert torch.allclose(output.double(), embeddings, atol=3e-4)
    gradient = torch.cat([p.grad.flatten().double() for p in model.parameters()])
    exact = torch.cat([p.grad.flatten() for p in reference.parameters()])
    assert (gradient - exact).norm() <= 0.1 * exact.norm()

"""build_model: names → classes, and the lazy package exports."""

from __future__ import annotations

import pytest

import pml_recallk.models as models
from pml_recallk.models import MODEL_NAMES, SmallConvNet, build_model


def test_small_cnn_by_name_passes_keyword_arguments():
    model = build_model("small_cnn", embedding_size=32, in_channels=3, norm="group")
    assert isinstance(model, SmallConvNet) and model.embedding_size == 32 and model.in_channels == 3


def test_names():
    assert set(MODEL_NAMES) == {
        "small_cnn",
        "resnet50",
        "vit_b16",
        "vit_b32",
        "mobilenet_v2",
        "mobilenet_v2_block13",
        "mobilenet_v2_block10",
    }


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        build_model("resnet18")
    for name in MODEL_NAMES:
        assert repr(name) in str(error.value)


def test_fixed_arguments_cannot_be_overridden():
    with pytest.raises(ValueError, match="variant"):
        build_model("vit_b32", variant="vit_base_patch16_224")


def test_package_exports():
    for name in (
        "SmallConvNet",
        "ResNet50GeM",
        "ViTEmbedder",
        "MobileNetV2Embedder",
        "GeM",
        "build_model",
        "transforms",
    ):
        assert name in dir(models) and getattr(models, name) is not None
    assert callable(models.transforms.train_transform) and callable(models.transforms.test_transform)
    with pytest.raises(AttributeError):
        models.NotAModel  # noqa: B018

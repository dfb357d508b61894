"""Build an embedding model by name (used by the CLI and the benchmark configs)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torch import nn

# name → (module, class, fixed keyword arguments); modules are imported on use so small_cnn needs no timm.
_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "small_cnn": (".small_cnn", "SmallConvNet", {}),
    "resnet50": (".resnet", "ResNet50GeM", {}),
    "vit_b16": (".vit", "ViTEmbedder", {"variant": "vit_base_patch16_224"}),
    "vit_b32": (".vit", "ViTEmbedder", {"variant": "vit_base_patch32_224"}),
    "mobilenet_v2": (".mobilenet_v2", "MobileNetV2Embedder", {"last_block": None}),
    "mobilenet_v2_block13": (".mobilenet_v2", "MobileNetV2Embedder", {"last_block": 13}),
    "mobilenet_v2_block10": (".mobilenet_v2", "MobileNetV2Embedder", {"last_block": 10}),
}
MODEL_NAMES = tuple(_MODELS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model called ``name`` with ``kwargs`` passed to its class.

    Names: ``"small_cnn"`` (:class:`SmallConvNet`), ``"resnet50"`` (:class:`ResNet50GeM`), ``"vit_b16"`` and
    ``"vit_b32"`` (:class:`ViTEmbedder` with ``vit_base_patch16_224`` / ``vit_base_patch32_224``),
    ``"mobilenet_v2"`` (:class:`MobileNetV2Embedder`, the whole trunk), ``"mobilenet_v2_block13"`` and
    ``"mobilenet_v2_block10"`` (the trunk cut after block 13 / 10).

    Example:
        >>> model = build_model("small_cnn", embedding_size=64, in_channels=3)
        >>> type(model).__name__, model.embedding_size
        ('SmallConvNet', 64)
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r}; choose one of {list(MODEL_NAMES)}")
    module, class_name, fixed = _MODELS[name]
    clashing = sorted(set(fixed) & set(kwargs))
    if clashing:
        raise ValueError(f"model {name!r} fixes {clashing}; do not pass them")
    model_class = getattr(import_module(module, __package__), class_name)
    return model_class(**fixed, **kwargs)

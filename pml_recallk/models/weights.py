"""Loading backbone weights from a local file (never from a hub)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

# Checkpoints often wrap the state dict (training scripts, timm's train.py) or prefix it (DataParallel/DDP).
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
_PREFIXES = ("module.", "backbone.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # installed with timm

        return load_file(str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # weights_only=True refuses pickled objects other than tensors and containers (e.g. the argparse
        # Namespace some training scripts store), because unpickling them can run code.
        raise ValueError(
            f"pretrained_path {path} could not be read as a torch checkpoint of tensors ({error}); "
            "re-save just the state dict with torch.save(model.state_dict(), path)"
        ) from error
    while isinstance(checkpoint, Mapping):
        wrapped = next((key for key in _WRAPPER_KEYS if isinstance(checkpoint.get(key), Mapping)), None)
        if wrapped is None:
            break
        checkpoint = checkpoint[wrapped]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"pretrained_path {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(checkpoint)


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def load_backbone_weights(
    backbone: nn.Module, pretrained_path: str | Path, skip: Callable[[str], bool] | None = None
) -> None:
    """Load a local state dict (``.pth``/``.pt``/``.bin`` or ``.safetensors``) into a timm backbone, strictly.

    A checkpoint may wrap the weights under ``state_dict``/``model`` and prefix every name with ``module.`` or
    ``backbone.``. The ImageNet classifier's weights (timm's ``pretrained_cfg["classifier"]``, e.g. ``fc`` or
    ``head``) are dropped because the backbone is built without a classifier. Any other missing or unexpected
    name, or a shape mismatch, raises ValueError listing them. ``skip(name)`` true drops a checkpoint entry the
    backbone does not have by design (the layers above a trunk's cut).
    """
    path = Path(pretrained_path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_path {path} does not exist (weights are only read from local files)")
    state_dict = _strip_prefixes(_read_state_dict(path))

    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier")
    classifiers = [classifier] if isinstance(classifier, str) else list(classifier or [])
    expected = backbone.state_dict()
    state_dict = {
        key: value
        for key, value in state_dict.items()
        if key in expected
        or not (any(key.startswith(f"{name}.") for name in classifiers) or (skip is not None and skip(key)))
    }
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"pretrained_path {path} does not match the {type(backbone).__name__} backbone: "
            f"missing keys {_summary(missing)}, unexpected keys {_summary(unexpected)}, "
            f"shape mismatches {_summary(mismatched)}"
        )
    backbone.load_state_dict(state_dict, strict=True)


def _summary(items: list[str], limit: int = 10) -> str:
    shown = items[:limit]
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return f"{shown}{more}"

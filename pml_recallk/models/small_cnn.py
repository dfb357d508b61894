"""A small convolutional embedder that trains in minutes on a CPU (32–64 px images)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NORMS = ("batch", "group", "none")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        # Per-sample statistics: both passes of gradient-cached training agree without freezing anything.
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class SmallConvNet(nn.Module):
    """Four conv blocks → global average pool → Linear → L2, about 0.11 M parameters at the default width.

    Block ``i`` is conv3×3 → norm → ReLU with ``width·(1, 2, 4, 8)[i]`` channels, each block but the last
    followed by 2×2 max pooling; any image of at least 8×8 pixels works.

    Args:
        embedding_size: size of the L2-normalised output.
        in_channels: 1 for grayscale (the glyph data), 3 for RGB.
        width: channels of the first block.
        norm: ``"batch"`` (BatchNorm), ``"group"`` (GroupNorm, per-sample) or ``"none"``.

    Example:
        >>> model = SmallConvNet(embedding_size=128, in_channels=1)
        >>> model(torch.randn(4, 1, 32, 32)).shape
        torch.Size([4, 128])
    """

    def __init__(self, embedding_size: int = 128, in_channels: int = 1, width: int = 16, norm: str = "batch"):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {list(_NORMS)}, got {norm!r}")
        for name, value in (("embedding_size", embedding_size), ("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        channels = [in_channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for block, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=norm == "none"),
                _norm_layer(norm, c_out),
                nn.ReLU(inplace=True),
            ]
            if block < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(channels[-1], embedding_size)
        self.embedding_size = embedding_size
        self.in_channels = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"SmallConvNet expects (N, {self.in_channels}, H, W) images, got shape {tuple(images.shape)}"
            )
        pooled = self.features(images).mean(dim=(2, 3))
        return F.normalize(self.linear(pooled), dim=-1)

    def embedding_layer(self) -> nn.Module:
        """The final projection to the embedding (what ``train.warmup_epochs`` trains alone): ``self.linear``."""
        return self.linear

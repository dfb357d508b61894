"""MobileNetV2 (Keras layout) → average pooling → LayerNorm → Linear → L2, for the weights ported from nsfwjs.

The trunk reproduces Keras's ``MobileNetV2(alpha=1.0)`` layer by layer so that the weights converted from the
``nsfwjs`` npm package (``benchmarks/icons/convert_mobilenet_v2.py``) give the same activations as TF.js:
stride-2 convolutions pad asymmetrically (one zero row below and one column to the right, Keras's ``ZeroPadding2D
((0, 1), (0, 1))`` as baked into the model for 224-px inputs), stride-1 depthwise convolutions pad 1 on each side
(Keras "same"), BatchNorm uses epsilon 1e-3, activations are ReLU6, and the linear bottlenecks add a residual
when the stride is 1 and the width does not change.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .heads import EmbeddingHead, freeze_batchnorm_statistics
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .weights import load_backbone_weights

# (expansion t, output channels c, repeats n, first stride s) of the inverted-residual stages (Sandler et al.,
# 2018, table 2); they give the 17 blocks Keras names expanded_conv (block 0) and block_1 … block_16.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
NUM_BLOCKS = sum(n for _, _, n, _ in _STAGES)  # 17: blocks 0 … 16
BATCHNORM_EPS = 1e-3  # Keras's default; PyTorch's is 1e-5


class ConvBN(nn.Module):
    """Conv2d (no bias) → BatchNorm(eps 1e-3) [→ ReLU6], with Keras's padding: a stride-2 convolution pads
    ``(0, 1, 0, 1)`` (right, bottom) by hand, a stride-1 one ``kernel // 2`` on every side."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, groups: int, relu: bool):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=0 if stride == 2 else kernel // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BATCHNORM_EPS)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.relu else x


class InvertedResidual(nn.Module):
    """[1×1 expand → ReLU6] → 3×3 depthwise → ReLU6 → 1×1 linear projection [+ input]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBN(in_channels, hidden, 1, 1, 1, relu=True) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, 3, stride, hidden, relu=True)
        self.project = ConvBN(hidden, out_channels, 1, 1, 1, relu=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return x + out if self.residual else out


class MobileNetV2Trunk(nn.Module):
    """Keras's MobileNetV2 convolutions: ``stem`` (Conv1), ``blocks.0`` … ``blocks.16``, ``last_conv`` (Conv_1).

    Args:
        last_block: keep blocks 0 … ``last_block`` (0–16); None keeps all of them and ``last_conv`` (1280
            channels, Keras's ``out_relu``).

    Example:
        >>> MobileNetV2Trunk(last_block=10)(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 96, 4, 4])
    """

    def __init__(self, last_block: int | None = None):
        super().__init__()
        if last_block is not None and not (isinstance(last_block, int) and 0 <= last_block < NUM_BLOCKS):
            raise ValueError(f"last_block must be an integer in 0…{NUM_BLOCKS - 1} or None (all), got {last_block!r}")
        self.stem = ConvBN(3, 32, 3, 2, 1, relu=True)
        blocks, channels = [], 32
        for expansion, out_channels, repeats, stride in _STAGES:
            for repeat in range(repeats):
                blocks.append(InvertedResidual(channels, out_channels, stride if repeat == 0 else 1, expansion))
                channels = out_channels
        keep = NUM_BLOCKS if last_block is None else last_block + 1
        self.blocks = nn.Sequential(*blocks[:keep])
        self.last_conv = ConvBN(320, 1280, 1, 1, 1, relu=True) if last_block is None else None
        self.num_features = 1280 if last_block is None else blocks[keep - 1].project.conv.out_channels

    def is_above_cut(self, name: str) -> bool:
        """Whether the state-dict entry ``name`` of a whole trunk belongs to a layer this cut trunk leaves out."""
        parts = name.split(".")
        if parts[0] == "last_conv":
            return self.last_conv is None
        return parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) >= len(self.blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(images))
        return self.last_conv(features) if self.last_conv is not None else features


class MobileNetV2Embedder(nn.Module):
    """MobileNetV2 trunk → global average pooling → LayerNorm → Linear → L2.

    Inputs are the project's normalised images (``models.transforms``: ImageNet mean/std on 3 channels; a grey
    image is converted to RGB first, so its three channels are equal). The model undoes that normalisation
    (``x · std + mean``), so the trunk sees pixels in [0, 1] — the range nsfwjs feeds its MobileNetV2 and the
    range the ported weights were last trained with. Pooling is the average, as in Keras's MobileNetV2: the
    output of a cut at a block is a linear bottleneck (it can be negative), which GeM's clamp would distort.

    Args:
        embedding_size: size of the L2-normalised output.
        pretrained_path: a local state dict of :class:`MobileNetV2Trunk` (``convert_mobilenet_v2.py`` writes one),
            or None for random initialisation. A whole-trunk file also loads into a cut trunk (the blocks above
            ``last_block`` and ``last_conv`` are skipped). Nothing is ever downloaded.
        last_block: cut the trunk after this block (0–16); None keeps the whole trunk through Conv_1 (1280
            features). In the nsfwjs weights blocks 0–10 are the frozen ImageNet part and blocks 11–16 with Conv_1
            were fine-tuned for a 5-class image task.
        freeze_batchnorm: keep every BatchNorm in eval mode permanently (as ResNet50GeM does), so its running
            statistics stay the pretrained ones and gradient-cached passes see the same network.

    Example:
        >>> model = MobileNetV2Embedder(embedding_size=64, last_block=13)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        embedding_size: int = 512,
        pretrained_path: str | Path | None = None,
        last_block: int | None = None,
        freeze_batchnorm: bool = True,
    ):
        super().__init__()
        self.backbone = MobileNetV2Trunk(last_block)
        if pretrained_path is not None:
            load_backbone_weights(self.backbone, pretrained_path, skip=self.backbone.is_above_cut)
        self.head = EmbeddingHead(self.backbone.num_features, embedding_size)
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.embedding_size = embedding_size
        self.last_block = last_block
        self.freeze_batchnorm = freeze_batchnorm
        self.train()

    def train(self, mode: bool = True) -> MobileNetV2Embedder:
        super().train(mode)
        if self.freeze_batchnorm:
            freeze_batchnorm_statistics(self)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(N, num_features)`` of normalised ``(N, 3, H, W)`` images (no head)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MobileNetV2Embedder expects (N, 3, H, W) images, got shape {tuple(images.shape)}")
        pixels = images * self.input_std + self.input_mean
        return self.backbone(pixels).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def embedding_layer(self) -> nn.Module:
        """The final projection to the embedding (what ``train.warmup_epochs`` trains alone): the LayerNorm →
        Linear head."""
        return self.head

"""ResNet-50 → GeM → LayerNorm → Linear → L2, with frozen BatchNorm (the paper's CNN)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .heads import EmbeddingHead, GeM, freeze_batchnorm_statistics
from .weights import load_backbone_weights


class ResNet50GeM(nn.Module):
    """The paper's ResNet-50 embedder: conv trunk → GeM (learnable p, init 3) → LayerNorm(2048) → Linear → L2.

    The trunk is timm's ``resnet50`` without pooling or classifier. With ``freeze_batchnorm=True`` (the paper's
    setting) every BatchNorm layer stays in eval mode for good, also after ``.train()``: its running statistics
    never change, so the two forward passes of gradient-cached training see the same network. Its affine weight
    and bias still train.

    Args:
        embedding_size: size of the L2-normalised output.
        pretrained_path: a local state dict of timm's ``resnet50`` (ImageNet weights), or None for random
            initialisation. Nothing is ever downloaded.
        freeze_batchnorm: keep BatchNorm in eval mode permanently.
        gem_p: initial GeM exponent.

    Example:
        >>> model = ResNet50GeM(embedding_size=512)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        embedding_size: int = 512,
        pretrained_path: str | Path | None = None,
        freeze_batchnorm: bool = True,
        gem_p: float = 3.0,
    ):
        super().__init__()
        self.backbone = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="")
        if pretrained_path is not None:
            load_backbone_weights(self.backbone, pretrained_path)
        self.pool = GeM(p=gem_p)
        self.head = EmbeddingHead(self.backbone.num_features, embedding_size)
        self.embedding_size = embedding_size
        self.freeze_batchnorm = freeze_batchnorm
        self.train()

    def train(self, mode: bool = True) -> ResNet50GeM:
        super().train(mode)
        if self.freeze_batchnorm:
            freeze_batchnorm_statistics(self)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(images)))

    def embedding_layer(self) -> nn.Module:
        """The final projection to the embedding (what ``train.warmup_epochs`` trains alone): the LayerNorm →
        Linear head; GeM's exponent counts as the backbone's."""
        return self.head

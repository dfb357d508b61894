"""ViT-B → CLS token → LayerNorm → Linear → L2 (the paper's transformer embedders)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from .heads import EmbeddingHead
from .weights import load_backbone_weights


class ViTEmbedder(nn.Module):
    """A timm Vision Transformer's CLS token → LayerNorm(768) → Linear → L2.

    The backbone is built with ``num_classes=0`` and token pooling, so it returns the CLS token after the
    transformer's final norm. The released code used timm 0.4.12's ImageNet-21k models, whose extra pre-logits
    layer (Linear + Tanh) recent timm versions no longer have; load 21k weights saved from a current timm model.

    Args:
        variant: a timm ViT with a class token, e.g. ``"vit_base_patch16_224"`` (ViT-B/16) or
            ``"vit_base_patch32_224"`` (ViT-B/32).
        embedding_size: size of the L2-normalised output.
        pretrained_path: a local state dict of that timm model, or None for random initialisation. Nothing is
            ever downloaded.

    Example:
        >>> model = ViTEmbedder("vit_base_patch32_224", embedding_size=512)  # doctest: +SKIP
        >>> model(torch.randn(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """

    def __init__(
        self,
        variant: str = "vit_base_patch16_224",
        embedding_size: int = 512,
        pretrained_path: str | Path | None = None,
    ):
        super().__init__()
        if not variant.startswith("vit_"):
            raise ValueError(f"variant must name a timm ViT such as 'vit_base_patch16_224', got {variant!r}")
        self.backbone = timm.create_model(variant, pretrained=False, num_classes=0, global_pool="token")
        if getattr(self.backbone, "cls_token", None) is None:
            raise ValueError(f"timm model {variant!r} has no class token; ViTEmbedder takes the CLS token")
        if pretrained_path is not None:
            load_backbone_weights(self.backbone, pretrained_path)
        self.head = EmbeddingHead(self.backbone.num_features, embedding_size)
        self.variant = variant
        self.embedding_size = embedding_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def embedding_layer(self) -> nn.Module:
        """The final projection to the embedding (what ``train.warmup_epochs`` trains alone): the LayerNorm →
        Linear head."""
        return self.head

"""Pooling and projection layers shared by the backbones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent.

    For a feature map ``x`` (N, C, H, W):

        GeM(x)_c = ( mean_{h,w} max(x_{c,h,w}, eps)^p )^(1/p)

    ``p = 1`` is average pooling and ``p → ∞`` max pooling; the paper initialises ``p = 3`` and learns it. The
    clamp at ``eps`` keeps the fractional powers defined (ReLU features can be 0).

    Args:
        p: initial exponent (> 0).
        eps: lower clamp of the features.
        learn_p: learn ``p`` by gradient descent (the paper does).

    Example:
        >>> pool = GeM()
        >>> pool(torch.rand(2, 2048, 7, 7)).shape
        torch.Size([2, 2048])
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM: p must be > 0, got {p}")
        if eps <= 0:
            raise ValueError(f"GeM: eps must be > 0, got {eps}")
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"GeM expects a (N, C, H, W) feature map, got shape {tuple(x.shape)}")
        p = self.p.to(x.dtype)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4g}, eps={self.eps}"


class EmbeddingHead(nn.Module):
    """LayerNorm → Linear → L2 normalisation, the paper's head on pooled features.

    Args:
        in_features: size of the pooled feature (2048 for ResNet-50, 768 for ViT-B).
        embedding_size: size of the output embedding.

    Example:
        >>> head = EmbeddingHead(2048, 512)
        >>> embeddings = head(torch.randn(3, 2048))
        >>> embeddings.shape, torch.allclose(embeddings.norm(dim=1), torch.ones(3))
        (torch.Size([3, 512]), True)
    """

    def __init__(self, in_features: int, embedding_size: int):
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be a positive integer, got {embedding_size}")
        self.norm = nn.LayerNorm(in_features)
        self.linear = nn.Linear(in_features, embedding_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(self.norm(features)), dim=-1)


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm layer of ``model`` in eval mode: its running statistics stop changing (a sample's
    embedding no longer depends on its batch); its affine weight and bias still train. Call it after
    ``model.train()``, which would turn them back to training mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()

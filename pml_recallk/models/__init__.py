"""Embedding networks: the paper's heads on timm backbones, and a small CNN for CPU runs.

Every model maps images to L2-normalised ``(N, embedding_size)`` embeddings and returns its final projection
from ``embedding_layer()`` (the part a warm-up trains alone). Imports are lazy so that the small CNN does not need
timm, and nothing here downloads weights (``pretrained_path`` reads a local file).
"""

from .._lazy import lazy_names

_PUBLIC = {
    "SmallConvNet": ".small_cnn",
    "ResNet50GeM": ".resnet",
    "ViTEmbedder": ".vit",
    "MobileNetV2Embedder": ".mobilenet_v2",
    "GeM": ".heads",
    "EmbeddingHead": ".heads",
    "build_model": ".registry",
    "MODEL_NAMES": ".registry",
}

__all__ = sorted([*_PUBLIC, "transforms"])
__getattr__, __dir__ = lazy_names(globals(), {**_PUBLIC, "transforms": ".transforms"})

"""Very large batches on one device: the gradient cache and the PML trainer built on it."""

from .gradient_cache import cached_backward
from .memory_efficient_trainer import MemoryEfficientTrainer

__all__ = ["MemoryEfficientTrainer", "cached_backward"]

from .cross_batch_memory import CrossBatchMemory
from .recall_k_surrogate_loss import RecallKSurrogateLoss
from .similarity_mixup import SimilarityMixup

__all__ = ["CrossBatchMemory", "RecallKSurrogateLoss", "SimilarityMixup"]

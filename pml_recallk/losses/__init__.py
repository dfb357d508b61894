from .recall_k_surrogate_loss import RecallKSurrogateLoss
from .similarity_mixup import SimilarityMixup

__all__ = ["RecallKSurrogateLoss", "SimilarityMixup"]

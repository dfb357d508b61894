from .recall_k_surrogate_loss import RecallKSurrogateLoss

__all__ = ["RecallKSurrogateLoss", "SimilarityMixup"]


def __getattr__(name):
    if name == "SimilarityMixup":
        from .similarity_mixup import SimilarityMixup

        return SimilarityMixup
    raise AttributeError(name)

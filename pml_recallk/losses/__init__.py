from .cross_batch_memory import CrossBatchMemory
from .rank_temperature_schedule import RankTemperatureSchedule
from .recall_k_surrogate_loss import RecallKSurrogateLoss
from .similarity_mixup import SimilarityMixup

__all__ = ["CrossBatchMemory", "RankTemperatureSchedule", "RecallKSurrogateLoss", "SimilarityMixup"]

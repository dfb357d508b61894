"""RecallKSurrogateLoss: the Recall@k surrogate (RS@k) of Patel, Tolias and Matas (CVPR 2022) as a PML loss."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .. import functional as F


class RecallKSurrogateLoss(BaseMetricLossFunction):
    r"""Recall@k surrogate loss (RS@k).

    For every query q of the batch, with database Ω_q (the rest of the batch, or all of ``ref_emb``) and
    positives P_q ⊆ Ω_q (same label)::

        r̃(q,p) = 1 + Σ_{z ∈ Ω_q, z ≠ p} σ((s(q,z) − s(q,p)) / rank_temperature)
        R̃_k(q) = min(Σ_{p ∈ P_q} σ((k + k_margin − r̃(q,p)) / k_temperature_k), k) / min(k, |P_q|)
        ℓ(q)   = 1 − mean_{k ∈ k_values} R̃_k(q)

    The loss is the reducer's reduction (mean by default) of ℓ(q) over the queries that have a positive.

    Args:
        k_values: the k's whose surrogate recall is averaged.
        rank_temperature: τ of the sigmoid that turns similarity differences into a soft rank.
        k_temperature: τ of the sigmoid on k − rank; one float, or one per k.
        k_margin: shifts the threshold to k + k_margin (0.5 makes the zero-temperature limit exactly recall@k).
        count_query_in_rank: count the query itself in the rank of its positives, as the authors' released code
            does (inflates every rank by about 1). Default: the paper's definition, query excluded.
        query_chunk_size: queries per chunk; memory grows with chunk × max positives × database size. ``None``
            chooses about 2 M (CPU) or 16 M (GPU) sigmoid terms per chunk.
        **kwargs: PML's ``distance`` (a similarity: ``CosineSimilarity``, the default, or
            ``DotProductSimilarity``), ``reducer``, ``embedding_regularizer``, ...

    Example:
        >>> import torch
        >>> from pml_recallk import RecallKSurrogateLoss
        >>> loss_fn = RecallKSurrogateLoss()
        >>> embeddings = torch.randn(32, 16, requires_grad=True)
        >>> labels = torch.arange(8).repeat_interleave(4)
        >>> loss = loss_fn(embeddings, labels)
        >>> loss.backward()

    The loss is computed in float32 even under autocast (float64 stays float64).
    """

    def __init__(
        self,
        k_values: Sequence[int] = (1, 2, 4, 8, 16),
        rank_temperature: float = 0.01,
        k_temperature: float | Sequence[float] = 1.0,
        k_margin: float = 0.0,
        count_query_in_rank: bool = False,
        query_chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.k_values = _check_k_values(k_values)
        self.rank_temperature = _check_temperature(rank_temperature, "rank_temperature")
        self.k_temperature = _check_k_temperature(k_temperature, self.k_values)
        if not isinstance(k_margin, numbers.Real) or isinstance(k_margin, bool) or k_margin != k_margin:
            raise TypeError(f"k_margin must be a real number, got {k_margin!r}")
        self.k_margin = float(k_margin)
        if not isinstance(count_query_in_rank, bool):
            raise TypeError(f"count_query_in_rank must be True or False, got {count_query_in_rank!r}")
        self.count_query_in_rank = count_query_in_rank
        self.query_chunk_size = check_positive_int_or_none(query_chunk_size, "query_chunk_size")
        if not self.distance.is_inverted:
            raise ValueError(
                f"RecallKSurrogateLoss ranks by similarity, but distance={type(self.distance).__name__} grows with "
                "dissimilarity; use CosineSimilarity() (the default) or DotProductSimilarity()"
            )
        self.add_to_recordable_attributes(
            list_of_names=[
                "k_values",
                "rank_temperature",
                "k_temperature",
                "k_margin",
                "count_query_in_rank",
            ],
            is_stat=False,
        )

    def get_default_distance(self):
        return CosineSimilarity()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        same_set = ref_emb is embeddings
        if not same_set and ref_labels is None:
            raise ValueError("ref_emb was given without ref_labels; pass the labels of ref_emb as ref_labels")
        check_embeddings(embeddings, "embeddings")
        check_labels(labels, "labels")
        if not same_set:
            check_embeddings(ref_emb, "ref_emb")
            check_labels(ref_labels, "ref_labels")
        with loss_precision(embeddings):
            embeddings, ref_emb = float_embeddings(embeddings), float_embeddings(ref_emb)
            sim = self.distance(embeddings, embeddings if same_set else ref_emb)
            self_index = torch.arange(len(embeddings), device=embeddings.device) if same_set else None
            weights = lmu.convert_to_weights(indices_tuple, labels, dtype=sim.dtype, using_ref=not same_set)
            return self.loss_from_similarities(sim, labels, ref_labels, self_index, weights=weights)

    def loss_from_similarities(
        self,
        sim: torch.Tensor,
        query_labels: torch.Tensor,
        database_labels: torch.Tensor,
        self_index: torch.Tensor | None = None,
        excluded_index: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict:
        """PML loss dict from a precomputed (queries × database) similarity matrix.

        ``self_index[q]`` is the database column of query q itself (never a positive; outside the database unless
        ``count_query_in_rank``), ``excluded_index`` (queries × X, padded with -1) lists further columns outside
        each query's database, and ``weights`` are per-query miner weights. ``SimilarityMixup`` uses this entry.
        """
        per_query, has_positive = F.recall_k_surrogate_loss(
            sim,
            query_labels,
            database_labels,
            self_index=self_index,
            excluded_index=excluded_index,
            k_values=self.k_values,
            rank_temperature=self.rank_temperature,
            k_temperature=self.k_temperature,
            k_margin=self.k_margin,
            count_query_in_rank=self.count_query_in_rank,
            query_chunk_size=self.query_chunk_size,
        )
        if not bool(has_positive.any()):
            return self.zero_losses()
        indices = torch.where(has_positive)[0]
        losses = per_query[indices]
        if weights is not None:
            losses = losses * weights[indices]
        return {"loss": {"losses": losses, "indices": indices, "reduction_type": "element"}}


def _check_k_values(k_values) -> list[int]:
    if isinstance(k_values, (numbers.Integral, str)) or not isinstance(k_values, Sequence):
        raise TypeError(f"k_values must be a sequence of positive ints such as (1, 2, 4, 8, 16), got {k_values!r}")
    if len(k_values) == 0:
        raise ValueError("k_values is empty; give at least one k, e.g. k_values=(1, 2, 4, 8, 16)")
    for k in k_values:
        if not isinstance(k, numbers.Integral) or isinstance(k, bool):
            raise TypeError(f"k_values must hold ints, got {k!r} in {tuple(k_values)!r}")
        if k <= 0:
            raise ValueError(f"k_values must be positive, got {k} in {tuple(k_values)!r}")
    if len(set(k_values)) != len(k_values):
        raise ValueError(f"k_values has duplicates: {tuple(k_values)!r}")
    # A list, not a tuple: record-keeper (PML's logging hooks) stores lists and fails on tuples.
    return [int(k) for k in k_values]


def _check_temperature(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a positive float, got {value!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_k_temperature(value, k_values: list[int]) -> float | list[float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _check_temperature(value, "k_temperature")
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"k_temperature must be a float or one float per k, got {value!r}")
    if len(value) != len(k_values):
        raise ValueError(
            f"k_temperature has {len(value)} values but k_values={k_values} has {len(k_values)}; give one per k"
        )
    return [_check_temperature(t, "k_temperature") for t in value]


def check_positive_int_or_none(value, name: str) -> int | None:
    if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def check_embeddings(embeddings: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(embeddings) or embeddings.ndim != 2:
        shape = tuple(embeddings.shape) if torch.is_tensor(embeddings) else type(embeddings).__name__
        raise ValueError(f"{name} must be a 2-D tensor (batch_size, embedding_size), got {shape}")
    if len(embeddings) == 0:
        raise ValueError(f"{name} is empty; the loss needs at least one query and one database item")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {embeddings.dtype}")
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError(f"{name} contains NaN or inf; check the model's output (learning rate, inputs)")


def check_labels(labels: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(labels):
        raise TypeError(f"{name} must be a torch tensor of integer class ids, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (batch_size,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {labels.dtype}; convert with .long()")


def float_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 → float32, so that (s_z − s_p)/0.01 does not overflow or lose the ranking."""
    return embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings


def loss_precision(embeddings: torch.Tensor):
    """A context that turns autocast off, so the loss runs in the embeddings' (float32/float64) precision."""
    return torch.autocast(device_type=embeddings.device.type, enabled=False)

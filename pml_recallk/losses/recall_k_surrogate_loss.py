"""RecallKSurrogateLoss: the Recall@k surrogate (RS@k) of Patel, Tolias and Matas (CVPR 2022) as a PML loss."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .. import functional
from .._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_indices_tuple,
    check_k_values,
    check_labels,
    check_positive_float,
    check_positive_int,
    check_real,
)
from .efficient_gather import EfficientGather

PATHS = ("auto", "dense", "tiled", "fused")


class NothingToLearnWarning(UserWarning):
    """RS@k is 0, or Recall@k trivially 1, whatever the embeddings: the batch cannot train the model."""


# path="auto" takes the tiled path when the Nq×N similarities would have more elements than this (64 MB in float32):
# below it the dense path holds them cheaply and is as fast (benchmarks/results/loss_speed_tiled.md).
AUTO_TILED_MIN_SIMILARITIES = 1 << 24


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
        path: how the Nq×N similarities are held. ``"dense"``: as one matrix (and its gradient), any similarity.
            ``"tiled"``: never as a whole; tiles of ``tile_size`` queries are computed from the embeddings in
            forward and again in backward, memory O((Nq + N)·d + one tile); needs ``CosineSimilarity`` or
            ``DotProductSimilarity``. ``"fused"``: tiled, with the sigmoid sums of each tile in a Triton kernel
            (CUDA, or ``TRITON_INTERPRET=1``), so no chunk of Q×P×N sigmoids exists either. ``"auto"``
            (default): tiled when the similarity allows it and Nq×N > 2²⁴ (B > 4,096 for a batch that is its own
            database), else dense. Every path gives the same numbers (to float rounding).
        tile_size: queries per similarity tile of the tiled paths; ``None``: about 8 M (CPU) or 64 M (GPU)
            similarities per tile.
        calibration_weight: λ of a calibration term beside the smooth rank, ℓ(q) = (1 − λ)·ℓ_RS@k(q) + λ·C(q),
            with C(q) the mean hinge of q's positives below ``calibration_margins[0]`` and of its negatives above
            ``calibration_margins[1]`` (ROADMAP's, Ramzi et al. 2021;
            :func:`~pml_recallk.functional.calibration_loss`). 0 (default): RS@k alone, the paper's loss.
            docs/method.md §2 has the term; docs/icons_benchmark.md measures it.
        calibration_margins: (α, β) of the calibration term, in similarity units (ROADMAP's 0.9 and 0.6 for
            cosine similarity).
        **kwargs: PML's ``distance`` (a similarity: ``CosineSimilarity``, the default, or
            ``DotProductSimilarity`` with ``power=1``), ``reducer``, ``embedding_regularizer``, ...

    Example:
        >>> import torch
        >>> from pml_recallk import RecallKSurrogateLoss
        >>> loss_fn = RecallKSurrogateLoss()
        >>> embeddings = torch.randn(32, 16, requires_grad=True)
        >>> labels = torch.arange(8).repeat_interleave(4)
        >>> loss = loss_fn(embeddings, labels)
        >>> loss.backward()

    The loss is computed in float32 even under autocast (float64 stays float64). Non-finite embeddings, or
    similarities that overflow, raise ``ValueError`` (one host sync per call, on the per-query losses).
    ``cached_backward`` and ``MemoryEfficientTrainer`` check the model's embeddings before the loss, so their
    ``stop_on_nan=False`` policy skips such a step instead.
    """

    def __init__(
        self,
        k_values: Sequence[int] = (1, 2, 4, 8, 16),
        rank_temperature: float = 0.01,
        k_temperature: float | Sequence[float] = 1.0,
        k_margin: float = 0.0,
        count_query_in_rank: bool = False,
        query_chunk_size: int | None = None,
        path: str = "auto",
        tile_size: int | None = None,
        calibration_weight: float = 0.0,
        calibration_margins: Sequence[float] = (0.9, 0.6),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.k_values = check_k_values(k_values)
        self.rank_temperature = check_positive_float(rank_temperature, "rank_temperature")
        self.k_temperature = _check_k_temperature(k_temperature, self.k_values)
        self.k_margin = check_real(k_margin, "k_margin")
        self.count_query_in_rank = check_bool(count_query_in_rank, "count_query_in_rank")
        self.query_chunk_size = check_positive_int(query_chunk_size, "query_chunk_size", allow_none=True)
        self.tile_size = check_positive_int(tile_size, "tile_size", allow_none=True)
        _check_similarity(self.distance)
        self.path = _check_path(path, self.distance)
        self.calibration_weight = _check_calibration_weight(calibration_weight)
        self.calibration_margins = _check_calibration_margins(calibration_margins)
        self._warned_nothing_to_learn = False
        self.add_to_recordable_attributes(
            list_of_names=[
                "k_values",
                "rank_temperature",
                "k_temperature",
                "k_margin",
                "count_query_in_rank",
                "calibration_weight",
            ],  # fmt: skip
            is_stat=False,
        )

    def get_default_distance(self):
        return CosineSimilarity()

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple=None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        *,
        self_index: torch.Tensor | None = None,
        excluded: torch.Tensor | None = None,
        ref_mixup: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The reduced loss of the queries ``embeddings`` against the database ``ref_emb`` (default: the batch).

        The one entry point for "these queries, this database, these exclusions" (``CrossBatchMemory`` calls it;
        a wrapper should too). PML's arguments, plus three keywords that need ``ref_emb`` (without it the batch
        is its own database and each query's own column is left out automatically):

        - ``self_index`` (Nq,) long: the database column that holds each query itself (-1: none). It is never
          a positive, and is outside the query's database unless ``count_query_in_rank``.
        - ``excluded`` (Nq, X) long: further database columns outside each query's database, padded with -1.
          An index rather than a mask, so the dense, tiled and fused paths take it without an Nq×N (or Nq×N×N)
          tensor.
        - ``ref_mixup`` ``(first, second, alpha)``, each (V,): V virtual database items
          ``alpha·ê[first] + (1 − alpha)·ê[second]`` mixed from the database columns as the similarity sees them
          (L2-normalised for ``CosineSimilarity``; not re-normalised), labelled ``ref_labels[first]`` and appended
          as columns ``len(ref_emb) … len(ref_emb) + V − 1`` (``excluded`` may name them). SiMix's database mode;
          needs a dot-product similarity.

        Called by PML's ``DistributedLossWrapper(..., efficient=True)``, each query's own gathered copy is found
        and left out, and the other ranks' columns carry gradient back to their ranks, so that the step is the
        full batch's (see :class:`~pml_recallk.losses.efficient_gather.EfficientGather`).

        Example:
            >>> import torch
            >>> from pml_recallk import RecallKSurrogateLoss
            >>> queries, database = torch.randn(4, 8), torch.randn(10, 8)
            >>> queries_labels, database_labels = torch.tensor([0, 1, 2, 3]), torch.arange(10) % 4
            >>> database[:4] = queries  # the queries are also columns 0-3 of the database
            >>> loss = RecallKSurrogateLoss(k_values=(1, 2))(
            ...     queries, queries_labels, ref_emb=database, ref_labels=database_labels,
            ...     self_index=torch.arange(4), excluded=torch.tensor([[9], [-1], [-1], [-1]]))
            >>> loss.shape
            torch.Size([])
        """
        c_f.labels_required(labels)
        check_embeddings(embeddings, "embeddings")
        check_labels(labels, "labels", length=len(embeddings))
        if ref_emb is not None:
            _check_reference(embeddings, ref_emb, ref_labels)
        elif ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb; pass the embeddings of ref_labels as ref_emb")
        elif self_index is not None or excluded is not None or ref_mixup is not None:
            raise ValueError(
                "self_index, excluded and ref_mixup name columns of ref_emb; pass ref_emb and ref_labels with them "
                "(without ref_emb each query's own column is left out automatically)"
            )
        self.reset_stats()
        labels = c_f.to_device(labels, embeddings)
        ref_emb, ref_labels = c_f.set_ref_emb(embeddings, labels, ref_emb, ref_labels)
        database = _Database.checked(len(embeddings), ref_emb, self_index, excluded, ref_mixup, self.distance)
        check_indices_tuple(indices_tuple, len(embeddings), len(ref_emb))
        gathered = None
        if ref_emb is not embeddings and all(part is None for part in database):  # no column named: PML's call
            gathered = EfficientGather.detect(self, embeddings, labels, ref_emb, ref_labels)
        if gathered is not None:
            ref_emb, database = gathered.database, database._replace(self_index=gathered.self_index)
        loss_dict = self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, database=database)
        self.add_embedding_regularization_to_loss_dict(loss_dict, embeddings)
        loss = self.reducer(loss_dict, embeddings, labels)
        return loss if gathered is None else gathered.share_of_global_mean(loss, loss_dict)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, database=None):
        same_set = ref_emb is embeddings
        database = database or _Database(None, None, None)
        with loss_precision(embeddings):
            query = float_embeddings(embeddings)
            self_index = torch.arange(len(query), device=query.device) if same_set else database.self_index
            weights = lmu.convert_to_weights(indices_tuple, labels, dtype=query.dtype, using_ref=not same_set)
            if not isinstance(self.distance, DotProductSimilarity):
                sim = self.distance(query, float_embeddings(ref_emb))
                return self.loss_from_similarities(sim, labels, ref_labels, self_index, database.excluded, weights)
            seen_query = self.distance.maybe_normalize(query)
            seen_database = seen_query if same_set else self.distance.maybe_normalize(float_embeddings(ref_emb))
            self.distance.set_default_stats(query, ref_emb, seen_query, seen_database)
            seen_database, database_labels = database.mixed(seen_database, ref_labels)
            return self.loss_from_normalized_embeddings(
                seen_query, labels, seen_database, database_labels, self_index, database.excluded, weights=weights
            )

    def resolve_path(self, num_queries: int, database_size: int) -> str:
        """The path (``"dense"``, ``"tiled"`` or ``"fused"``) that a loss of this size takes."""
        if self.path != "auto":
            return self.path
        if not isinstance(self.distance, DotProductSimilarity):
            return "dense"
        return "tiled" if num_queries * database_size > AUTO_TILED_MIN_SIMILARITIES else "dense"

    def loss_from_normalized_embeddings(
        self,
        query_emb: torch.Tensor,
        query_labels: torch.Tensor,
        database_emb: torch.Tensor,
        database_labels: torch.Tensor,
        self_index: torch.Tensor | None = None,
        excluded_index: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict:
        """PML loss dict for the similarities ``s = query_emb @ database_emb.T`` (embeddings as the similarity sees
        them, already normalised), on the dense or the tiled path (:meth:`resolve_path`). Arguments as in
        :meth:`loss_from_similarities`; ``SimilarityMixup`` uses this entry with its virtual embeddings."""
        path = self.resolve_path(len(query_emb), len(database_emb))
        sizes = self._database_sizes(len(database_emb), self_index, excluded_index)
        if path == "dense":
            sim = self.distance.compute_mat(query_emb, database_emb)
            per_query, has_positive = functional.recall_k_surrogate_loss(
                sim, query_labels, database_labels, self_index, excluded_index, **self._functional_kwargs()
            )
            if self.calibration_weight:
                calibration = functional.calibration_loss(
                    sim, query_labels, database_labels, self_index, excluded_index, *self.calibration_margins
                )
                per_query = self._calibrated(per_query, calibration)
            return self._loss_dict(per_query, has_positive, weights, (query_emb, database_emb), sizes)
        if path == "fused":
            from .._triton import check_triton_usable

            check_triton_usable(query_emb.device)
        per_query, has_positive = functional.recall_k_surrogate_loss_tiled(
            query_emb,
            database_emb,
            query_labels,
            database_labels,
            self_index=self_index,
            excluded_index=excluded_index,
            tile_size=self.tile_size,
            kernel="triton" if path == "fused" else "torch",
            **self._functional_kwargs(),
        )
        if self.calibration_weight:
            calibration = functional.calibration_loss_tiled(
                query_emb,
                database_emb,
                query_labels,
                database_labels,
                self_index,
                excluded_index,
                *self.calibration_margins,
                tile_size=self.tile_size,
            )
            per_query = self._calibrated(per_query, calibration)
        return self._loss_dict(per_query, has_positive, weights, (query_emb, database_emb), sizes)

    def loss_from_similarities(
        self,
        sim: torch.Tensor,
        query_labels: torch.Tensor,
        database_labels: torch.Tensor,
        self_index: torch.Tensor | None = None,
        excluded_index: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict:
        """PML loss dict from a precomputed (queries × database) similarity matrix (the dense path).

        ``self_index[q]`` is the database column of query q itself (never a positive; outside the database unless
        ``count_query_in_rank``), ``excluded_index`` (queries × X, padded with -1) lists further columns outside
        each query's database, and ``weights`` are per-query miner weights.
        """
        per_query, has_positive = functional.recall_k_surrogate_loss(
            sim,
            query_labels,
            database_labels,
            self_index=self_index,
            excluded_index=excluded_index,
            **self._functional_kwargs(),
        )
        if self.calibration_weight:
            calibration = functional.calibration_loss(
                sim, query_labels, database_labels, self_index, excluded_index, *self.calibration_margins
            )
            per_query = self._calibrated(per_query, calibration)
        sizes = self._database_sizes(sim.shape[1], self_index, excluded_index)
        return self._loss_dict(per_query, has_positive, weights, None, sizes)

    def _calibrated(self, per_query: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
        """(1 − λ)·ℓ_RS@k + λ·C per query (λ = ``calibration_weight``)."""
        return (1.0 - self.calibration_weight) * per_query + self.calibration_weight * calibration

    def _functional_kwargs(self) -> dict:
        return {
            "k_values": self.k_values,
            "rank_temperature": self.rank_temperature,
            "k_temperature": self.k_temperature,
            "k_margin": self.k_margin,
            "count_query_in_rank": self.count_query_in_rank,
            "query_chunk_size": self.query_chunk_size,
        }

    def _warn_if_nothing_to_learn(self, any_positive: bool, largest_database: int) -> None:
        """Warn once when the loss is 0, or Recall@k trivially 1, whatever the embeddings: nothing trains.

        Without a positive the loss is 0 with a zero gradient. A query q with positives has soft ranks
        r̃ ≤ |Ω_q|; a k with k + k_margin ≥ |Ω_q| makes Recall@k 1 for any embedding, and the surrogate's gradient
        for it is at most σ'((k + k_margin − |Ω_q|)/τ_k)/τ_k: exactly 0 once that argument passes about 16.6
        (float32) or 36.7 (float64), where σ rounds to 1. When that holds for every k and every query, RS@k has
        (almost) no gradient: this warns when the smallest k + k_margin reaches the largest database.
        """
        if self._warned_nothing_to_learn:
            return
        if not any_positive:
            message = (
                "no query of the batch has a positive (another item of its class in its database), so the loss is 0 "
                "with a zero gradient and nothing trains; sample at least 2 items per class (the sampler's samples "
                "per class, e.g. MPerClassSampler(m=4); in pml-recallk, data.samples_per_class >= 2)"
            )
        elif min(self.k_values) + self.k_margin >= largest_database:
            message = (
                f"every k in k_values={self.k_values} is at least the size of every query's database (at most "
                f"{largest_database} items), so Recall@k is 1 whatever the embeddings and the loss has (almost) no "
                "gradient (exactly none in float32 once k - database >= 17 k_temperature); use k_values smaller "
                "than the batch (the paper's: 1, 2, 4, 8, 16) or a larger batch"
            )
        else:
            return
        self._warned_nothing_to_learn = True
        warnings.warn(f"RecallKSurrogateLoss: {message}", NothingToLearnWarning, stacklevel=4)

    def _database_sizes(self, num_columns: int, self_index, excluded_index) -> torch.Tensor | int:
        """|Ω_q| per query (Nq,): the columns minus the query's own (unless counted) and its excluded ones."""
        sizes = num_columns
        if self_index is not None and not self.count_query_in_rank:
            sizes = sizes - (self_index >= 0).long()
        if excluded_index is not None:
            sizes = sizes - (excluded_index >= 0).sum(1)
        return sizes

    def _loss_dict(self, per_query, has_positive, weights, embeddings, database_sizes) -> dict:
        # One host sync for all three questions: is there a query with a positive, is every loss finite, and how
        # large is the largest database (to say when every k is beyond it)?
        largest = torch.as_tensor(database_sizes).max().to(per_query)
        any_positive, finite, largest = torch.stack(
            [has_positive.any().to(per_query.dtype), torch.isfinite(per_query).all().to(per_query.dtype), largest]
        ).tolist()
        if not finite:
            raise ValueError(_nonfinite_message(embeddings))
        self._warn_if_nothing_to_learn(bool(any_positive), int(largest))
        if not any_positive:
            return self.zero_losses()
        indices = torch.where(has_positive)[0]
        losses = per_query[indices]
        if weights is not None:
            losses = losses * weights[indices]
        return {"loss": {"losses": losses, "indices": indices, "reduction_type": "element"}}


class _Database(NamedTuple):
    """The keywords of :meth:`RecallKSurrogateLoss.forward` that shape each query's database."""

    self_index: torch.Tensor | None
    excluded: torch.Tensor | None
    ref_mixup: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None

    @classmethod
    def checked(cls, num_queries: int, ref_emb, self_index, excluded, ref_mixup, distance) -> _Database:
        database_size = len(ref_emb)
        if ref_mixup is not None:
            ref_mixup = _check_ref_mixup(ref_mixup, database_size, distance, ref_emb.device)
            database_size += len(ref_mixup[0])
        if self_index is not None:
            _check_columns(self_index, "self_index", (num_queries,), len(ref_emb), ref_emb.device)
        if excluded is not None:
            _check_columns(excluded, "excluded", (num_queries, -1), database_size, ref_emb.device)
        return cls(self_index, excluded, ref_mixup)

    def mixed(self, seen_database: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The database with the virtual items of ``ref_mixup`` appended (from the embeddings the similarity sees:
        s(q, v) = α·s(q, first) + (1 − α)·s(q, second) exactly)."""
        if self.ref_mixup is None:
            return seen_database, labels
        first, second, alpha = self.ref_mixup
        a = alpha.to(seen_database.dtype)[:, None]
        virtual = a * seen_database[first] + (1 - a) * seen_database[second]
        return torch.cat([seen_database, virtual]), torch.cat([labels, labels[first]])


def _check_columns(index, name: str, shape: tuple[int, ...], database_size: int, device) -> None:
    """An integer index of database columns, -1 for none (padding)."""
    if not torch.is_tensor(index) or index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of database columns (-1: none), got {type(index).__name__}")
    if index.ndim != len(shape) or index.shape[0] != shape[0]:
        want = "(num_queries,)" if len(shape) == 1 else "(num_queries, X)"
        raise ValueError(f"{name} must have shape {want} = ({shape[0]}, ...), got {tuple(index.shape)}")
    if index.device != device:
        raise ValueError(f"{name} is on {index.device} but ref_emb on {device}; move it")
    if index.numel() > 0 and not (-1 <= int(index.min()) and int(index.max()) < database_size):
        raise ValueError(
            f"{name} holds a column outside -1 … {database_size - 1} (the database's columns; -1 means none)"
        )


def _check_ref_mixup(ref_mixup, database_size: int, distance, device):
    if not isinstance(distance, DotProductSimilarity):
        raise ValueError(
            "ref_mixup mixes similarities linearly, which needs CosineSimilarity or DotProductSimilarity, not "
            f"{type(distance).__name__}"
        )
    if not isinstance(ref_mixup, (tuple, list)) or len(ref_mixup) != 3:
        raise TypeError("ref_mixup must be a tuple (first, second, alpha) of three 1-D tensors")
    first, second, alpha = ref_mixup
    if not torch.is_tensor(alpha) or not alpha.is_floating_point() or alpha.ndim != 1:
        raise TypeError("ref_mixup's alpha must be a 1-D floating-point tensor (one mixing weight per virtual item)")
    for name, index in (("first", first), ("second", second)):
        _check_columns(index, f"ref_mixup's {name}", (len(alpha),), database_size, device)
        if index.numel() > 0 and int(index.min()) < 0:
            raise ValueError(f"ref_mixup's {name} must name database columns (>= 0)")
    return first, second, alpha


def _nonfinite_message(embeddings) -> str:
    if embeddings is None:  # the similarities were given
        return "the similarities contain NaN or inf; check the embeddings they come from and their scale"
    if not all(bool(torch.isfinite(x).all()) for x in embeddings):
        return (
            "embeddings contain NaN or inf; check the model's output (learning rate, inputs). cached_backward and "
            "MemoryEfficientTrainer check the embeddings before the loss and, with stop_on_nan=False, skip such a step"
        )
    return (
        "the similarities overflow to inf (embeddings too large for DotProductSimilarity(normalize_embeddings=False) "
        "in this dtype); use CosineSimilarity(), or keep the embeddings' norms small (e.g. an L2-normalising head)"
    )


def _check_similarity(distance) -> None:
    if not distance.is_inverted:
        raise ValueError(
            f"RecallKSurrogateLoss ranks by similarity, but distance={type(distance).__name__} grows with "
            "dissimilarity; use CosineSimilarity() (the default) or DotProductSimilarity()"
        )
    if getattr(distance, "power", 1) != 1:
        # s**2 ranks -0.9 above 0.5, and SiMix mixes similarities linearly: both assume the similarity itself.
        raise ValueError(
            f"RecallKSurrogateLoss needs a similarity with power=1, got power={distance.power}: a power changes the "
            "ranking of negative similarities; rank by the similarity itself (power=1) and tune rank_temperature"
        )


def _check_path(path, distance) -> str:
    check_choice(path, PATHS, "path")
    if path in ("tiled", "fused") and not isinstance(distance, DotProductSimilarity):
        raise ValueError(
            f"path={path!r} computes similarities as dot products of the (normalised) embeddings, so it needs "
            f"CosineSimilarity or DotProductSimilarity, not {type(distance).__name__}; use path='dense'"
        )
    if path == "fused":
        from .._triton import check_triton_importable

        check_triton_importable()
    return path


def _check_reference(embeddings: torch.Tensor, ref_emb, ref_labels) -> None:
    check_embeddings(ref_emb, "ref_emb")
    if ref_labels is None:
        raise ValueError("ref_emb was given without ref_labels; pass the labels of ref_emb as ref_labels")
    check_labels(ref_labels, "ref_labels", length=len(ref_emb), length_of="ref_emb")
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"ref_emb has embedding size {ref_emb.shape[1]} but embeddings has {embeddings.shape[1]}; both must come "
            "from the same embedding space"
        )
    if float_embeddings(ref_emb).dtype != float_embeddings(embeddings).dtype:
        raise TypeError(
            f"ref_emb is {ref_emb.dtype} but embeddings is {embeddings.dtype}; convert one, e.g. "
            "ref_emb.to(embeddings.dtype)"
        )
    if ref_emb.device != embeddings.device:
        raise ValueError(f"ref_emb is on {ref_emb.device} but embeddings on {embeddings.device}; move one")


def _check_calibration_weight(value) -> float:
    value = check_real(value, "calibration_weight")
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"calibration_weight must be in [0, 1] (the calibration term's share of the loss; 0: RS@k alone), "
            f"got {value!r}"
        )
    return value


def _check_calibration_margins(value) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(
            "calibration_margins must be two numbers (positive_margin, negative_margin), e.g. (0.9, 0.6), "
            f"got {value!r}"
        )
    positive, negative = (check_real(v, "calibration_margins") for v in value)
    if positive < negative:
        raise ValueError(
            f"calibration_margins=({positive}, {negative}): the positive margin must not be below the negative one "
            "(positives are pulled above the first, negatives pushed below the second)"
        )
    return positive, negative


def _check_k_temperature(value, k_values: list[int]) -> float | list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (int, float, Sequence)) or isinstance(value, bool):
        raise TypeError(f"k_temperature must be a positive float or one per k, got {value!r}")
    if not isinstance(value, Sequence):
        return check_positive_float(value, "k_temperature")
    if len(value) != len(k_values):
        raise ValueError(
            f"k_temperature has {len(value)} values but k_values={k_values} has {len(k_values)}; give one per k"
        )
    return [check_positive_float(t, "k_temperature") for t in value]


def find_recall_k_surrogate(loss: object) -> RecallKSurrogateLoss | None:
    """RS@k itself, or the one inside a wrapper (SimilarityMixup, CrossBatchMemory, ...: their ``loss`` attribute);
    None when there is none."""
    while loss is not None and not isinstance(loss, RecallKSurrogateLoss):
        loss = getattr(loss, "loss", None)
    return loss


def contains_recall_k_surrogate(loss: object) -> bool:
    """RS@k itself, or a wrapper around it."""
    return find_recall_k_surrogate(loss) is not None


def float_embeddings(embeddings: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 → float32, so that (s_z − s_p)/0.01 does not overflow or lose the ranking."""
    return embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings


def loss_precision(embeddings: torch.Tensor):
    """A context that turns autocast off, so the loss runs in the embeddings' (float32/float64) precision."""
    return torch.autocast(device_type=embeddings.device.type, enabled=False)

"""SimilarityMixup (SiMix): virtual same-class items mixed at the level of similarities, as a PML loss wrapper."""

from __future__ import annotations

import numbers
import warnings

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.losses import BaseLossWrapper
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

from .recall_k_surrogate_loss import (
    RecallKSurrogateLoss,
    check_embeddings,
    check_labels,
    check_positive_int_or_none,
    float_embeddings,
    loss_precision,
)

MODES = ("official", "database")


class SimilarityMixup(BaseLossWrapper, ModuleWithRecords):
    r"""Similarity mixup (SiMix): enlarge the batch with virtual items mixed from pairs of the same class.

    For a pair (i, j) of the same class c and α ~ U(alpha_range), drawn per pair and per step, the virtual item
    v = α·ê_i + (1−α)·ê_j (on the embeddings the loss's similarity sees, not re-normalised) has label c and
    similarity ``s(q, v) = α·s(q, i) + (1−α)·s(q, j)`` to every item q. With ``RecallKSurrogateLoss`` in
    ``"database"`` mode the columns of the similarity matrix are mixed (no virtual embedding is built); in
    ``"official"`` mode, which needs every pair of the B + V items anyway, the V virtual embeddings are built and
    one product of all items gives the same numbers.

    Modes:
        ``"official"``: virtual items are queries and database items (positives of their class, negatives of all
            others), as in the authors' released code; B real items become B + Σ_c C(n_c, 2) queries.
        ``"database"``: virtual items only extend the database of the real queries; a virtual item that has q as a
            parent is left out of q's database. Memory grows with the extra database columns only.

    Only active in training mode; in ``.eval()`` the wrapper is exactly the wrapped loss.

    Args:
        loss: ``RecallKSurrogateLoss`` (both modes), or in ``"official"`` mode any PML loss whose distance is
            ``DotProductSimilarity(normalize_embeddings=False)`` (the wrapper L2-normalises the real embeddings and
            passes real and virtual items as one batch).
        mode: ``"official"`` or ``"database"``.
        alpha_range: (low, high) in [0, 1] of the uniform mixing coefficient.
        max_pairs_per_class: keep at most this many random pairs per class and step (default: all pairs).

    Example:
        >>> import torch
        >>> from pml_recallk import RecallKSurrogateLoss, SimilarityMixup
        >>> loss_fn = SimilarityMixup(RecallKSurrogateLoss())
        >>> loss = loss_fn(torch.randn(32, 16, requires_grad=True), torch.arange(8).repeat_interleave(4))
        >>> loss_fn.num_virtual
        48
    """

    def __init__(
        self,
        loss: torch.nn.Module,
        mode: str = "official",
        alpha_range: tuple[float, float] = (0.0, 1.0),
        max_pairs_per_class: int | None = None,
        **kwargs,
    ):
        super().__init__(loss=loss, **kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._check_wrapped_loss(loss)
        self.loss = loss
        self.alpha_range = _check_alpha_range(alpha_range)
        self.max_pairs_per_class = check_positive_int_or_none(max_pairs_per_class, "max_pairs_per_class")
        self.num_virtual = 0
        self._warned_no_pairs = False
        self.add_to_recordable_attributes(list_of_names=["mode", "num_virtual", "max_pairs_per_class"], is_stat=False)

    @staticmethod
    def supported_losses():
        return ["RecallKSurrogateLoss", "any loss with distance=DotProductSimilarity(normalize_embeddings=False)"]

    def check_loss_support(self, loss_name):  # an instance check: it needs the loss object, not only its name
        pass

    def _check_wrapped_loss(self, loss):
        if isinstance(loss, RecallKSurrogateLoss):
            distance = loss.distance
            if not isinstance(distance, DotProductSimilarity) or distance.power != 1:
                raise ValueError(
                    "SimilarityMixup mixes similarities linearly, which needs a dot-product similarity: give the "
                    f"loss CosineSimilarity() or DotProductSimilarity() with power=1, not {type(distance).__name__}"
                )
            return
        if self.mode == "database":
            raise ValueError(
                f"mode='database' needs RecallKSurrogateLoss (it excludes each query's own virtual items from its "
                f"database); {type(loss).__name__} cannot take that exclusion. Use mode='official'."
            )
        distance = getattr(loss, "distance", None)
        if not isinstance(distance, DotProductSimilarity) or distance.normalize_embeddings:
            raise ValueError(
                f"SimilarityMixup mixes L2-normalised embeddings without re-normalising them, so {type(loss).__name__} "
                "must use distance=DotProductSimilarity(normalize_embeddings=False) "
                f"(it has {type(distance).__name__ if distance is not None else 'no distance'})."
            )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None) -> torch.Tensor:
        if not self.training:
            return self.loss(embeddings, labels, indices_tuple)
        check_embeddings(embeddings, "embeddings")
        check_labels(labels, "labels")
        if len(labels) != len(embeddings):
            raise ValueError(f"embeddings ({len(embeddings)}) and labels ({len(labels)}) must have the same length")
        labels = labels.to(embeddings.device)
        first, second = same_class_pairs(labels, self.max_pairs_per_class)
        self.num_virtual = len(first)
        if self.num_virtual == 0:
            if not self._warned_no_pairs:
                warnings.warn(
                    "SimilarityMixup: no class has 2 or more samples in the batch, so there is nothing to mix; "
                    "computing the plain loss (use a sampler with several samples per class, e.g. MPerClassSampler)",
                    stacklevel=2,
                )
                self._warned_no_pairs = True
            return self.loss(embeddings, labels, indices_tuple)
        low, high = self.alpha_range
        alpha = torch.rand(len(first), device=embeddings.device, dtype=torch.float64) * (high - low) + low
        if isinstance(self.loss, RecallKSurrogateLoss):
            return self._mixed_recall_loss(embeddings, labels, indices_tuple, first, second, alpha)
        normalised = F.normalize(embeddings, dim=1)
        a = alpha.to(normalised.dtype)[:, None]
        virtual = a * normalised[first] + (1 - a) * normalised[second]
        return self.loss(
            torch.cat([normalised, virtual]), torch.cat([labels, labels[first]]), indices_tuple=indices_tuple
        )

    def _mixed_recall_loss(self, embeddings, labels, indices_tuple, first, second, alpha):
        loss, batch_size = self.loss, len(labels)
        loss.reset_stats()
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=torch.float32)
        with loss_precision(embeddings):
            emb = float_embeddings(embeddings)
            alpha, weights = alpha.to(emb.dtype), weights.to(emb.dtype)
            database_labels = torch.cat([labels, labels[first]])
            if self.mode == "official":
                # Every pair of items is needed, virtual ones included: one product of the (B + V) items the
                # similarity sees (v is d numbers, its B + V similarities are not) equals mixing rows and columns.
                seen = loss.distance.maybe_normalize(emb)
                a = alpha[:, None]
                items = torch.cat([seen, a * seen[first] + (1 - a) * seen[second]])
                sim_all = loss.distance.compute_mat(items, items)
                query_weights = torch.cat([weights, (weights[first] + weights[second]) / 2])
                loss_dict = loss.loss_from_similarities(
                    sim_all,
                    database_labels,
                    database_labels,
                    self_index=torch.arange(len(sim_all), device=sim_all.device),
                    weights=query_weights,
                )
                query_labels = database_labels
            else:
                # Virtual items are database columns only: mix the columns of the B × B similarities.
                sim = loss.distance(emb, emb)
                excluded = virtual_items_of_parents(first, second, batch_size, offset=batch_size)
                loss_dict = loss.loss_from_similarities(
                    torch.cat([sim, mix_columns(sim, first, second, alpha)], dim=1),
                    labels,
                    database_labels,
                    self_index=torch.arange(batch_size, device=sim.device),
                    excluded_index=excluded,
                    weights=weights,
                )
                query_labels = labels
        loss.add_embedding_regularization_to_loss_dict(loss_dict, embeddings)
        return loss.reducer(loss_dict, embeddings, query_labels)


def mix_columns(sim: torch.Tensor, first: torch.Tensor, second: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """s(q, v) = α·s(q, i) + (1−α)·s(q, j) for every row q and virtual item v = (i, j, α): (rows, V)."""
    return sim[:, first] * alpha + sim[:, second] * (1 - alpha)


def same_class_pairs(labels: torch.Tensor, max_pairs_per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All unordered pairs (i < j) of batch items with the same label, or a random subset of at most
    ``max_pairs_per_class`` per class. Returns the index tensors (first, second)."""
    first, second = torch.triu(labels[:, None] == labels[None, :], diagonal=1).nonzero(as_tuple=True)
    if max_pairs_per_class is None or len(first) == 0:
        return first, second
    # Random order within each class: shuffle, then stable-sort by class; keep each class's first pairs.
    shuffle = torch.randperm(len(first), device=labels.device)
    pair_class = labels[first[shuffle]]
    order = shuffle[torch.sort(pair_class, stable=True).indices]
    sorted_class = labels[first[order]]
    starts = torch.searchsorted(sorted_class, sorted_class, right=False)
    keep = order[(torch.arange(len(order), device=labels.device) - starts) < max_pairs_per_class]
    keep = torch.sort(keep).values
    return first[keep], second[keep]


def virtual_items_of_parents(first: torch.Tensor, second: torch.Tensor, batch_size: int, offset: int) -> torch.Tensor:
    """(batch_size, X) database columns of the virtual items that have each real item as a parent, padded with -1."""
    parents = torch.cat([first, second])
    columns = torch.arange(len(first), device=first.device).repeat(2) + offset
    order = torch.sort(parents, stable=True).indices
    parents, columns = parents[order], columns[order]
    slot = torch.arange(len(parents), device=first.device) - torch.searchsorted(parents, parents)
    width = int(slot.max()) + 1 if len(slot) else 1
    excluded = torch.full((batch_size, width), -1, dtype=torch.long, device=first.device)
    excluded[parents, slot] = columns
    return excluded


def _check_alpha_range(alpha_range) -> tuple[float, float]:
    if (
        isinstance(alpha_range, (str, bytes))
        or not hasattr(alpha_range, "__len__")
        or len(alpha_range) != 2
        or not all(isinstance(a, numbers.Real) and not isinstance(a, bool) for a in alpha_range)
    ):
        raise TypeError(f"alpha_range must be a pair of floats (low, high), got {alpha_range!r}")
    low, high = float(alpha_range[0]), float(alpha_range[1])
    if not (0.0 <= low <= high <= 1.0):
        raise ValueError(f"alpha_range must satisfy 0 <= low <= high <= 1, got {alpha_range!r}")
    return low, high

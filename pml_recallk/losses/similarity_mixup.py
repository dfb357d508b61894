"""SimilarityMixup (SiMix): virtual same-class items mixed at the level of similarities, as a PML loss wrapper."""

from __future__ import annotations

import numbers
import warnings

import torch
import torch.distributed as dist
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.losses import BaseLossWrapper
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from pytorch_metric_learning.utils.module_with_records import ModuleWithRecords

from .._checks import check_choice, check_embeddings, check_labels, check_positive_int
from .recall_k_surrogate_loss import RecallKSurrogateLoss, float_embeddings, loss_precision

QUERIES_AND_DATABASE, DATABASE_ONLY = "queries_and_database", "database_only"
MODES = (QUERIES_AND_DATABASE, DATABASE_ONLY)


class SimilarityMixup(BaseLossWrapper, ModuleWithRecords):
    r"""Similarity mixup (SiMix): enlarge the batch with virtual items mixed from pairs of the same class.

    For a pair (i, j) of the same class c and α ~ U(alpha_range), drawn per pair and per step, the virtual item
    v = α·ê_i + (1−α)·ê_j (on the embeddings the loss's similarity sees, not re-normalised) has label c and
    similarity ``s(q, v) = α·s(q, i) + (1−α)·s(q, j)`` to every item q (docs/method.md §3). With
    ``RecallKSurrogateLoss`` the V virtual embeddings (V×d numbers, fewer than their similarities) are built and
    passed with the real ones to the loss, which takes its dense or tiled path as for any batch; the dot products
    with v are exactly the mixed similarities.

    Modes:
        ``"queries_and_database"`` (the authors' released code): virtual items are
            queries and database items (positives of their class, negatives of all others); B real items become
            B + Σ_c C(n_c, 2) queries.
        ``"database_only"``: virtual items only extend the database of the B real
            queries; a virtual item that has q as a parent is left out of q's database.

    Only active in training mode; in ``.eval()`` the wrapper is exactly the wrapped loss.

    Args:
        loss: ``RecallKSurrogateLoss`` (both modes), or in ``"queries_and_database"`` mode any PML loss whose
            distance is ``DotProductSimilarity(normalize_embeddings=False)`` (the wrapper L2-normalises the real
            embeddings and passes real and virtual items as one batch).
        mode: ``"queries_and_database"`` (default) or ``"database_only"``.
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
        mode: str = QUERIES_AND_DATABASE,
        alpha_range: tuple[float, float] = (0.0, 1.0),
        max_pairs_per_class: int | None = None,
        **kwargs,
    ):
        super().__init__(loss=loss, **kwargs)
        self.mode = _check_mode(mode)
        self._check_wrapped_loss(loss)
        self.loss = loss
        self.alpha_range = _check_alpha_range(alpha_range)
        self.max_pairs_per_class = check_positive_int(max_pairs_per_class, "max_pairs_per_class", allow_none=True)
        self.num_virtual = 0
        self._warned_no_pairs = False
        self.add_to_recordable_attributes(list_of_names=["mode", "num_virtual", "max_pairs_per_class"], is_stat=False)

    @staticmethod
    def supported_losses():
        return ["RecallKSurrogateLoss", "any loss with distance=DotProductSimilarity(normalize_embeddings=False)"]

    @classmethod
    def check_loss_support(cls, loss_name):
        """Required by PML's ``BaseLossWrapper.__init__`` (its default raises ``NotImplementedError``). A name is not
        enough to decide (any loss with the right similarity is supported): ``__init__`` checks the loss object."""

    def _check_wrapped_loss(self, loss):
        if isinstance(loss, RecallKSurrogateLoss):
            distance = loss.distance
            if not isinstance(distance, DotProductSimilarity) or distance.power != 1:
                raise ValueError(
                    "SimilarityMixup mixes similarities linearly, which needs a dot-product similarity: give the "
                    f"loss CosineSimilarity() or DotProductSimilarity() with power=1, not {type(distance).__name__}"
                )
            return
        if self.mode == DATABASE_ONLY:
            raise ValueError(
                f"mode='database_only' needs RecallKSurrogateLoss (it excludes each query's own virtual items from "
                f"its database); {type(loss).__name__} cannot take that exclusion. Use mode='queries_and_database'."
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
        check_labels(labels, "labels", length=len(embeddings))
        labels = labels.to(embeddings.device)
        pairs = self.draw_pairs(labels)
        if pairs is None:
            return self.loss(embeddings, labels, indices_tuple)
        first, second, alpha = pairs
        if isinstance(self.loss, RecallKSurrogateLoss):
            return self._mixed_recall_loss(embeddings, labels, indices_tuple, first, second, alpha)
        normalised = torch.nn.functional.normalize(embeddings, dim=1)
        virtual = mix_embeddings(normalised, first, second, alpha.to(normalised.dtype))
        return self.loss(
            torch.cat([normalised, virtual]), torch.cat([labels, labels[first]]), indices_tuple=indices_tuple
        )

    def draw_pairs(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """This step's same-class pairs (i, j) and their α ~ U(alpha_range) (float64), or None (with a one-time
        warning) when no class has two samples. Sets ``num_virtual``. ``CrossBatchMemory`` draws through it too.

        Under ``torch.distributed`` (initialised, several ranks) every rank takes rank 0's draws, whatever its own
        generator holds, so that all ranks compute the same loss of the gathered batch (docs/distributed.md)."""
        first, second = same_class_pairs(labels, self.max_pairs_per_class)
        self.num_virtual = len(first)
        if self.num_virtual == 0:
            if not self._warned_no_pairs:
                warnings.warn(
                    "SimilarityMixup: no class has 2 or more samples in the batch, so there is nothing to mix; "
                    "computing the plain loss (use a sampler with several samples per class, e.g. MPerClassSampler)",
                    stacklevel=3,
                )
                self._warned_no_pairs = True
            return None
        low, high = self.alpha_range
        alpha = torch.rand(len(first), device=labels.device, dtype=torch.float64) * (high - low) + low
        return _rank_zeros_draws(first, second, alpha)

    def _mixed_recall_loss(self, embeddings, labels, indices_tuple, first, second, alpha):
        loss, batch_size = self.loss, len(labels)
        loss.reset_stats()
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=torch.float32)
        with loss_precision(embeddings):
            emb = float_embeddings(embeddings)
            alpha, weights = alpha.to(emb.dtype), weights.to(emb.dtype)
            seen = loss.distance.maybe_normalize(emb)
            items = torch.cat([seen, mix_embeddings(seen, first, second, alpha)])
            database_labels = torch.cat([labels, labels[first]])
            if self.mode == QUERIES_AND_DATABASE:
                # Every item, virtual ones included, is a query of the same B + V database.
                query_emb, query_labels, excluded = items, database_labels, None
                weights = torch.cat([weights, (weights[first] + weights[second]) / 2])
            else:
                # The real items are the queries; each one's own virtual items are left out of its database.
                query_emb, query_labels = seen, labels
                excluded = virtual_items_of_parents(first, second, batch_size, offset=batch_size)
            loss_dict = loss.loss_from_normalized_embeddings(
                query_emb,
                query_labels,
                items,
                database_labels,
                self_index=torch.arange(len(query_emb), device=emb.device),
                excluded_index=excluded,
                weights=weights,
            )
        loss.add_embedding_regularization_to_loss_dict(loss_dict, embeddings)
        return loss.reducer(loss_dict, embeddings, query_labels)


def _rank_zeros_draws(
    first: torch.Tensor, second: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank 0's pairs and α on every rank of an initialised process group (unchanged in a single process).

    Ranks seeded differently (a common habit) would otherwise mix different pairs with different α and compute
    different losses of the same gathered batch, and their gradients would not add up to any batch's gradient.
    Rank 0's draws come from its own generator, so a one-process run seeded like rank 0 draws the same, and a
    resumed run (rank 0's generator restored) draws as an uninterrupted one. Every rank must call the loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return first, second, alpha
    count = torch.tensor([len(first)], device=alpha.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    if len(set(counts)) != 1:
        raise ValueError(
            f"SimilarityMixup under torch.distributed mixes pairs of the global batch, the same on every rank, but the "
            f"ranks' batches give {counts} pairs: pass it the gathered batch (cached_backward and PML's "
            "DistributedLossWrapper do), not each rank's own"
        )
    # float64 holds the pair indices exactly (up to 2^53), so one broadcast carries pairs and α together.
    draws = torch.stack([first.to(torch.float64), second.to(torch.float64), alpha])
    dist.broadcast(draws, src=0)
    return draws[0].long(), draws[1].long(), draws[2]


def mix_embeddings(
    embeddings: torch.Tensor, first: torch.Tensor, second: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """v = α·e_i + (1−α)·e_j for every virtual item (i, j, α): (V, d). Its dot products are the mixed similarities."""
    a = alpha[:, None]
    return a * embeddings[first] + (1 - a) * embeddings[second]


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


def _check_mode(mode) -> str:
    return check_choice(mode, MODES, "mode")

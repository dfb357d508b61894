"""Pure tensor maths of the Recall@k surrogate (RS@k): soft ranks, surrogate recall and their exact counterparts.

No PyTorch-Metric-Learning import: these functions take a similarity matrix (queries × database, larger = more
similar), or the embeddings whose dot products are the similarities (the tiled functions), and labels, and return
per-query quantities. ``RecallKSurrogateLoss`` and ``SimilarityMixup`` are thin
PML-facing layers on top.

Notation (docs/method.md §2). For a query q with database Ω_q and positives P_q ⊆ Ω_q (same label)::

    soft rank       r̃(q,p) = 1 + Σ_{z ∈ Ω_q, z ≠ p} σ((s(q,z) − s(q,p)) / τ_rank)
    surrogate       R̃_k(q) = min(Σ_{p ∈ P_q} σ((k + k_margin − r̃(q,p)) / τ_k), k) / min(k, |P_q|)
    loss            ℓ(q)   = 1 − mean_k R̃_k(q)

The database of a query is every database column except those listed as excluded for it; the column holding the
query itself (``self_index``) is excluded unless ``count_query_in_rank`` (the released code's behaviour), and is
never a positive.

Memory: the soft ranks need |Q|×|P|max×N sigmoid terms per chunk of |Q| queries. :func:`soft_ranks` is a custom
autograd function that keeps none of them for backward (it recomputes them), so peak extra memory beyond the Nq×N
similarities and their gradient is one chunk. :func:`tiled_soft_ranks` takes the embeddings instead and recomputes
each tile of similarities from them, so nothing of size Nq×N exists: memory is O((Nq + N)·d + one tile).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._tiled import KERNELS, DenseSoftRanks, TiledSoftRanks, default_query_chunk_size, default_tile_size

__all__ = [
    "build_positive_index",
    "soft_ranks",
    "tiled_soft_ranks",
    "exact_ranks",
    "surrogate_recall_at_k",
    "zero_temperature_recall_at_k",
    "normalised_recall_at_k",
    "recall_k_surrogate_loss",
    "recall_k_surrogate_loss_tiled",
    "calibration_loss",
    "calibration_loss_tiled",
    "default_query_chunk_size",
    "default_tile_size",
]


def _excluded_columns(
    num_queries: int,
    self_index: torch.Tensor | None,
    excluded_index: torch.Tensor | None,
    include_self: bool,
    device: torch.device,
) -> torch.Tensor | None:
    """(Nq, X) database columns outside each query's database, padded with -1; None when there are none."""
    parts = []
    if self_index is not None and include_self:
        parts.append(self_index.to(device).view(num_queries, 1))
    if excluded_index is not None:
        parts.append(excluded_index.to(device).view(num_queries, -1))
    if not parts:
        return None
    return torch.cat(parts, dim=1).long()


def build_positive_index(
    query_labels: torch.Tensor,
    database_labels: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives of every query as a padded index.

    Returns ``(positive_index, positive_valid)``, both (Nq, Pmax): the database columns with the query's label, in
    increasing order, minus the query's own column (``self_index``) and minus ``excluded_index`` (Nq×X, padded
    with -1). Padding slots hold index 0 and ``positive_valid`` False.

    The database is sorted by label once, so each query's candidates are one run of that order: memory is
    O(Nq × largest class), never Nq × N. ``chunk_size`` queries are checked against their excluded columns at a
    time (default: about 16 M comparisons).
    """
    num_queries, device = len(query_labels), query_labels.device
    database_labels = database_labels.to(device)
    if num_queries == 0 or len(database_labels) == 0:
        empty = torch.zeros(num_queries, 1, dtype=torch.long, device=device)
        return empty, empty.bool()
    sorted_labels, order = torch.sort(database_labels, stable=True)  # stable: columns stay in increasing order
    query_labels = query_labels.to(sorted_labels.dtype)
    start = torch.searchsorted(sorted_labels, query_labels)
    counts = torch.searchsorted(sorted_labels, query_labels, right=True) - start
    offsets = torch.arange(max(int(counts.max()), 1), device=device)
    valid = offsets < counts[:, None]
    candidates = order[(start[:, None] + offsets).clamp(max=len(order) - 1)]
    not_positive = _excluded_columns(num_queries, self_index, excluded_index, True, device)
    if not_positive is not None:
        chunk_size = chunk_size or max(1, (1 << 24) // (len(offsets) * not_positive.shape[1]))
        for first in range(0, num_queries, chunk_size):
            rows = slice(first, first + chunk_size)
            valid[rows] &= ~(candidates[rows, :, None] == not_positive[rows, None, :]).any(2)
        # Valid entries first, each row's order kept; then drop the columns no row needs.
        keep_order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
        candidates, valid = candidates.gather(1, keep_order), valid.gather(1, keep_order)
        width = max(int(valid.sum(1).max()), 1)
        candidates, valid = candidates[:, :width], valid[:, :width]
    return candidates.masked_fill(~valid, 0), valid


def soft_ranks(
    sim: torch.Tensor,
    positive_index: torch.Tensor,
    positive_valid: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    rank_temperature: float = 0.01,
    count_query_in_rank: bool = False,
    query_chunk_size: int | None = None,
) -> torch.Tensor:
    """Soft rank r̃(q,p) of each positive (Nq, Pmax; 0 in padding slots), differentiable w.r.t. ``sim``.

    ``sim`` is (Nq, N). The database of query q is every column except ``excluded_index[q]`` and, unless
    ``count_query_in_rank``, ``self_index[q]``.
    """
    excluded = _excluded_columns(len(sim), self_index, excluded_index, not count_query_in_rank, sim.device)
    if query_chunk_size is None:
        query_chunk_size = default_query_chunk_size(positive_index.shape[1], sim.shape[1], sim.device)
    return DenseSoftRanks.apply(
        sim, positive_index, positive_valid, excluded, float(rank_temperature), int(query_chunk_size), "torch"
    )


def tiled_soft_ranks(
    query_emb: torch.Tensor,
    database_emb: torch.Tensor,
    positive_index: torch.Tensor,
    positive_valid: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    rank_temperature: float = 0.01,
    count_query_in_rank: bool = False,
    query_chunk_size: int | None = None,
    tile_size: int | None = None,
    kernel: str = "torch",
) -> torch.Tensor:
    """:func:`soft_ranks` of ``sim = query_emb @ database_emb.T`` without ever holding ``sim``.

    Differentiable w.r.t. both embeddings (pass the same tensor twice for a batch that is its own database). The
    similarities are computed ``tile_size`` queries at a time (default: about 8 M (CPU) or 64 M (GPU) per tile),
    in forward and again in backward. ``kernel="triton"`` sums the sigmoids of a tile in a Triton kernel (CUDA,
    or the Triton interpreter with ``TRITON_INTERPRET=1``) instead of by chunks of ``query_chunk_size`` queries.

    >>> import torch
    >>> emb = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1)
    >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
    >>> index, valid = build_positive_index(labels, labels, torch.arange(6))
    >>> dense = soft_ranks(emb @ emb.T, index, valid, torch.arange(6))
    >>> tiled = tiled_soft_ranks(emb, emb, index, valid, torch.arange(6), tile_size=4)
    >>> bool(torch.allclose(dense, tiled, rtol=1e-12))
    True
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    device = query_emb.device
    excluded = _excluded_columns(len(query_emb), self_index, excluded_index, not count_query_in_rank, device)
    database_size = len(database_emb)
    tile_size = int(tile_size or default_tile_size(database_size, device))
    if query_chunk_size is None:
        query_chunk_size = default_query_chunk_size(positive_index.shape[1], database_size, device)
    tiling = (float(rank_temperature), tile_size, min(int(query_chunk_size), tile_size), kernel)
    return TiledSoftRanks.apply(query_emb, database_emb, positive_index, positive_valid, excluded, tiling)


def exact_ranks(
    sim: torch.Tensor,
    positive_index: torch.Tensor,
    positive_valid: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    count_query_in_rank: bool = False,
) -> torch.Tensor:
    """The zero-temperature limit of :func:`soft_ranks`: 1 + #{z ≠ p: s_z > s_p} + ½·#{z ≠ p: s_z = s_p}.

    Without ties this is the rank of p (1 = best) in the query's database. Not differentiable.
    """
    excluded = _excluded_columns(len(sim), self_index, excluded_index, not count_query_in_rank, sim.device)
    positive_sim = sim.gather(1, positive_index)
    step = torch.sign(sim[:, None, :] - positive_sim[:, :, None]) * 0.5 + 0.5  # H(x) with H(0) = ½
    total = step.sum(2)
    if excluded is not None:
        excluded_sim = sim.gather(1, excluded.clamp(min=0))
        step_x = torch.sign(excluded_sim[:, None, :] - positive_sim[:, :, None]) * 0.5 + 0.5
        total -= (step_x * (excluded >= 0)[:, None, :]).sum(2)
    return (total + 0.5).masked_fill(~positive_valid, 0.0)


def _k_temperatures(k_values: Sequence[int], k_temperature: float | Sequence[float]) -> list[float]:
    if isinstance(k_temperature, (int, float)):
        return [float(k_temperature)] * len(k_values)
    return [float(t) for t in k_temperature]


def surrogate_recall_at_k(
    ranks: torch.Tensor,
    positive_valid: torch.Tensor,
    k_values: Sequence[int] = (1, 2, 4, 8, 16),
    k_temperature: float | Sequence[float] = 1.0,
    k_margin: float = 0.0,
) -> torch.Tensor:
    """R̃_k(q) for every query and k: (Nq, len(k_values)); 0 for queries without positives."""
    num_positives = positive_valid.sum(1).to(ranks.dtype)
    columns = []
    for k, tau_k in zip(k_values, _k_temperatures(k_values, k_temperature)):
        soft_hits = torch.sigmoid((k + k_margin - ranks) / tau_k) * positive_valid
        columns.append(torch.clamp(soft_hits.sum(1), max=k) / num_positives.clamp(max=k).clamp(min=1))
    return torch.stack(columns, dim=1)


def zero_temperature_recall_at_k(
    exact: torch.Tensor,
    positive_valid: torch.Tensor,
    k_values: Sequence[int] = (1, 2, 4, 8, 16),
    k_margin: float = 0.0,
) -> torch.Tensor:
    """The limit of :func:`surrogate_recall_at_k` as both temperatures → 0, from :func:`exact_ranks`.

    A positive counts 1 when r < k + k_margin, ½ when r = k + k_margin (σ(0) = ½), 0 otherwise.
    """
    num_positives = positive_valid.sum(1).to(exact.dtype)
    columns = []
    for k in k_values:
        hits = (torch.sign(k + k_margin - exact) * 0.5 + 0.5) * positive_valid
        columns.append(torch.clamp(hits.sum(1), max=k) / num_positives.clamp(max=k).clamp(min=1))
    return torch.stack(columns, dim=1)


def normalised_recall_at_k(
    exact: torch.Tensor, positive_valid: torch.Tensor, k_values: Sequence[int] = (1, 2, 4, 8, 16)
) -> torch.Tensor:
    """|positives in the top k| / min(k, |P_q|) from :func:`exact_ranks` (the metric RS@k is a surrogate of)."""
    num_positives = positive_valid.sum(1).to(exact.dtype)
    columns = [((exact <= k) & positive_valid).sum(1) / num_positives.clamp(max=k).clamp(min=1) for k in k_values]
    return torch.stack(columns, dim=1)


def recall_k_surrogate_loss(
    sim: torch.Tensor,
    query_labels: torch.Tensor,
    database_labels: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    k_values: Sequence[int] = (1, 2, 4, 8, 16),
    rank_temperature: float = 0.01,
    k_temperature: float | Sequence[float] = 1.0,
    k_margin: float = 0.0,
    count_query_in_rank: bool = False,
    query_chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query RS@k loss ℓ(q) = 1 − mean_k R̃_k(q) and a mask of the queries that have a positive.

    >>> import torch
    >>> emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    >>> loss, has_positive = recall_k_surrogate_loss(emb @ emb.T, labels, labels, self_index=torch.arange(8))
    >>> loss.shape, bool(has_positive.all())
    (torch.Size([8]), True)
    """
    positive_index, positive_valid = build_positive_index(query_labels, database_labels, self_index, excluded_index)
    ranks = soft_ranks(
        sim,
        positive_index,
        positive_valid,
        self_index,
        excluded_index,
        rank_temperature,
        count_query_in_rank,
        query_chunk_size,
    )
    recall = surrogate_recall_at_k(ranks, positive_valid, k_values, k_temperature, k_margin)
    return 1.0 - recall.mean(1), positive_valid.any(1)


def recall_k_surrogate_loss_tiled(
    query_emb: torch.Tensor,
    database_emb: torch.Tensor,
    query_labels: torch.Tensor,
    database_labels: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    k_values: Sequence[int] = (1, 2, 4, 8, 16),
    rank_temperature: float = 0.01,
    k_temperature: float | Sequence[float] = 1.0,
    k_margin: float = 0.0,
    count_query_in_rank: bool = False,
    query_chunk_size: int | None = None,
    tile_size: int | None = None,
    kernel: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`recall_k_surrogate_loss` of ``sim = query_emb @ database_emb.T``, in O((Nq + N)·d + one tile) memory.

    The same numbers as the dense function on the product (to rounding); see :func:`tiled_soft_ranks`.

    >>> import torch
    >>> emb = torch.nn.functional.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1)
    >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    >>> tiled, _ = recall_k_surrogate_loss_tiled(emb, emb, labels, labels, self_index=torch.arange(8), tile_size=3)
    >>> dense, _ = recall_k_surrogate_loss(emb @ emb.T, labels, labels, self_index=torch.arange(8))
    >>> bool(torch.allclose(tiled, dense, rtol=1e-12))
    True
    """
    positive_index, positive_valid = build_positive_index(query_labels, database_labels, self_index, excluded_index)
    ranks = tiled_soft_ranks(
        query_emb,
        database_emb,
        positive_index,
        positive_valid,
        self_index,
        excluded_index,
        rank_temperature,
        count_query_in_rank,
        query_chunk_size,
        tile_size,
        kernel,
    )
    recall = surrogate_recall_at_k(ranks, positive_valid, k_values, k_temperature, k_margin)
    return 1.0 - recall.mean(1), positive_valid.any(1)


def calibration_loss(
    sim: torch.Tensor,
    query_labels: torch.Tensor,
    database_labels: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    positive_margin: float = 0.9,
    negative_margin: float = 0.6,
) -> torch.Tensor:
    """Per-query calibration term C(q) (Nq,): the mean hinge of its positives below ``positive_margin`` plus the
    mean hinge of its negatives above ``negative_margin``::

        C(q) = mean_{p ∈ P_q} [α − s(q,p)]₊ + mean_{n ∈ N_q} [s(q,n) − β]₊

    ROADMAP's calibration loss (Ramzi et al., NeurIPS 2021; α = 0.9, β = 0.6 for cosine similarity), taken per
    query. A ranking loss only orders each query's database; this term also ties the similarities to one scale
    across queries. P_q and N_q are the query's database columns (every column except ``excluded_index[q]`` and
    its own ``self_index[q]``) with and without its label; an empty set adds 0.

    >>> import torch
    >>> sim = torch.tensor([[1.0, 0.5, 0.7], [0.5, 1.0, 0.2]])
    >>> labels = torch.tensor([0, 0, 1])
    >>> calibration_loss(sim, labels[:2], labels, self_index=torch.arange(2))  # [0.9-0.5] + [0.7-0.6], [0.9-0.5]
    tensor([0.5000, 0.4000])
    """
    num_queries, num_columns = sim.shape
    outside = _excluded_columns(num_queries, self_index, excluded_index, True, sim.device)
    inside = torch.ones(num_queries, num_columns + 1, dtype=torch.bool, device=sim.device)
    if outside is not None:
        inside.scatter_(1, outside.masked_fill(outside < 0, num_columns), False)  # -1 padding → a spare column
    inside = inside[:, :num_columns]
    same = query_labels.to(sim.device)[:, None] == database_labels.to(sim.device)[None, :]
    positive, negative = same & inside, ~same & inside
    pull = (positive_margin - sim).clamp(min=0) * positive
    push = (sim - negative_margin).clamp(min=0) * negative
    return pull.sum(1) / positive.sum(1).clamp(min=1) + push.sum(1) / negative.sum(1).clamp(min=1)


def calibration_loss_tiled(
    query_emb: torch.Tensor,
    database_emb: torch.Tensor,
    query_labels: torch.Tensor,
    database_labels: torch.Tensor,
    self_index: torch.Tensor | None = None,
    excluded_index: torch.Tensor | None = None,
    positive_margin: float = 0.9,
    negative_margin: float = 0.6,
    tile_size: int | None = None,
) -> torch.Tensor:
    """:func:`calibration_loss` of ``sim = query_emb @ database_emb.T``, a tile of queries at a time: each tile's
    similarities are recomputed in backward (activation checkpointing), so no Nq×N tensor is kept."""
    from torch.utils.checkpoint import checkpoint

    tile_size = tile_size or default_tile_size(len(database_emb), query_emb.device)
    parts = []
    for first in range(0, len(query_emb), tile_size):
        rows = slice(first, first + tile_size)

        def tile(q, rows=rows):
            return calibration_loss(
                q @ database_emb.T,
                query_labels[rows],
                database_labels,
                None if self_index is None else self_index[rows],
                None if excluded_index is None else excluded_index[rows],
                positive_margin,
                negative_margin,
            )

        parts.append(checkpoint(tile, query_emb[rows], use_reentrant=False))
    return torch.cat(parts) if parts else query_emb.new_zeros(0)

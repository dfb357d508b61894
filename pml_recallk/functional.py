"""Pure tensor maths of the Recall@k surrogate (RS@k): soft ranks, surrogate recall and their exact counterparts.

No PyTorch-Metric-Learning import: these functions take a similarity matrix (queries × database, larger = more
similar) and labels, and return per-query quantities. ``RecallKSurrogateLoss`` and ``SimilarityMixup`` are thin
PML-facing layers on top.

Notation (``SPEC.md`` §2). For a query q with database Ω_q and positives P_q ⊆ Ω_q (same label)::

    soft rank       r̃(q,p) = 1 + Σ_{z ∈ Ω_q, z ≠ p} σ((s(q,z) − s(q,p)) / τ_rank)
    surrogate       R̃_k(q) = min(Σ_{p ∈ P_q} σ((k + k_margin − r̃(q,p)) / τ_k), k) / min(k, |P_q|)
    loss            ℓ(q)   = 1 − mean_k R̃_k(q)

The database of a query is every database column except those listed as excluded for it; the column holding the
query itself (``self_index``) is excluded unless ``count_query_in_rank`` (the released code's behaviour), and is
never a positive.

Memory: the soft ranks need |Q|×|P|max×N sigmoid terms per chunk of |Q| queries. :func:`soft_ranks` is a custom
autograd function that keeps none of them for backward (it recomputes them), so peak extra memory is one chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "build_positive_index",
    "soft_ranks",
    "exact_ranks",
    "surrogate_recall_at_k",
    "zero_temperature_recall_at_k",
    "normalised_recall_at_k",
    "recall_k_surrogate_loss",
    "default_query_chunk_size",
]

# Elements of one |Q|×|P|×N sigmoid tensor per chunk when the chunk size is chosen automatically: small enough to stay
# in a CPU's cache (8 MB in float32), large enough on a GPU (64 MB) that kernel launches do not dominate.
_DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 24}


def default_query_chunk_size(num_positives: int, database_size: int, device: torch.device | str = "cpu") -> int:
    """Queries per chunk so that one chunk's |Q|×|P|×N tensor has about 2 M (CPU) or 16 M (GPU) elements."""
    budget = _DEFAULT_CHUNK_ELEMENTS.get(torch.device(device).type, _DEFAULT_CHUNK_ELEMENTS["cuda"])
    return max(1, budget // max(1, num_positives * database_size))


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
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives of every query as a padded index.

    Returns ``(positive_index, positive_valid)``, both (Nq, Pmax): the database columns with the query's label,
    minus the query's own column (``self_index``) and minus ``excluded_index`` (Nq×X, padded with -1). Padding
    slots hold index 0 and ``positive_valid`` False.
    """
    num_queries, database_size = len(query_labels), len(database_labels)
    device = query_labels.device
    database_labels = database_labels.to(device)
    not_positive = _excluded_columns(num_queries, self_index, excluded_index, True, device)
    chunks = []
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        same = query_labels[start:stop, None] == database_labels[None, :]
        if not_positive is not None:
            cols = not_positive[start:stop]
            # Padding (-1) is redirected to an extra dummy column that is dropped afterwards.
            same = torch.cat([same, same.new_zeros(stop - start, 1)], dim=1)
            same.scatter_(1, torch.where(cols < 0, database_size, cols), False)
            same = same[:, :database_size]
        rows, cols = same.nonzero(as_tuple=True)
        counts = same.sum(1)
        chunks.append((rows + start, cols, counts))
    counts = torch.cat([c for _, _, c in chunks]) if chunks else query_labels.new_zeros(0)
    max_positives = int(counts.max()) if num_queries else 0
    positive_index = torch.zeros(num_queries, max(max_positives, 1), dtype=torch.long, device=device)
    positive_valid = torch.zeros(num_queries, max(max_positives, 1), dtype=torch.bool, device=device)
    row_start = torch.cumsum(counts, 0) - counts
    for rows, cols, _ in chunks:
        # nonzero() lists each row's columns in order, so the slot of an entry is its offset within its row.
        flat = torch.arange(len(rows), device=device) + (row_start[rows[0]] if len(rows) else 0)
        slot = flat - row_start[rows]
        positive_index[rows, slot] = cols
        positive_valid[rows, slot] = True
    return positive_index, positive_valid


def _chunk_sigmoids(scaled_sim, positive_index):
    """σ(s_z/τ − s_p/τ) for a chunk of similarities already divided by τ: (Q, P, N), and the positives' (Q, P)."""
    positive_sim = scaled_sim.gather(1, positive_index)
    return (scaled_sim[:, None, :] - positive_sim[:, :, None]).sigmoid_(), positive_sim


def _excluded_sigmoids(scaled_sim, positive_sim, excluded):
    """σ(s_x/τ − s_p/τ) for the excluded columns x of a chunk: (Q, P, X), zero where x is padding."""
    excluded_sim = scaled_sim.gather(1, excluded.clamp(min=0))
    sig = (excluded_sim[:, None, :] - positive_sim[:, :, None]).sigmoid()
    return sig * (excluded >= 0)[:, None, :]


class _SoftRanks(torch.autograd.Function):
    """Soft ranks of every query's positives, computed chunk by chunk and recomputed in backward.

    The database of a query is all N columns minus its excluded ones. Rather than masking a (Q, P, N) tensor,
    the sum runs over all N columns and the excluded columns' terms (a small (Q, P, X) tensor) are subtracted.
    The term z = p is σ(0) = ½ exactly and has zero derivative, so ``1 + Σ_{z≠p}`` is ``½ + Σ_z``.
    """

    @staticmethod
    def forward(ctx, sim, positive_index, positive_valid, excluded, rank_temperature, chunk_size):
        ranks = sim.new_empty(positive_index.shape)
        for start in range(0, len(sim), chunk_size):
            rows = slice(start, start + chunk_size)
            scaled = sim[rows] / rank_temperature
            sig, positive_sim = _chunk_sigmoids(scaled, positive_index[rows])
            total = sig.sum(2)
            del sig
            if excluded is not None:
                total -= _excluded_sigmoids(scaled, positive_sim, excluded[rows]).sum(2)
            ranks[rows] = total + 0.5
        ranks.masked_fill_(~positive_valid, 0.0)
        ctx.save_for_backward(sim, positive_index, positive_valid, excluded)
        ctx.rank_temperature, ctx.chunk_size = rank_temperature, chunk_size
        return ranks

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ranks):
        sim, positive_index, positive_valid, excluded = ctx.saved_tensors
        tau, chunk_size = ctx.rank_temperature, ctx.chunk_size
        grad_sim = torch.zeros_like(sim)
        # dr̃_p/ds_z = σ'/τ for z in the database, and dr̃_p/ds_p = −Σ_z σ'/τ.
        weight = grad_ranks.masked_fill(~positive_valid, 0.0) / tau
        for start in range(0, len(sim), chunk_size):
            rows = slice(start, start + chunk_size)
            scaled = sim[rows] / tau
            sig, positive_sim = _chunk_sigmoids(scaled, positive_index[rows])
            # g_p/τ · σ(1 − σ) in one fused pass (the kernel autograd uses for sigmoid).
            w = torch.ops.aten.sigmoid_backward(weight[rows, :, None].expand_as(sig), sig)
            del sig
            grad_sim[rows] = w.sum(1)
            grad_positive = -w.sum(2)
            del w
            if excluded is not None:
                cols = excluded[rows]
                sig_x = _excluded_sigmoids(scaled, positive_sim, cols)
                w_x = sig_x * (1 - sig_x) * weight[rows, :, None]
                grad_sim[rows].scatter_add_(1, cols.clamp(min=0), -w_x.sum(1))
                grad_positive += w_x.sum(2)
            grad_sim[rows].scatter_add_(1, positive_index[rows], grad_positive)
        return grad_sim, None, None, None, None, None


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
    return _SoftRanks.apply(
        sim, positive_index, positive_valid, excluded, float(rank_temperature), int(query_chunk_size)
    )


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

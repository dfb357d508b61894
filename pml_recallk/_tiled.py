"""Soft ranks by tiles of queries: the sigmoid sums of docs/method.md §2 and their backward, chunk by chunk.

Two levels of blocking keep memory bounded:

- a *tile* of T queries holds its T×N similarities (and, in backward, their T×N gradient); with the embeddings as
  input (:class:`TiledSoftRanks`) the tile is recomputed from them, so nothing of size B×N ever exists;
- a *chunk* of Q ≤ T queries of a tile holds the Q×P×N sigmoid terms when the sums are done in PyTorch
  (``kernel="torch"``); the Triton kernel (``kernel="triton"``, :mod:`pml_recallk._triton`) does the sums of a whole
  tile without materialising them.

The database of a query is all N columns minus its excluded ones. Rather than masking a (Q, P, N) tensor, the sum
runs over all N columns and the excluded columns' terms (a small (Q, P, X) tensor) are subtracted. The term z = p is
σ(0) = ½ exactly and has zero derivative, so ``1 + Σ_{z≠p}`` is ``½ + Σ_z``.
"""

from __future__ import annotations

import torch

from ._excluded import excluded_sigmoids, excluded_similarities, subtract_excluded_grad

KERNELS = ("torch", "triton")

# Elements of one |Q|×|P|×N sigmoid tensor per chunk when the chunk size is chosen automatically: small enough to stay
# in a CPU's cache (8 MB in float32), large enough on a GPU (64 MB) that kernel launches do not dominate.
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 24}
# Elements of one T×N similarity tile of the tiled path: 32 MB (CPU) or 256 MB (GPU) in float32, enough rows that the
# tile's matrix product is compute-bound, few enough that a tile and its gradient stay far below the B×d inputs.
_TILE_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 26}
# Below this many Nq×N similarities (64 MB / 256 MB in float32) the tiled path keeps its forward tiles for backward
# instead of recomputing them: the product costs as much as the sigmoids at B = 4,000, and the memory is still less
# than the dense path's (which also holds the Nq×N gradient).
_CACHE_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 26}


def _budget(table: dict[str, int], device: torch.device | str) -> int:
    return table.get(torch.device(device).type, table["cuda"])


def default_query_chunk_size(num_positives: int, database_size: int, device: torch.device | str = "cpu") -> int:
    """Queries per chunk so that one chunk's |Q|×|P|×N tensor has about 2 M (CPU) or 16 M (GPU) elements."""
    return max(1, _budget(_CHUNK_ELEMENTS, device) // max(1, num_positives * database_size))


def default_tile_size(database_size: int, device: torch.device | str = "cpu") -> int:
    """Queries per similarity tile of the tiled path: about 8 M (CPU) or 64 M (GPU) similarities per tile."""
    return max(1, _budget(_TILE_ELEMENTS, device) // max(1, database_size))


def _chunk_ranks(scaled, positive_index, excluded):
    """½ + Σ_z σ(s_z − s_p) − Σ_x σ(s_x − s_p) for a chunk of similarities already divided by τ: (Q, P)."""
    positive_sim = scaled.gather(1, positive_index)
    sig = (scaled[:, None, :] - positive_sim[:, :, None]).sigmoid_()
    total = sig.sum(2)
    del sig
    if excluded is not None:
        total -= excluded_sigmoids(excluded_similarities(scaled, excluded), positive_sim, excluded).sum(2)
    return total + 0.5


def _chunk_rank_grad(scaled, positive_index, excluded, weight):
    """∂(Σ_p w_p r̃_p)/∂s for a chunk (Q, N), with ``weight`` = w/τ (Q, P): σ'/τ at z, minus their sum at p."""
    positive_sim = scaled.gather(1, positive_index)
    sig = (scaled[:, None, :] - positive_sim[:, :, None]).sigmoid_()
    # w/τ · σ(1 − σ) in one fused pass (the kernel autograd uses for sigmoid).
    w = torch.ops.aten.sigmoid_backward(weight[:, :, None].expand_as(sig), sig)
    del sig
    grad = w.sum(1)
    grad_positive = -w.sum(2)
    del w
    if excluded is not None:
        subtract_excluded_grad(
            grad, grad_positive, excluded_similarities(scaled, excluded), positive_sim, excluded, weight
        )
    return grad.scatter_add_(1, positive_index, grad_positive)


def tile_ranks(sim, positive_index, excluded, rank_temperature, chunk_size, kernel="torch"):
    """Unmasked soft ranks (T, P) of a tile of similarities (T, N), by chunks of ``chunk_size`` queries."""
    if kernel == "triton":
        from ._triton import triton_tile_ranks

        return triton_tile_ranks(sim, positive_index, excluded, rank_temperature)
    ranks = sim.new_empty(positive_index.shape)
    for start in range(0, len(sim), chunk_size):
        rows = slice(start, start + chunk_size)
        cols = excluded[rows] if excluded is not None else None
        ranks[rows] = _chunk_ranks(sim[rows] / rank_temperature, positive_index[rows], cols)
    return ranks


def tile_rank_grad(sim, positive_index, excluded, weight, rank_temperature, chunk_size, kernel="torch"):
    """The gradient (T, N) of Σ_{q,p} g_qp r̃(q,p) w.r.t. a tile of similarities, with ``weight`` = g/τ (T, P)."""
    if kernel == "triton":
        from ._triton import triton_tile_rank_grad

        return triton_tile_rank_grad(sim, positive_index, excluded, weight, rank_temperature)
    grad = torch.empty_like(sim)
    for start in range(0, len(sim), chunk_size):
        rows = slice(start, start + chunk_size)
        cols = excluded[rows] if excluded is not None else None
        grad[rows] = _chunk_rank_grad(sim[rows] / rank_temperature, positive_index[rows], cols, weight[rows])
    return grad


class DenseSoftRanks(torch.autograd.Function):
    """Soft ranks from a given (Nq, N) similarity matrix; the sigmoids are recomputed in backward, not stored."""

    @staticmethod
    def forward(ctx, sim, positive_index, positive_valid, excluded, rank_temperature, chunk_size, kernel):
        ranks = tile_ranks(sim, positive_index, excluded, rank_temperature, chunk_size, kernel)
        ranks.masked_fill_(~positive_valid, 0.0)
        ctx.save_for_backward(sim, positive_index, positive_valid, excluded)
        ctx.tiling = rank_temperature, chunk_size, kernel
        return ranks

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ranks):
        sim, positive_index, positive_valid, excluded = ctx.saved_tensors
        tau, chunk_size, kernel = ctx.tiling
        weight = grad_ranks.masked_fill(~positive_valid, 0.0) / tau
        grad_sim = tile_rank_grad(sim, positive_index, excluded, weight, tau, chunk_size, kernel)
        return grad_sim, None, None, None, None, None, None


class TiledSoftRanks(torch.autograd.Function):
    """Soft ranks with s = query_emb · database_embᵀ computed tile by tile, in forward and again in backward.

    Backward accumulates ∂/∂query_emb = G_tile · database_emb and ∂/∂database_emb += G_tileᵀ · query_emb from each
    tile's similarity gradient G_tile (T, N), so memory is the (B + N)×d inputs and gradients plus one tile.
    """

    @staticmethod
    def forward(ctx, query_emb, database_emb, positive_index, positive_valid, excluded, tiling):
        tau, tile_size, chunk_size, kernel = tiling
        ranks = query_emb.new_empty(positive_index.shape)
        keep = len(query_emb) * len(database_emb) <= _budget(_CACHE_ELEMENTS, query_emb.device)
        ctx.tiles = []
        with torch.autocast(query_emb.device.type, enabled=False):
            for start in range(0, len(query_emb), tile_size):
                rows = slice(start, start + tile_size)
                sim = query_emb[rows] @ database_emb.T
                cols = excluded[rows] if excluded is not None else None
                ranks[rows] = tile_ranks(sim, positive_index[rows], cols, tau, chunk_size, kernel)
                if keep:
                    ctx.tiles.append(sim)
        ranks.masked_fill_(~positive_valid, 0.0)
        ctx.save_for_backward(query_emb, database_emb, positive_index, positive_valid, excluded)
        ctx.tiling = tiling
        return ranks

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ranks):
        query_emb, database_emb, positive_index, positive_valid, excluded = ctx.saved_tensors
        tau, tile_size, chunk_size, kernel = ctx.tiling
        weight = grad_ranks.masked_fill(~positive_valid, 0.0) / tau
        grad_query = torch.empty_like(query_emb) if ctx.needs_input_grad[0] else None
        grad_database = torch.zeros_like(database_emb) if ctx.needs_input_grad[1] else None
        with torch.autocast(query_emb.device.type, enabled=False):
            for start in range(0, len(query_emb), tile_size):
                rows = slice(start, start + tile_size)
                sim = ctx.tiles.pop(0) if ctx.tiles else query_emb[rows] @ database_emb.T
                cols = excluded[rows] if excluded is not None else None
                grad_sim = tile_rank_grad(sim, positive_index[rows], cols, weight[rows], tau, chunk_size, kernel)
                del sim
                if grad_query is not None:
                    torch.matmul(grad_sim, database_emb, out=grad_query[rows])
                if grad_database is not None:
                    grad_database.addmm_(grad_sim.T, query_emb[rows])
        return grad_query, grad_database, None, None, None, None

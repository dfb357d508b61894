"""The excluded columns' correction of the soft ranks, shared by the PyTorch and the Triton tile sums.

The sigmoid sums of :mod:`pml_recallk._tiled` and :mod:`pml_recallk._triton` run over all N database columns; a
query's excluded columns (itself, stale copies, its own virtual items; an (Q, X) index padded with -1) are then taken
out with these small (Q, P, X) terms instead of masking a (Q, P, N) tensor.
"""

from __future__ import annotations


def excluded_similarities(sim, excluded, rank_temperature=1.0):
    """s_x/τ for the excluded columns x of each row: (Q, X) (padding -1 reads column 0; masked later)."""
    return sim.gather(1, excluded.clamp(min=0)) / rank_temperature


def excluded_sigmoids(excluded_sim, positive_sim, excluded):
    """σ(s_x/τ − s_p/τ) for the excluded columns x of a chunk: (Q, P, X), zero where x is padding (-1)."""
    sig = (excluded_sim[:, None, :] - positive_sim[:, :, None]).sigmoid()
    return sig * (excluded >= 0)[:, None, :]


def subtract_excluded_grad(grad, grad_positive, excluded_sim, positive_sim, excluded, weight):
    """Remove the excluded columns' terms from a chunk's gradient (in place); similarities already divided by τ."""
    sig_x = excluded_sigmoids(excluded_sim, positive_sim, excluded)
    w_x = sig_x * (1 - sig_x) * weight[:, :, None]
    grad.scatter_add_(1, excluded.clamp(min=0), -w_x.sum(1))
    grad_positive += w_x.sum(2)

"""k-means for PML's clustering metrics (NMI, AMI) when faiss is not installed."""

from __future__ import annotations

import torch
from sklearn.cluster import KMeans

from .._checks import check_int, check_positive_int

__all__ = ["SklearnKMeans"]


class SklearnKMeans:
    """k-means labels for NMI/AMI without faiss (PML's ``FaissKMeans`` raises ``NameError`` then).

    Follows PML's ``kmeans_func`` contract, ``kmeans(x, num_clusters) -> (N,) cluster ids`` on ``x``'s device,
    with the budget of PML's default (20 Lloyd iterations, one initialisation), seeded, so that results repeat.

    Args:
        max_iter: Lloyd iterations at most.
        seed: seed of the k-means++ initialisation.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> ids = SklearnKMeans()(x, 2)
        >>> bool(ids[0] == ids[1]) and bool(ids[2] == ids[3]) and bool(ids[0] != ids[2])
        True
    """

    def __init__(self, max_iter: int = 20, seed: int = 0) -> None:
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.seed = check_int(seed, "seed", minimum=0)

    def __call__(self, x: torch.Tensor, num_clusters: int) -> torch.Tensor:
        kmeans = KMeans(n_clusters=num_clusters, n_init=1, max_iter=self.max_iter, random_state=self.seed)
        return torch.as_tensor(kmeans.fit_predict(x.detach().cpu().numpy()), device=x.device)

    def __repr__(self) -> str:
        return f"SklearnKMeans(max_iter={self.max_iter}, seed={self.seed})"

"""Exact k-nearest-neighbour search over chunks of queries, with the query itself excluded by index.

PML's ``FaissKNN`` searches every query at once and returns (N, k+1) results before removing the query,
so on SOP at k = 1000 it holds several (N, k) copies at the same time (2.5 GB on top of the embeddings),
and ``CustomKNN`` without ``batch_size`` builds the full N × N matrix. :class:`ChunkedKNN` keeps at most one
chunk of queries × the reference in memory besides the (N, k) result, and follows the PML ``knn_func`` contract
``knn_func(query, k, reference, ref_includes_query) -> (distances, indices)``. It also holds a stored reference
the way PML's ``FaissKNN`` holds an index (``train``, ``add``, ``reset``, ``save``, ``load``), so it can be the
``knn_func`` of PML's ``InferenceModel`` (see ``docs/inference.md``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from pytorch_metric_learning.distances import BaseDistance, DotProductSimilarity, LpDistance
from pytorch_metric_learning.utils import inference

from .._checks import check_choice, check_int, check_positive_int
from .._io import save_torch_atomic

# One chunk's (queries × reference) score block is kept near this size when no chunk size is given.
DEFAULT_CHUNK_BYTES = 128 * 2**20
# faiss scans the reference in blocks itself and holds only (queries × k) results per call, but it takes about
# twice the CPU time per query in calls of a few hundred queries as in calls of 2048 or more.
FAISS_QUERY_BLOCK = 2048

BACKENDS = ("auto", "torch", "faiss")


def faiss_available() -> bool:
    """Whether PML found faiss: exactly the condition under which its ``FaissKNN`` works."""
    return hasattr(inference, "faiss")


class ChunkedKNN:
    """Exact kNN computed a chunk of queries at a time: memory = one chunk × reference block + the result.

    For query ``i`` it returns the ``k`` reference items with the smallest distance (the largest similarity
    when ``distance.is_inverted``), sorted best first. With ``ref_includes_query=True``, query ``i`` is
    reference item ``i`` and that index is never returned, whatever its score: an exact duplicate of the
    query with another label stays in the list, and the query is never kept in place of a duplicate.
    Exact means no approximation: the result is the true top ``k`` of the computed scores; among items with
    exactly equal scores the order is arbitrary.

    Args:
        distance: a PML distance. Default ``LpDistance(normalize_embeddings=False, power=2)``, the squared
            Euclidean distance of PML's default ``FaissKNN`` (``IndexFlatL2``), so both give the same
            neighbours. On L2-normalised embeddings (what PML's testers produce) this ranks exactly like
            ``CosineSimilarity()``.
        query_chunk_size: queries per chunk. ``None``: torch keeps one chunk's score block near 128 MiB
            (554 queries against SOP's 60,502 references); faiss, which scans the reference in blocks itself,
            searches 2048 queries per call (fewer if their k + 1 results would pass 128 MiB).
        backend: ``"torch"`` (matrix product + ``topk``, any device, any PML distance), ``"faiss"`` (a flat
            faiss index on the CPU; Lp distance with p = 2, or a dot-product/cosine similarity with
            power 1), or ``"auto"``: faiss when it is installed, the inputs are on the CPU and the
            distance is one faiss supports; torch otherwise.

    Example::

        >>> import torch
        >>> from pml_recallk.evaluation import ChunkedKNN
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [0.0]])
        >>> distances, indices = ChunkedKNN(query_chunk_size=2)(x, 1, x, ref_includes_query=True)
        >>> indices[[0, 3, 2], 0].tolist()  # items 0 and 3 are duplicates: each is the other's neighbour
        [3, 0, 1]

    As PML's ``InferenceModel(knn_func=...)``: ``train`` stores the reference (``add`` appends to it), and a
    call without ``reference`` searches it::

        >>> knn = ChunkedKNN()
        >>> knn.train(torch.tensor([[0.0], [1.0], [3.0]]))
        >>> knn(torch.tensor([[2.9]]), 2)[1].tolist()
        [[2, 1]]
    """

    def __init__(
        self,
        distance: BaseDistance | None = None,
        query_chunk_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        if distance is None:
            distance = LpDistance(normalize_embeddings=False, p=2, power=2)
        if not isinstance(distance, BaseDistance):
            raise TypeError(f"distance must be a pytorch_metric_learning distance, got {type(distance).__name__}")
        query_chunk_size = check_positive_int(query_chunk_size, "query_chunk_size", allow_none=True)
        check_choice(backend, BACKENDS, "backend")
        if backend == "faiss":
            if not faiss_available():
                raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu, or use backend='torch'")
            if not _faiss_supports(distance):
                raise ValueError(
                    f"backend='faiss' supports LpDistance(p=2) and dot-product/cosine similarities with power=1, "
                    f"not {distance!r}; use backend='torch'"
                )
        self.distance = distance
        self.query_chunk_size = query_chunk_size
        self.backend = backend
        self._stored: list[torch.Tensor] = []

    def __call__(
        self,
        query: torch.Tensor,
        k: int,
        reference: torch.Tensor | None = None,
        ref_includes_query: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(distances, indices)``, each (len(query), k), best first; indices are int64.

        ``reference=None`` searches the stored reference (:meth:`train`, :meth:`add`), moved to the query's
        device and dtype; indices then count the stored rows in the order they were added.
        """
        k = check_int(k, "k", minimum=0)
        if reference is None:
            reference = self.stored_reference()
            if reference is None:
                raise ValueError(
                    "ChunkedKNN has no reference: pass reference=..., or store one first with train(embeddings) "
                    "(InferenceModel.train_knn)"
                )
            reference = reference.to(device=query.device, dtype=query.dtype)
        if ref_includes_query and len(reference) < len(query):
            raise ValueError(
                f"ref_includes_query=True needs query i to be reference i, but reference has {len(reference)} "
                f"rows and query has {len(query)}"
            )
        available = len(reference) - int(ref_includes_query)
        if k > available:
            raise ValueError(
                f"k={k} neighbours requested but each query has only {available} reference items"
                + (" besides itself" if ref_includes_query else "")
            )
        distances = torch.empty(len(query), k, dtype=query.dtype, device=query.device)
        indices = torch.empty(len(query), k, dtype=torch.long, device=query.device)
        if k == 0 or len(query) == 0:
            return distances, indices
        search = self._make_search(reference)
        chunk = self.query_chunk_size or self.default_chunk_size(len(reference), k, self.uses_faiss(reference.device))
        for start in range(0, len(query), chunk):
            end = min(start + chunk, len(query))
            self_index = torch.arange(start, end, device=query.device) if ref_includes_query else None
            distances[start:end], indices[start:end] = search(query[start:end], k, self_index)
        return distances, indices

    # ---- the stored reference: what PML's InferenceModel calls (train_knn, add_to_knn, save/load_knn_func)

    def train(self, embeddings: Any) -> None:
        """Store ``embeddings`` (N, D) as the reference, replacing any stored before (PML's ``FaissKNN.train``)."""
        self.reset()
        self.add(embeddings)

    def add(self, embeddings: Any) -> None:
        """Append ``embeddings`` (M, D) to the stored reference; their indices continue after the stored rows."""
        embeddings = torch.as_tensor(embeddings).detach()
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (items × dimensions), got shape {tuple(embeddings.shape)}")
        if self._stored and embeddings.shape[1] != self._stored[0].shape[1]:
            raise ValueError(
                f"embeddings have {embeddings.shape[1]} dimensions but the stored reference has "
                f"{self._stored[0].shape[1]}; call train() to replace it"
            )
        # Kept as a list and joined on first use: adding many small batches does not copy the reference each time.
        self._stored.append(embeddings)

    def reset(self) -> None:
        """Forget the stored reference."""
        self._stored = []

    def stored_reference(self) -> torch.Tensor | None:
        """The stored reference (N, D), or None before :meth:`train`/:meth:`add`."""
        if not self._stored:
            return None
        if len(self._stored) > 1:
            self._stored = [torch.cat([part.to(self._stored[0].device) for part in self._stored])]
        return self._stored[0]

    def save(self, filename: str | os.PathLike) -> None:
        """Write the stored reference to ``filename`` (a torch file, written atomically)."""
        reference = self.stored_reference()
        if reference is None:
            raise ValueError("ChunkedKNN.save: nothing to save; call train(embeddings) first")
        save_torch_atomic({"reference": reference.cpu()}, filename)

    def load(self, filename: str | os.PathLike) -> None:
        """Read a reference written by :meth:`save` (on the CPU), replacing the stored one."""
        state = torch.load(filename, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("reference"), torch.Tensor):
            raise ValueError(f"{os.fspath(filename)!r} is not a file written by ChunkedKNN.save")
        self.train(state["reference"])

    @staticmethod
    def default_chunk_size(num_reference: int, k: int, uses_faiss: bool) -> int:
        """Queries per chunk when ``query_chunk_size`` is None: about 128 MiB of scores (torch, float32) or
        of k + 1 results (faiss: float32 + int64), and at most 2048 queries for faiss."""
        if uses_faiss:
            return max(1, min(FAISS_QUERY_BLOCK, DEFAULT_CHUNK_BYTES // ((k + 1) * 12)))
        return max(1, DEFAULT_CHUNK_BYTES // (num_reference * 4))

    def uses_faiss(self, device: torch.device) -> bool:
        if self.backend == "faiss":
            return True
        return self.backend == "auto" and faiss_available() and device.type == "cpu" and _faiss_supports(self.distance)

    def _make_search(self, reference: torch.Tensor) -> Callable:
        if self.uses_faiss(reference.device):
            return _FaissSearch(self.distance, reference)
        if isinstance(self.distance, LpDistance) and self.distance.p == 2:
            return _SquaredEuclideanSearch(self.distance, reference)
        return _GenericSearch(self.distance, reference)

    def __repr__(self) -> str:
        return (
            f"ChunkedKNN(distance={type(self.distance).__name__}, query_chunk_size={self.query_chunk_size}, "
            f"backend={self.backend!r})"
        )


def _faiss_supports(distance: BaseDistance) -> bool:
    if isinstance(distance, LpDistance):
        return distance.p == 2
    return isinstance(distance, DotProductSimilarity) and distance.power == 1


class _GenericSearch:
    """Any PML distance: ``compute_mat`` on a chunk of queries against the (once normalised) reference."""

    def __init__(self, distance: BaseDistance, reference: torch.Tensor) -> None:
        self.distance = distance
        self.reference = distance.maybe_normalize(reference)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        mat = self.distance.compute_mat(self.distance.maybe_normalize(query), self.reference)
        return mat**self.distance.power if self.distance.power != 1 else mat

    def to_distance(self, top_scores: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return top_scores

    def __call__(self, query: torch.Tensor, k: int, self_index: torch.Tensor | None):
        scores = self.scores(query)
        if self_index is not None:
            # Excluding by index: the query's own column can never be chosen, duplicates of it can.
            worst = -torch.inf if self.distance.is_inverted else torch.inf
            scores[torch.arange(len(query), device=scores.device), self_index] = worst
        top_scores, top_indices = torch.topk(scores, k, dim=1, largest=self.distance.is_inverted, sorted=True)
        return self.to_distance(top_scores, query), top_indices


class _SquaredEuclideanSearch(_GenericSearch):
    """Lp distance with p = 2, ranked by ||r||² − 2 q·r (one matrix product; ||q||² is constant per row)."""

    def __init__(self, distance: BaseDistance, reference: torch.Tensor) -> None:
        super().__init__(distance, reference)
        self.reference_sq_norms = (self.reference * self.reference).sum(1)

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.reference_sq_norms, self.distance.maybe_normalize(query), self.reference.T, alpha=-2)

    def to_distance(self, top_scores: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        query = self.distance.maybe_normalize(query)
        squared = (top_scores + (query * query).sum(1, keepdim=True)).clamp_min_(0)
        return squared if self.distance.power == 2 else squared ** (self.distance.power / 2)


class _FaissSearch:
    """A flat (exact) faiss index over the reference, searched per chunk; the query is removed by index."""

    def __init__(self, distance: BaseDistance, reference: torch.Tensor) -> None:
        faiss = inference.faiss
        self.distance = distance
        reference = distance.maybe_normalize(reference).detach().cpu().float().contiguous()
        is_euclidean = isinstance(distance, LpDistance)
        self.index = (faiss.IndexFlatL2 if is_euclidean else faiss.IndexFlatIP)(reference.shape[1])
        self.index.add(reference)
        self.is_euclidean = is_euclidean

    def __call__(self, query: torch.Tensor, k: int, self_index: torch.Tensor | None):
        device, dtype = query.device, query.dtype
        query = self.distance.maybe_normalize(query).detach().cpu().float().contiguous()
        if self_index is None:
            scores, indices = self.index.search(query, k)
        else:
            scores, indices = self.index.search(query, k + 1)
            scores, indices = drop_self(scores, indices, self_index.cpu())
        if self.is_euclidean and self.distance.power != 2:
            scores = scores.clamp_min(0) ** (self.distance.power / 2)
        return scores.to(device=device, dtype=dtype), indices.to(device)


def drop_self(
    scores: torch.Tensor, indices: torch.Tensor, self_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the query's own index from each row of a (n, k+1) result, or the last column if it is absent.

    It is absent only when more than k other items tie with the query's own score, so dropping the last
    column keeps the top k of the other items.
    """
    is_self = indices == self_index[:, None]
    is_self[~is_self.any(1), -1] = True
    keep = ~is_self
    n, k_plus_one = indices.shape
    return scores[keep].view(n, k_plus_one - 1), indices[keep].view(n, k_plus_one - 1)

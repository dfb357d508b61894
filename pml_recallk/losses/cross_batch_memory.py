"""CrossBatchMemory: PML's cross-batch memory (XBM) that also takes the Recall@k surrogate (RS@k) and SiMix."""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .._checks import check_bool, check_embeddings, check_labels, check_positive_int
from .recall_k_surrogate_loss import RecallKSurrogateLoss, float_embeddings
from .similarity_mixup import DATABASE_ONLY, SimilarityMixup, virtual_items_of_parents

UNKNOWN_SAMPLE_ID = -1


class CrossBatchMemory(pml_losses.CrossBatchMemory):
    r"""PML's ``CrossBatchMemory`` whose loss may also be ``RecallKSurrogateLoss`` or
    ``SimilarityMixup(RecallKSurrogateLoss(), mode="database_only")``.

    For the Recall@k losses the queries are the current batch and the database is the memory: a queue of the
    last ``memory_size`` embeddings, detached, the current batch included (it is enqueued before the loss, as
    PML does). Each query's own entry is left out of its database (docs/method.md §1): it is neither a
    positive nor counted in any rank, so for query q with memory M and sample ids ``id``::

        Ω_q = {z ∈ M : z ≠ q's own entry, id(z) ≠ id(q)}          (the second condition only with sample_ids)
        r̃(q,p) = 1 + Σ_{z ∈ Ω_q, z ≠ p} σ((s(q,z) − s(q,p)) / rank_temperature)   for p ∈ P_q ⊆ Ω_q

    and ℓ(q) is the RS@k loss of docs/method.md §2 on that database. The older entries are constants; the
    current batch's own columns are its live embeddings (``detach_batch=False``), so a memory that holds only
    the batch gives exactly the loss and the gradient of RS@k on the batch alone. With ``SimilarityMixup`` in
    database mode, virtual items mixed from same-class pairs of the enqueued batch extend the database
    (docs/method.md §3), each query's own virtual items left out. Every other PML loss
    goes through PML's ``forward`` unchanged.

    Args:
        loss: ``RecallKSurrogateLoss``, ``SimilarityMixup`` over it with ``mode="database_only"``, or any loss PML's
            ``CrossBatchMemory`` supports.
        embedding_size: the embeddings' width d.
        memory_size: the queue's length; at least the number of items enqueued per call.
        miner: as in PML. For the Recall@k losses a miner (and an ``indices_tuple``) only weights the queries:
            each by how often it is an anchor, divided by the largest count (PML's ``convert_to_weights``).
        detach_batch: Recall@k losses: the batch's own database columns are detached copies too, so gradients
            flow through the queries only (PML's semantics for its losses; measured no better on glyphs).

    ``forward(embeddings, labels, indices_tuple=None, enqueue_mask=None, sample_ids=None)``: PML's arguments,
    plus ``sample_ids`` (one non-negative int per row, e.g. the dataset index; Recall@k losses only), which
    also leaves out of each query's database the older copies of the same sample still in the queue.

    Example:
        >>> import torch
        >>> from pml_recallk import CrossBatchMemory, RecallKSurrogateLoss
        >>> loss_fn = CrossBatchMemory(loss=RecallKSurrogateLoss(), embedding_size=16, memory_size=128)
        >>> embeddings = torch.randn(32, 16, requires_grad=True)
        >>> labels = torch.arange(8).repeat_interleave(4)
        >>> loss = loss_fn(embeddings, labels, sample_ids=torch.arange(32))
        >>> loss.backward()
        >>> loss_fn.queue_idx
        32

    The memory is kept in float32 (float64 embeddings: float64) and the loss computed in that precision, also
    under autocast; the memory moves to the embeddings' device.
    """

    def __init__(
        self,
        loss: torch.nn.Module,
        embedding_size: int,
        memory_size: int = 1024,
        miner: torch.nn.Module | None = None,
        *,
        detach_batch: bool = False,
        **kwargs,
    ):
        embedding_size = check_positive_int(embedding_size, "embedding_size")
        memory_size = check_positive_int(memory_size, "memory_size")
        detach = check_bool(detach_batch, "detach_batch")
        super().__init__(loss=loss, embedding_size=embedding_size, memory_size=memory_size, miner=miner, **kwargs)
        self.detach_batch = detach
        self.add_to_recordable_attributes(list_of_names=["detach_batch"], is_stat=False)
        if isinstance(loss, SimilarityMixup) and loss.mode != DATABASE_ONLY:
            raise ValueError(
                "CrossBatchMemory takes SimilarityMixup only in its database mode (virtual items extend the memory's "
                f"database: mode='database_only'); got mode={loss.mode!r}"
            )

    @staticmethod
    def supported_losses() -> list[str]:
        return pml_losses.CrossBatchMemory.supported_losses() + ["RecallKSurrogateLoss", "SimilarityMixup"]

    @classmethod
    def check_loss_support(cls, loss_name: str) -> None:
        if loss_name not in cls.supported_losses():
            raise ValueError(f"CrossBatchMemory not supported for {loss_name}; supported: {cls.supported_losses()}")

    def reset_queue(self) -> None:
        super().reset_queue()
        self.register_buffer("sample_id_memory", torch.full((self.memory_size,), UNKNOWN_SAMPLE_ID, dtype=torch.long))

    def get_extra_state(self) -> dict:
        """The queue's position, saved with the buffers, so a resumed run continues the queue where it stopped."""
        return {"queue_idx": int(self.queue_idx), "has_been_filled": bool(self.has_been_filled)}

    def set_extra_state(self, state: dict) -> None:
        self.queue_idx, self.has_been_filled = int(state["queue_idx"]), bool(state["has_been_filled"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state dict of PML's class (or of release 0.1) has neither the sample ids nor the queue's position:
        # unknown ids, and PML's own behaviour on loading (an empty queue).
        state_dict.setdefault(prefix + "sample_id_memory", torch.full_like(self.sample_id_memory, UNKNOWN_SAMPLE_ID))
        state_dict.setdefault(prefix + "_extra_state", {"queue_idx": 0, "has_been_filled": False})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def recall_loss(self) -> RecallKSurrogateLoss | None:
        """The wrapped ``RecallKSurrogateLoss`` (inside SiMix too), or None for PML's losses."""
        inner = self.loss.loss if isinstance(self.loss, SimilarityMixup) else self.loss
        return inner if isinstance(inner, RecallKSurrogateLoss) else None

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple=None,
        enqueue_mask: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        enqueued = self._check_batch(embeddings, labels, indices_tuple, enqueue_mask, sample_ids)
        if self.recall_loss is None:
            if sample_ids is not None:
                raise ValueError(
                    f"sample_ids is supported with RecallKSurrogateLoss only; {type(self.loss).__name__} goes "
                    "through PML's CrossBatchMemory, which excludes a query's own entry only"
                )
            return super().forward(embeddings, labels, indices_tuple, enqueue_mask)
        self.reset_stats()
        device = embeddings.device
        labels = labels.to(device)
        self._move_memory(device, float_embeddings(embeddings).dtype, labels.dtype)
        if sample_ids is not None:
            sample_ids = sample_ids.to(device)
        if enqueue_mask is None:
            queries, query_labels, query_ids = embeddings, labels, sample_ids
        else:
            enqueue_mask = enqueue_mask.to(device)
            queries, query_labels = embeddings[~enqueue_mask], labels[~enqueue_mask]
            query_ids = None if sample_ids is None else sample_ids[~enqueue_mask]
            embeddings, labels = embeddings[enqueue_mask], labels[enqueue_mask]
            sample_ids = None if sample_ids is None else sample_ids[enqueue_mask]
        if enqueued > 0:
            self.add_to_memory(embeddings, labels, enqueued, sample_ids)
        else:
            self.curr_batch_idx = torch.zeros(0, dtype=torch.long, device=device)
        enqueued_items = (embeddings, labels)
        return self._recall_loss(queries, query_labels, query_ids, enqueued_items, indices_tuple, enqueue_mask is None)

    def add_to_memory(self, embeddings, labels, batch_size, sample_ids=None):
        # PML casts the memory to the embeddings' dtype before this; the Recall@k path keeps it in float32.
        super().add_to_memory(embeddings.to(self.embedding_memory.dtype), labels, batch_size)
        if sample_ids is None:
            self.sample_id_memory[self.curr_batch_idx] = UNKNOWN_SAMPLE_ID
        else:
            self.sample_id_memory[self.curr_batch_idx] = sample_ids.to(self.sample_id_memory.device)

    def filled_memory(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings, labels, sample ids) of the filled part of the queue, in queue order (row = column)."""
        size = self.memory_size if self.has_been_filled else self.queue_idx
        return self.embedding_memory[:size], self.label_memory[:size], self.sample_id_memory[:size]

    def _check_batch(self, embeddings, labels, indices_tuple, enqueue_mask, sample_ids) -> int:
        """Guards for forward's arguments; returns the number of items that will be enqueued."""
        check_embeddings(embeddings, "embeddings", check_finite=self.recall_loss is not None)
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have size {embeddings.shape[1]} but embedding_size={self.embedding_size}; build "
                "CrossBatchMemory with the embedding size of the model"
            )
        check_labels(labels, "labels", length=len(embeddings))
        if sample_ids is not None:
            check_labels(sample_ids, "sample_ids", length=len(embeddings))
            if bool((sample_ids < 0).any()):
                raise ValueError("sample_ids must be >= 0 (e.g. the dataset index of each row)")
        if indices_tuple is not None and enqueue_mask is not None:
            raise ValueError("indices_tuple and enqueue_mask are mutually exclusive")
        enqueued = len(embeddings)
        if enqueue_mask is not None:
            if not torch.is_tensor(enqueue_mask) or enqueue_mask.dtype != torch.bool:
                got = getattr(enqueue_mask, "dtype", type(enqueue_mask).__name__)
                raise TypeError(f"enqueue_mask must be a bool tensor (True = enqueue this row), got {got}")
            if enqueue_mask.shape != (len(embeddings),):
                raise ValueError(
                    f"enqueue_mask has shape {tuple(enqueue_mask.shape)} but embeddings has {len(embeddings)} rows; "
                    "give one bool per row"
                )
            enqueued = int(enqueue_mask.sum())
        if enqueued > self.memory_size:
            raise ValueError(
                f"memory_size={self.memory_size} is smaller than the {enqueued} items enqueued per call; use a "
                "memory at least as large as the batch"
            )
        return enqueued

    def _move_memory(self, device: torch.device, dtype: torch.dtype, label_dtype: torch.dtype) -> None:
        self.embedding_memory = self.embedding_memory.to(device=device, dtype=dtype)
        self.label_memory = self.label_memory.to(device=device, dtype=label_dtype)
        self.sample_id_memory = self.sample_id_memory.to(device=device)

    def _recall_loss(self, queries, query_labels, query_ids, enqueued_items, indices_tuple, queries_enqueued):
        """RS@k of the queries against the memory, own entries (and stale copies) left out, through RS@k's one entry
        point (:meth:`RecallKSurrogateLoss.forward` with ``ref_emb``, ``self_index``, ``excluded``, ``ref_mixup``)."""
        memory, memory_labels, memory_ids = self.filled_memory()
        if len(queries) == 0 or len(memory) == 0:
            return (queries * 0).sum()  # nothing to rank: a zero that keeps the graph (PML's zero loss)
        self_index = self.curr_batch_idx if queries_enqueued else None
        excluded = None if query_ids is None else stale_copies(query_ids, memory_ids, self_index)
        anchors = self._anchors(queries, query_labels, memory, memory_labels, indices_tuple, queries_enqueued)
        enqueued, enqueued_labels = enqueued_items
        database = memory
        if not self.detach_batch and len(enqueued) > 0:
            # The batch's own columns are its live embeddings: in-batch pairs get gradient on both sides.
            database = memory.index_put((self.curr_batch_idx,), float_embeddings(enqueued).to(memory.dtype))
        mixup = None
        if isinstance(self.loss, SimilarityMixup) and self.loss.training:
            mixup, excluded = self._mixup(enqueued_labels, len(memory), excluded, len(queries), queries_enqueued)
        return self.recall_loss(
            queries,
            query_labels,
            None if anchors is None else (anchors, anchors[:0], anchors[:0]),
            database,
            memory_labels,
            self_index=self_index,
            excluded=excluded,
            ref_mixup=mixup,
        )

    def _anchors(self, queries, query_labels, memory, memory_labels, indices_tuple, queries_enqueued):
        """The anchors of the miner's and the caller's tuples, or None. RS@k weights each query by its count over the
        largest (PML's ``convert_to_weights`` with a reference set reads only the anchors of a tuple, so they are
        passed as a triplet tuple with no positives or negatives)."""
        anchors = []
        if self.miner is not None:
            mined = self.miner(float_embeddings(queries), query_labels, memory, memory_labels)
            if queries_enqueued:
                mined = lmu.remove_self_comparisons(mined, self.curr_batch_idx, self.memory_size)
            anchors.append(lmu.get_anchors(mined))
        if indices_tuple is not None:
            anchors.append(lmu.get_anchors(indices_tuple))
        if not anchors:
            return None
        return torch.cat([a.to(queries.device) for a in anchors])

    def _mixup(self, enqueued_labels, memory_size, excluded, num_queries, queries_enqueued):
        """SiMix's pairs (i, j) of the enqueued batch as ``ref_mixup`` of their memory columns (docs/method.md §3),
        and each query's own virtual items added to its excluded columns."""
        pairs = self.loss.draw_pairs(enqueued_labels)
        if pairs is None:
            return None, excluded
        first, second, alpha = pairs
        columns = self.curr_batch_idx
        if queries_enqueued:
            parents = virtual_items_of_parents(first, second, num_queries, offset=memory_size)
            excluded = parents if excluded is None else torch.cat([excluded, parents], dim=1)
        return (columns[first], columns[second], alpha), excluded


def stale_copies(
    query_ids: torch.Tensor, memory_ids: torch.Tensor, self_index: torch.Tensor | None
) -> torch.Tensor | None:
    """(queries, X) memory columns that hold the query's sample id, other than its own entry; -1 padding.

    None when no query has such a copy. Entries of unknown id (-1) never match.
    """
    same = (query_ids[:, None] == memory_ids[None, :]) & (memory_ids >= 0)[None, :]
    if self_index is not None:
        same[torch.arange(len(query_ids), device=same.device), self_index] = False
    counts = same.sum(1)
    if not bool(counts.any()):
        return None
    rows, columns = same.nonzero(as_tuple=True)
    slot = torch.arange(len(rows), device=same.device) - (torch.cumsum(counts, 0) - counts)[rows]
    excluded = torch.full((len(query_ids), int(counts.max())), -1, dtype=torch.long, device=same.device)
    excluded[rows, slot] = columns
    return excluded

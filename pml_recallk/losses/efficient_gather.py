"""RS@k inside PML's ``DistributedLossWrapper(loss, efficient=True)``: each query's own gathered copy left out, and
the other ranks' database columns given their gradient, so that the step is exactly the full batch's.

PML 2.9's efficient mode calls the loss on each rank r with its B local embeddings as queries and
``ref_emb = cat([local embeddings, the other ranks' embeddings in rank order])`` (``all_gather`` with rank r's own
part popped and put first), ``ref_labels`` likewise, and multiplies the result by the world size W. Two things go
wrong for RS@k as PML calls it:

- nothing says which column is the query itself, so each query's own copy is one of its positives (ranked first,
  it inflates every recall: 0.583 instead of 0.890 in the issue's example);
- ``all_gather`` has no backward, so the other ranks' columns are constants: rank s never receives ∂ℓ(q)/∂e_z for
  its items z in rank r's databases, and RS@k (not a sum over pairs) has no symmetry that would make up for it.

:meth:`EfficientGather.detect` recognises the call (a process group with W > 1, ``ref_emb`` W·B rows long that begins
with the queries themselves, bitwise, and ``ref_labels`` with their labels), gathers the embeddings again through
``torch.distributed.nn.functional.all_gather`` (whose backward sums each rank's column gradients back to their
owner), checks that this rebuilds ``ref_emb`` exactly, and excludes column q of query q. The loss returned on rank r
is then Σ_{q on r} ℓ(q) / (number of queries with a positive on all ranks), so that the ranks' losses sum to the
full-batch mean, and rank r's embedding gradient (after PML's ×W) is W·∂L/∂e_r: DistributedDataParallel's average
over ranks is the full batch's gradient, as in the default mode.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from pytorch_metric_learning.reducers import MeanReducer


class EfficientGather(NamedTuple):
    """The live database of an efficient-mode call and each query's own column in it."""

    database: torch.Tensor  # (W·B, d): PML's ref_emb, but every column carries gradient to its rank
    self_index: torch.Tensor  # (B,): column q is query q (PML puts the local rank's embeddings first)

    @classmethod
    def detect(cls, loss, embeddings, labels, ref_emb, ref_labels) -> EfficientGather | None:
        """The efficient wrapper's call, or None for any other call (no collective is then made)."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        world_size, batch_size = dist.get_world_size(), len(embeddings)
        if world_size < 2 or len(ref_emb) != world_size * batch_size:
            return None
        if not (torch.equal(ref_emb[:batch_size], embeddings) and torch.equal(ref_labels[:batch_size], labels)):
            return None
        if not isinstance(loss.reducer, MeanReducer):
            raise ValueError(
                f"RecallKSurrogateLoss under DistributedLossWrapper(efficient=True) is exact with its default "
                f"MeanReducer only, not {type(loss.reducer).__name__}; use the wrapper's default mode "
                "(efficient=False), which computes the loss of the whole gathered batch on every rank"
            )
        rank = dist.get_rank()
        gathered = torch.distributed.nn.functional.all_gather(embeddings)
        database = torch.cat([embeddings] + [part for owner, part in enumerate(gathered) if owner != rank])
        if not torch.equal(database.detach(), ref_emb.detach()):
            raise ValueError(
                "ref_emb begins with the queries and is world_size × batch long, as in DistributedLossWrapper's "
                "efficient mode, but is not the gathered batch; pass ref_emb whose other rows are not the queries, "
                "or use the wrapper as PML calls it"
            )
        return cls(database, torch.arange(batch_size, device=embeddings.device))

    @staticmethod
    def share_of_global_mean(loss: torch.Tensor, loss_dict: dict) -> torch.Tensor:
        """This rank's mean over its queries with a positive → its share of the mean over every rank's queries."""
        losses = loss_dict["loss"]
        local = len(losses["losses"]) if losses.get("reduction_type") == "element" else 0
        total = torch.tensor([float(local)], dtype=torch.float64, device=loss.device)
        dist.all_reduce(total)
        return loss * (local / total.item()) if total.item() > 0 else loss

"""What ``cached_backward`` checks and does under ``torch.distributed`` beyond gathering the global batch.

* a loss that gathers the batch itself (PML's ``DistributedLossWrapper``) is refused: it would gather twice;
* ranks that hold the same batch (a sampler seeded alike on every rank) are refused: each item would be its own
  positive on the other rank;
* train-mode BatchNorm: each rank updates its running statistics over its own chunks; they are then combined into
  exactly what one process would hold after all the ranks' chunks in rank order (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

RunningStatistics = list[tuple[_NormBase, torch.Tensor, torch.Tensor, torch.Tensor]]


def check_single_gather(loss_fn: Callable) -> None:
    """Refuse a ``loss_fn`` holding PML's ``DistributedLossWrapper`` (also inside a PML trainer's ``loss_funcs``)."""
    owner = getattr(loss_fn, "__self__", None)  # MemoryEfficientTrainer passes its bound compute_total_loss
    candidates = [loss_fn, *getattr(owner, "loss_funcs", {}).values()]
    for candidate in candidates:
        if isinstance(candidate, nn.Module) and any(isinstance(m, DistributedLossWrapper) for m in candidate.modules()):
            raise ValueError(
                "loss_fn holds PML's DistributedLossWrapper, but cached_backward already gathers the embeddings of "
                "every rank (the model is in DistributedDataParallel), so the wrapper would gather the batch a second "
                "time; pass the bare loss, e.g. RecallKSurrogateLoss() instead of "
                "DistributedLossWrapper(RecallKSurrogateLoss())"
            )


def check_ranks_hold_different_items(embeddings: list[torch.Tensor], labels: list[torch.Tensor]) -> None:
    """Refuse gathered batches in which two ranks hold the same items: bitwise equal labels and embeddings.

    That is what a sampler seeded alike on every rank (PML's ``MPerClassSampler`` with one seed) gives: every
    item's copy on the other rank becomes one of its positives. Comparing the ranks' blocks costs O(B·d), nothing
    beside the loss; a partial overlap or the same items augmented differently is not detected (use
    ``pml_recallk.samplers.DistributedMPerClassSampler``, whose ranks' slices are disjoint).
    """
    for rank in range(1, len(embeddings)):
        for other in range(rank):
            if torch.equal(labels[rank], labels[other]) and torch.equal(embeddings[rank], embeddings[other]):
                raise ValueError(
                    f"ranks {other} and {rank} hold the same batch (bitwise equal embeddings and labels), so every "
                    "item would count its own copy as a positive: give each rank its own slice of the global batch, "
                    "e.g. with pml_recallk.samplers.DistributedMPerClassSampler (not one sampler seeded alike on "
                    "every rank)"
                )


def check_buffers_not_broadcast(ddp_modules: list[DistributedDataParallel]) -> None:
    """Refuse train-mode BatchNorm under DDP with ``broadcast_buffers=True``.

    DDP would overwrite every rank's running statistics with rank 0's before each chunk's forward, so they would
    follow rank 0's chunks only; with ``broadcast_buffers=False`` they are combined exactly after the step.
    """
    for module in ddp_modules:
        if module.broadcast_buffers and running_statistics(module):
            raise ValueError(
                "train-mode BatchNorm under DistributedDataParallel(broadcast_buffers=True): DDP overwrites the "
                "running statistics with rank 0's before every chunk; wrap the model with forward_sync_buffers=False "
                "(or broadcast_buffers=False; cached_backward then combines the ranks' running statistics exactly), "
                "freeze BatchNorm (eval mode) or use SyncBatchNorm"
            )


def running_statistics(model: nn.Module) -> RunningStatistics:
    """``(module, mean, var, count)`` copies for every train-mode norm layer with running statistics, except
    SyncBatchNorm (whose statistics are already the same on every rank)."""
    found = []
    for module in model.modules():
        if (
            isinstance(module, _NormBase)
            and not isinstance(module, nn.SyncBatchNorm)
            and module.training
            and module.track_running_stats
        ):
            found.append(
                (module, module.running_mean.clone(), module.running_var.clone(), module.num_batches_tracked.clone())
            )
    return found


def combine_running_statistics(before: RunningStatistics, chunks_per_rank: int, group: dist.ProcessGroup) -> None:
    """Set every rank's running statistics to what one process would hold after all ranks' chunks in rank order.

    Rank w started from r₀ and applied its k chunks' updates r ← a·r + m·x (a = 1 − momentum), ending at R_w.
    One process applying the W·k updates in order ends at ``Σ_w a^((W−1−w)k) R_w − a^k r₀ Σ_{w≥1} a^((W−1−w)k)``;
    with ``momentum=None`` (a cumulative average over n₀ earlier batches) at
    ``(Σ_w (n₀+k) R_w − (W−1) n₀ r₀) / (n₀ + W k)``. Computed in float64 from one all-gather of every layer's
    statistics, so every rank gets bitwise the same values.
    """
    if not before:
        return
    world, k = dist.get_world_size(group), chunks_per_rank
    mine = torch.cat([torch.cat([m.running_mean, m.running_var]) for m, *_ in before]).double()
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    offset = 0
    with torch.no_grad():
        for module, mean0, var0, count0 in before:
            width = 2 * len(mean0)
            ends = [part[offset : offset + width] for part in parts]
            start = torch.cat([mean0, var0]).double()
            offset += width
            if module.momentum is None:
                n0 = int(count0)
                combined = (sum((n0 + k) * end for end in ends) - (world - 1) * n0 * start) / (n0 + world * k)
            else:
                a = 1.0 - module.momentum
                weights = [a ** ((world - 1 - w) * k) for w in range(world)]
                combined = sum(wt * end for wt, end in zip(weights, ends)) - a**k * sum(weights[1:]) * start
            module.running_mean.copy_(combined[: len(mean0)])
            module.running_var.copy_(combined[len(mean0) :])
            module.num_batches_tracked.copy_(count0 + world * k)

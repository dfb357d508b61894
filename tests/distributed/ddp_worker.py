"""Run under ``torchrun --nproc_per_node=W``: the library's distributed cases, each rank saving what it saw.

Usage: ``torchrun --standalone --nproc_per_node=W tests/distributed/ddp_worker.py OUTPUT_FOLDER``. Rank r writes
``OUTPUT_FOLDER/rank{r}.pt``: ``{case: {"grads": [...], "buffers": [...], "error": str | None}}``, and rank 0 also
the one-process references ``{case + "/reference": {...}}`` of the whole global batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pml_recallk import RecallKSurrogateLoss, SimilarityMixup, cached_backward

PER_RANK, CHUNK = 12, 4  # 3 chunks per rank; 3 classes × 4 per rank, so RS@k sees positives everywhere


def make_model(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 16), nn.BatchNorm1d(16)] if batchnorm else [nn.Linear(6, 16)]
    return nn.Sequential(*layers, nn.Tanh(), nn.Linear(16, 8)).double()


def global_batch(world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(world_size * PER_RANK, 6, generator=generator, dtype=torch.float64)
    labels = torch.arange(world_size * PER_RANK // 4).repeat_interleave(4)
    return inputs, labels[torch.randperm(len(labels), generator=generator)]


def state(model: nn.Module, error: str | None = None) -> dict:
    return {
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "error": error,
    }


def distributed_case(case: str, rank: int, world_size: int) -> dict:
    inputs, labels = global_batch(world_size)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    local_inputs, local_labels = inputs[mine], labels[mine]
    loss_fn, broadcast_buffers = RecallKSurrogateLoss(), True
    model = make_model(batchnorm=case.startswith("batchnorm"))
    if case == "double_gather":
        loss_fn = DistributedLossWrapper(RecallKSurrogateLoss())
    elif case == "simix_seeded_per_rank":
        loss_fn = SimilarityMixup(RecallKSurrogateLoss(), max_pairs_per_class=3)
    elif case == "same_batch_on_every_rank":
        local_inputs, local_labels = inputs[:PER_RANK], labels[:PER_RANK]
    elif case == "batchnorm_chunk_statistics":
        broadcast_buffers = False
    ddp = DistributedDataParallel(model, forward_sync_buffers=broadcast_buffers)
    torch.manual_seed(100 + rank)  # a different seed on every rank, the habit SiMix must survive
    try:
        cached_backward(ddp, local_inputs, local_labels, loss_fn, CHUNK)
    except ValueError as error:
        return state(model, str(error))
    return state(model)


def reference(case: str, world_size: int) -> dict:
    """One process, the whole global batch, chunked as the ranks chunk it, seeded as rank 0."""
    inputs, labels = global_batch(world_size)
    model = make_model(batchnorm=case.startswith("batchnorm"))
    loss_fn = RecallKSurrogateLoss()
    if "simix" in case:
        loss_fn = SimilarityMixup(loss_fn, max_pairs_per_class=3)
    torch.manual_seed(100)
    embeddings = torch.cat([model(chunk) for chunk in inputs.split(CHUNK)])
    loss_fn(embeddings, labels).backward()
    return state(model)


CASES = [
    "rsk",
    "double_gather",
    "simix_seeded_per_rank",
    "same_batch_on_every_rank",
    "batchnorm_chunk_statistics",
    "batchnorm_broadcast_buffers",
]


def main(output: Path) -> None:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # The references first: inside a process group SimilarityMixup would take its draws from the (absent) others.
    results = {f"{case}/reference": reference(case, world_size) for case in CASES} if rank == 0 else {}
    dist.init_process_group("gloo")
    results |= {case: distributed_case(case, rank, world_size) for case in CASES}
    torch.save(results, output / f"rank{rank}.pt")
    dist.barrier()  # no rank tears gloo down while another still uses it (an abort at exit under load)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""One rank of tests/losses/test_distributed_wrapper.py, started by ``torchrun`` (gloo, CPU).

Each rank embeds its slice of one global batch with a DistributedDataParallel model, takes RS@k through PML's
DistributedLossWrapper in the default and in the efficient mode, and saves the loss and the parameter gradients
(already averaged over the ranks by DDP) to ``OUT/rank<r>.pt``.
"""

import sys

import torch
import torch.distributed as dist
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from torch.nn.parallel import DistributedDataParallel

from pml_recallk import RecallKSurrogateLoss

PER_RANK = 6


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 4)).double()


def global_batch(world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn at random: ranks hold different numbers of queries with a positive, some classes a single item."""
    generator = torch.Generator().manual_seed(world_size)
    inputs = torch.randn(world_size * PER_RANK, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2 * world_size + 1, (world_size * PER_RANK,), generator=generator)
    return inputs, labels


def make_loss() -> RecallKSurrogateLoss:
    return RecallKSurrogateLoss(k_values=(1, 2, 4), rank_temperature=0.1)


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(make_model())
    inputs, labels = global_batch(world_size)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    result = {}
    for efficient in (False, True):
        model.zero_grad()
        loss = DistributedLossWrapper(make_loss(), efficient=efficient)(model(inputs[mine]), labels[mine])
        loss.backward()
        summed = loss.detach().clone()
        dist.all_reduce(summed)
        result[efficient] = {
            "loss": loss.detach(),
            "summed_loss": summed,
            "grads": [p.grad.clone() for p in model.module.parameters()],
        }
    torch.save(result, f"{out}/rank{rank}.pt")
    # Every rank done before any tears gloo down: one CI run on an overloaded machine (CI beside two training
    # processes on 2 cores) saw a rank abort ("terminate called without an active exception") at shutdown.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

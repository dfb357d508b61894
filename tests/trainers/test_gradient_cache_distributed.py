"""cached_backward under DistributedDataParallel: 2 CPU processes (gloo) against one process with the batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_metric_learning.losses import MultiSimilarityLoss
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from pml_recallk import cached_backward

WORLD_SIZE = 2
PER_RANK = 8  # 4 classes × 4 on each rank
CHUNK_SIZE = 3  # does not divide PER_RANK


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 5)).double()
    model[1].eval()  # frozen BatchNorm: a buffer that DDP broadcasts at every forward
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
    return model


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(WORLD_SIZE * PER_RANK, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (WORLD_SIZE * PER_RANK,), generator=generator)
    return inputs, labels


def counting_allreduce(state: dict, bucket):
    state["calls"] += 1
    return default_hooks.allreduce_hook(None, bucket)


def run_rank(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        model = DistributedDataParallel(make_model())
        allreduces = {"calls": 0}
        model.register_comm_hook(allreduces, counting_allreduce)
        inputs, labels = global_batch()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss = cached_backward(model, inputs[mine], labels[mine], MultiSimilarityLoss(), CHUNK_SIZE)
        unequal = None
        try:
            keep = PER_RANK - 2 * rank
            cached_backward(model, inputs[mine][:keep], labels[mine][:keep], MultiSimilarityLoss(), CHUNK_SIZE)
        except ValueError as error:
            unequal = str(error)
        grads = [p.grad for p in model.module.parameters()]
        torch.save(
            {"loss": loss, "grads": grads, "allreduces": allreduces["calls"], "unequal": unequal}, results % rank
        )
        dist.barrier()  # no rank tears gloo down while another still uses it (an abort at exit under load)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch: ~5 s on an idle 2-core machine, ~25 s on a busy one
def test_two_gloo_ranks_give_the_gradient_of_one_process_with_the_whole_batch(tmp_path, monkeypatch):
    # Spawned processes import this module by the name pytest gave it: put the folder it resolves from
    # on the path they inherit.
    monkeypatch.syspath_prepend(str(Path(__file__).parents[__name__.count(".")]))
    results = str(tmp_path / "rank%d.pt")
    mp.spawn(run_rank, args=(str(tmp_path / "store"), results), nprocs=WORLD_SIZE, join=True)

    model = make_model()
    inputs, labels = global_batch()
    reference_loss = MultiSimilarityLoss()(model(inputs), labels)
    reference_loss.backward()

    for rank in range(WORLD_SIZE):
        result = torch.load(results % rank)
        torch.testing.assert_close(result["loss"], reference_loss.detach(), rtol=1e-12, atol=1e-12)
        for grad, p in zip(result["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(grad, p.grad, rtol=1e-9, atol=1e-12)
        # no_sync on every chunk but the last: one all-reduce per step (the model fits one bucket).
        assert result["allreduces"] == 1
        assert "same number of inputs" in result["unequal"]

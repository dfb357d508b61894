"""cached_backward under ``torchrun`` (gloo, 2 and 3 processes): exact against one process, or a clear refusal.

``ddp_worker.py`` runs each case on every rank with a different torch seed per rank; rank 0 also computes the
one-process reference on the whole global batch (chunked as the ranks chunk it, seeded as rank 0), in float64.
"""

from pathlib import Path

import pytest
import torch
from torchrun_launch import torchrun

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks(request, tmp_path_factory):
    output = tmp_path_factory.mktemp(f"ranks{request.param}")
    finished = torchrun(request.param, str(WORKER), str(output))
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = [torch.load(output / f"rank{r}.pt") for r in range(request.param)]
    return results, results[0]


def assert_same_as_reference(ranks, case):
    results, rank0 = ranks
    reference = rank0[f"{case}/reference"]
    for result in results:
        assert result[case]["error"] is None
        for grad, expected in zip(result[case]["grads"], reference["grads"], strict=True):
            torch.testing.assert_close(grad, expected, rtol=0, atol=1e-10)
        for buffer, expected in zip(result[case]["buffers"], reference["buffers"], strict=True):
            torch.testing.assert_close(buffer, expected, rtol=0, atol=1e-10)


@pytest.mark.slow  # one torchrun per world size for the whole module: ~10 s on an idle 2-core machine
def test_rsk_over_the_gathered_batch_equals_one_process_with_the_whole_batch(ranks):
    assert_same_as_reference(ranks, "rsk")


@pytest.mark.slow
def test_simix_draws_the_same_pairs_and_alpha_on_every_rank_whatever_each_ranks_seed(ranks):
    # Every rank seeds torch differently; the reference is seeded as rank 0 (whose draws every rank takes).
    assert_same_as_reference(ranks, "simix_seeded_per_rank")


@pytest.mark.slow
def test_train_mode_batchnorm_running_statistics_are_combined_as_one_process_updates_them(ranks):
    # Each chunk normalised by its own statistics; the running statistics after the ranks' chunks in rank order.
    assert_same_as_reference(ranks, "batchnorm_chunk_statistics")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("double_gather", "pass the bare loss, e.g. RecallKSurrogateLoss() instead of DistributedLossWrapper"),
        ("same_batch_on_every_rank", "ranks 0 and 1 hold the same batch"),
        ("batchnorm_broadcast_buffers", "forward_sync_buffers=False"),
    ],
)
def test_silent_setups_are_refused_on_every_rank_with_what_to_do(ranks, case, words):
    for result in ranks[0]:
        assert words in result[case]["error"]
        assert all(grad is None for grad in result[case]["grads"])  # refused before any gradient

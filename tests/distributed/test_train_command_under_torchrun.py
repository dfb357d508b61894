"""``pml-recallk train`` under ``torchrun`` (gloo, CPU) ends with the weights of one process given the same global
batch.

The command runs in float32, so equality is to a tolerance: a distributed step sums each rank's chunk gradients, then
adds the ranks' sums (DDP's all-reduce) and divides by the world size, where one process adds all chunks in one order;
train-mode BatchNorm's running statistics are combined by a formula instead of being updated chunk after chunk. Those
are float32 rounding differences (measured: 3.4e-7 after 4 Adam steps of a similar 2-process run); ATOL is about 30
times that, and far below what one Adam step at lr 1e-3 moves a weight.
"""

import json

import pytest
import torch
from torchrun_launch import final_state, train

ATOL = 1e-5


def assert_same_weights(output, reference, atol=ATOL):
    got, expected = final_state(output), final_state(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=atol, msg=name)


def run_ok(output, nproc, *extra):
    finished = train(output, nproc, *extra)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return finished


CASES = {
    "rsk, chunk statistics": [],
    "rsk, frozen batchnorm": ["--set", "train.freeze_batchnorm=true"],
    "rsk + simix": ["--set", "mixup.enabled=true", "--set", "mixup.max_pairs_per_class=3"],
    "rsk + cross-batch memory": ["--set", "memory.enabled=true", "--set", "memory.size=48"],
}


@pytest.mark.slow  # two or three fresh processes import torch: 15-40 s on a busy 2-core machine
# Every case with 2 processes; 3 processes once (the batch of 24 splits into 8 each, 2 chunks of 4).
@pytest.mark.parametrize(("case", "nproc"), [*((case, 2) for case in CASES), ("rsk, chunk statistics", 3)])
def test_the_final_weights_equal_one_process_with_the_same_global_batch(tmp_path, case, nproc):
    run_ok(tmp_path / "one", 0, *CASES[case])
    finished = run_ok(tmp_path / "job", nproc, *CASES[case])
    assert_same_weights(tmp_path / "job", tmp_path / "one")
    results = json.loads((tmp_path / "job" / "results.json").read_text())
    assert results["world_size"] == nproc and results["batch_per_rank"] == [24 // nproc] * nproc
    assert results["backend"] == "gloo"
    assert finished.stdout.count("Recall@1") == 1  # rank 0 alone prints
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_a_global_batch_that_does_not_split_over_the_processes_is_refused_on_every_rank(tmp_path):
    finished = train(tmp_path / "job", 3, "--batch-size", "16")
    assert finished.returncode != 0
    # Every rank refuses alike (one line, exit 2; torchrun may stop the others once the first has exited).
    message = "pml-recallk: error: data.batch_size 16 (the global batch) does not split over 3 processes"
    assert message in finished.stderr
    assert "exitcode  : 2" in finished.stderr
    assert not (tmp_path / "job").exists()  # refused before the folder is made

"""``pml-recallk train`` jobs: two nodes on one host, a killed rank, resuming with the same or another world size."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from torchrun_launch import ROOT, TINY, environment, final_state, free_port, train

ATOL = 1e-5  # float32 rounding between world sizes; see test_train_command_under_torchrun.py


def assert_same_weights(output, reference, atol):
    got, expected = final_state(output), final_state(reference)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=atol, msg=name)


@pytest.mark.slow  # two launchers and two workers import torch: 20-50 s on a busy 2-core machine
def test_two_nodes_of_one_process_each_train_as_one_process_does(tmp_path):
    script = shutil.which("pml-recallk")
    if script is None:
        pytest.skip("the pml-recallk command is not installed on PATH")
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=two-nodes",
                # The command as installed, `torchrun ... $(which pml-recallk) train ...`.
                script,
                "train",
                *TINY,
                "--output-dir",
                str(tmp_path / "job"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
            cwd=ROOT,
        )  # fmt: skip
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=180) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    finished = train(tmp_path / "one", 0)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_weights(tmp_path / "job", tmp_path / "one", ATOL)


def _worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of the torchrun worker with ``RANK=rank`` among the launcher's children."""
    children = open(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read().split()
    for child in map(int, children):
        environ = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return child
    raise AssertionError(f"no worker of rank {rank} among {children}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_a_killed_rank_ends_the_job_with_a_message_and_resume_continues_it_exactly(tmp_path):
    epochs = ["--epochs", "6"]
    job = tmp_path / "job"
    arguments = ["-m", "pml_recallk.cli", "train", *TINY, "--output-dir", str(job), *epochs]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(), cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (job / "checkpoints" / "last.pt").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the job ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(_worker_of_rank(launcher.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    assert time.monotonic() - killed < 60
    # torchrun names the dead rank; if rank 0 noticed first, it says what to do.
    assert "SIGKILL" in stderr or "another process of the job stopped" in stderr, stderr[-3000:]
    assert torch.load(job / "checkpoints" / "last.pt", weights_only=True)["epoch"] < 6

    resumed = train(job, 2, *epochs, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = train(tmp_path / "uninterrupted", 2, *epochs)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    # The same world size: the same chunks and summation order, so bitwise the same weights.
    assert_same_weights(job, tmp_path / "uninterrupted", atol=0)


@pytest.mark.slow
def test_a_job_stopped_after_an_epoch_resumes_in_another_world_size(tmp_path):
    # A job of 2 processes that ends after epoch 1 (of TINY's 2), then goes on in one process to epoch 2.
    stopped = train(tmp_path / "job", 2, "--epochs", "1")
    assert stopped.returncode == 0 and torch.load(tmp_path / "job" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = train(tmp_path / "job", 0, "--resume", "--epochs", "2")  # one process, the same global batches
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = train(tmp_path / "one", 0)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Not bitwise: epoch 1's gradients were summed over 2 ranks; equal to float32 rounding.
    assert_same_weights(tmp_path / "job", tmp_path / "one", ATOL)

"""RS@k inside PML's DistributedLossWrapper under ``torchrun`` (2 and 3 gloo processes on CPU), both modes, against
one process with the whole batch: the loss and every rank's DDP-averaged gradient, float64 to 1e-10."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from distributed_rsk_worker import global_batch, make_loss, make_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(world_size: int, out: Path) -> None:
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun_bin), f"--nproc_per_node={world_size}", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(HERE / "distributed_rsk_worker.py"), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # world_size fresh processes import torch: ~10 s on a busy 2-core machine
@pytest.mark.parametrize("world_size", [2, 3])
def test_wrapped_rsk_gives_the_full_batch_loss_and_gradient_on_every_rank(world_size, tmp_path):
    torchrun(world_size, tmp_path)
    model = make_model()
    inputs, labels = global_batch(world_size)
    full = make_loss()(model(inputs), labels)
    full.backward()
    for rank in range(world_size):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        # Default mode: every rank computes the whole gathered batch's loss; PML multiplies it by the world size.
        default = result[False]
        torch.testing.assert_close(default["loss"], full.detach() * world_size, rtol=1e-10, atol=1e-12)
        # Efficient mode: each rank's share; summed over the ranks it is the default mode's value.
        efficient = result[True]
        torch.testing.assert_close(efficient["summed_loss"], full.detach() * world_size, rtol=1e-10, atol=1e-12)
        for mode in (default, efficient):
            for grad, parameter in zip(mode["grads"], model.parameters(), strict=True):
                torch.testing.assert_close(grad, parameter.grad, rtol=1e-10, atol=1e-12)

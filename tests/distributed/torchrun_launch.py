"""Launching ``torchrun`` from a test: the same interpreter, this checkout on the path, one thread per process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # The launched processes import this checkout (not an installed copy), one thread each on a shared machine.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a test run inside a torchrun job must not hand its own job to the children
    return env


def torchrun(nproc: int, *args: str, timeout: float = 120, launcher: list[str] | None = None, **kw):
    """``torchrun --standalone --nproc_per_node=nproc *args``; the finished process (stdout and stderr as text)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=kw.get("cwd", ROOT)
    )


# A run of `pml-recallk train` small enough for a 2-core machine: 8 glyph classes of 16 px, global batch 24, 2 steps.
TINY = [
    "--device", "cpu", "--epochs", "2", "--batch-size", "24",
    "--set", "data.max_classes=8", "--set", "data.image_size=16", "--set", "data.val_fraction=0.25",
    "--set", "train.iterations_per_epoch=1", "--set", "train.chunk_size=4",
    "--set", "model.width=4", "--set", "model.embedding_size=16", "--set", "eval.k_values=[1]",
]  # fmt: skip


def train(output: Path, nproc: int, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``pml-recallk train`` of the TINY run into ``output``: one process (``nproc`` 0, no torchrun) or ``nproc``."""
    arguments = ["-m", "pml_recallk.cli", "train", *TINY, "--output-dir", str(output), *extra]
    if nproc == 0:
        command = [sys.executable, *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=ROOT)
    return torchrun(nproc, *arguments, timeout=timeout)


def final_state(output: Path) -> dict:
    import torch

    return torch.load(output / "checkpoints" / "last.pt", weights_only=True)["model"]

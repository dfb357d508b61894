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

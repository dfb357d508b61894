"""benchmarks/distributed_scaling.py runs end to end on the CPU at tiny sizes; gpu_distributed.py refuses a machine
without CUDA with a message (it is run on a lent GPU machine)."""

import json
import subprocess
import sys

import pytest
import torch
from torchrun_launch import ROOT, environment

SCRIPTS = ROOT / "benchmarks"


@pytest.mark.slow  # four fresh processes import torch: 20-40 s on a busy 2-core machine
def test_the_scaling_benchmark_measures_one_and_two_processes_at_one_global_batch(tmp_path):
    command = [sys.executable, str(SCRIPTS / "distributed_scaling.py"), "--batch", "32", "--chunk", "8",
               "--image-size", "16", "--width", "4", "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment(), cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["ranks"], r["threads_per_rank"]) for r in rows] == [(1, 2), (1, 1), (2, 1)]
    assert len(rows[2]["memory_per_rank_mib"]) == 2 and all(r["step_seconds"] > 0 for r in rows)
    # The same global batch on 1 and 2 processes: the same loss after the same steps (float32 summation order).
    assert rows[2]["final_loss"] == pytest.approx(rows[1]["final_loss"], abs=1e-5)
    assert "| 2 | 1 |" in (tmp_path / "README.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_script_says_it_needs_a_gpu():
    finished = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_distributed.py")], capture_output=True, text=True, timeout=120,
        env=environment(), cwd=ROOT,
    )  # fmt: skip
    assert finished.returncode != 0
    assert "no CUDA device: run this on a GPU machine" in finished.stderr

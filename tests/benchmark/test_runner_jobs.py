"""``run_sweep(jobs > 1)`` and ``--jobs``: runs in worker processes end with the same numbers and trained weights as
runs one after another (on given datasets, and on those the workers build), complete a half-finished sweep, and a
failed run is named.

The workers are spawned processes that import what they unpickle by module name: the test datasets
(``tests.benchmark.conftest.Patterns``) and this module's helpers, hence the repository root on their
``sys.path`` (fixture ``importable``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pml_recallk import benchmark, cli
from pml_recallk.benchmark import Arm, Sweep
from pml_recallk.experiments import load_checkpoint
from pml_recallk.experiments.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TWO_ARMS = [Arm("triplet", "triplet"), Arm("rsk", "rsk")]


def quiet(message: str) -> None:
    pass


@pytest.fixture
def importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def run_names(results) -> list[tuple[str, int]]:
    return [(r["spec"]["arm"], r["spec"]["seed"]) for r in results]


def trained_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_checkpoint(run_dir / "checkpoints" / name)["model"] for name in ("best.pt", "last.pt")}


@pytest.mark.slow  # spawns worker processes, each importing torch: ~6 s on a busy 2-core machine
def test_two_jobs_give_the_same_results_and_weights_as_one_run_after_another(config, datasets, tmp_path, importable):
    sweep = Sweep(config=config, arms=TWO_ARMS, seeds=[0, 1])
    one = benchmark.run_sweep(sweep, tmp_path / "one", datasets=datasets, log=quiet, command="cmd")
    messages = []
    two = benchmark.run_sweep(sweep, tmp_path / "two", datasets=datasets, log=messages.append, command="cmd", jobs=2)
    assert run_names(two) == run_names(one) == [
        ("untrained", 0), ("untrained", 1), ("triplet", 0), ("triplet", 1), ("rsk", 0), ("rsk", 1),
    ]  # fmt: skip
    for a, b in zip(one, two):
        assert (b["spec"], b["test"], b["val_curve"], b["loss_curve"]) == (
            a["spec"], a["test"], a["val_curve"], a["loss_curve"]
        )  # fmt: skip
        assert b["threads"] == 1  # the parent's thread count (conftest: one thread)
    for arm, seed in run_names(one)[2:]:
        a = trained_weights(tmp_path / "one" / "runs" / arm / f"seed_{seed}")
        b = trained_weights(tmp_path / "two" / "runs" / arm / f"seed_{seed}")
        for name in a:
            assert a[name].keys() == b[name].keys()
            for key in a[name]:
                assert torch.equal(a[name][key], b[name][key]), (arm, seed, name, key)
    # One progress line per run as it finished, numbered as in the plan, then the report.
    finished = sorted(m.split(" seed")[0] for m in messages if "test R@1" in m)
    assert finished == [f"[{n}/6] {arm}" for n, arm in enumerate(["untrained"] * 2 + ["triplet"] * 2 + ["rsk"] * 2, 1)]
    assert (tmp_path / "two" / "results.md").exists()


@pytest.mark.slow  # spawns worker processes, each importing torch: ~6 s on a busy 2-core machine
def test_two_jobs_complete_a_sweep_half_finished_one_run_at_a_time(config, datasets, tmp_path, importable):
    half = Sweep(config=config, arms=TWO_ARMS[:1], seeds=[0, 1], floors=[])
    benchmark.run_sweep(half, tmp_path, datasets=datasets, log=quiet, command="cmd")
    written = {path: path.stat().st_mtime_ns for path in tmp_path.glob("runs/*/seed_*/result.json")}
    assert len(written) == 2
    messages = []
    whole = Sweep(config=config, arms=TWO_ARMS, seeds=[0, 1], floors=[])
    results = benchmark.run_sweep(whole, tmp_path, datasets=datasets, log=messages.append, command="cmd", jobs=2)
    assert messages[:2] == [f"[{seed + 1}/4] triplet seed {seed}: finished before, skipped" for seed in (0, 1)]
    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert run_names(results) == [("triplet", 0), ("triplet", 1), ("rsk", 0), ("rsk", 1)]
    assert all((tmp_path / "runs" / "rsk" / f"seed_{seed}" / "result.json").exists() for seed in (0, 1))


@pytest.mark.slow  # spawns worker processes, each importing torch: ~6 s on a busy 2-core machine
def test_a_failed_run_is_named_the_others_are_kept_and_rerunning_continues(config, datasets, tmp_path, importable):
    # A starting checkpoint that does not exist fails only when the run loads it, in its worker.
    init = tmp_path / "init.pt"
    broken = Arm("broken", "triplet", {"model": {"init_checkpoint": str(init)}})
    sweep = Sweep(config=config, arms=[Arm("triplet", "triplet"), broken], seeds=[0], floors=[])
    with pytest.raises(ConfigError, match=r"^broken seed 0: model\.init_checkpoint '.*init\.pt' does not exist$"):
        benchmark.run_sweep(sweep, tmp_path / "out", datasets=datasets, log=quiet, command="cmd", jobs=2)
    finished = tmp_path / "out" / "runs" / "triplet" / "seed_0"
    assert (finished / "result.json").exists() and (finished / "checkpoints" / "best.pt").exists()
    assert not (tmp_path / "out" / "runs" / "broken" / "seed_0" / "result.json").exists()
    assert not (tmp_path / "out" / "results.md").exists()

    shutil.copy(finished / "checkpoints" / "best.pt", init)
    messages = []
    results = benchmark.run_sweep(sweep, tmp_path / "out", datasets=datasets, log=messages.append, jobs=2)
    assert messages[0] == "[1/2] triplet seed 0: finished before, skipped"
    assert results[1]["init_checkpoint"]["path"] == str(init)
    assert (tmp_path / "out" / "results.md").exists()


@pytest.mark.slow  # spawns worker processes, each importing torch: ~6 s on a busy 2-core machine
def test_the_command_lines_jobs_build_their_own_datasets_with_the_same_results(tmp_path, monkeypatch):
    # Without datasets=, a worker builds the datasets of its run's config itself: here glyphs, rendered once into
    # a cache in tmp_path by the first command.
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tiny = ["data.image_size=16", "data.max_classes=10", "data.batch_size=16", "train.iterations_per_epoch=2",
            "train.epochs=2", "model.width=4", "model.embedding_size=8", "train.device=cpu",
            f"data.glyphs_cache_dir={json.dumps(str(tmp_path / 'cache'))}"]  # fmt: skip
    args = ["--losses", "triplet", "--seeds", "0", "--threads", "1", *(a for o in tiny for a in ("--set", o))]
    assert benchmark.main([*args, "--output-dir", str(tmp_path / "one")]) == 0
    assert cli.main(["benchmark", *args, "--jobs", "2", "--output-dir", str(tmp_path / "two")]) == 0
    one, two = tmp_path / "one" / "runs", tmp_path / "two" / "runs"
    for arm in ("untrained", "triplet"):
        a, b = (json.loads((runs / arm / "seed_0" / "result.json").read_text()) for runs in (one, two))
        assert (b["spec"], b["test"]) == (a["spec"], a["test"])
    a, b = trained_weights(one / "triplet" / "seed_0"), trained_weights(two / "triplet" / "seed_0")
    assert all(torch.equal(a[name][key], b[name][key]) for name in a for key in a[name])


class LoadsOnlyInTheParent:
    """Pickles, but cannot be unpickled in another process: a data set a worker cannot load."""

    def __init__(self):
        self.pid = os.getpid()

    def __reduce__(self):
        return _refuse_other_processes, (self.pid,)


def _refuse_other_processes(pid: int) -> LoadsOnlyInTheParent:
    if os.getpid() != pid:
        raise RuntimeError("not in this process")
    return LoadsOnlyInTheParent()


@pytest.mark.slow  # spawns worker processes, each importing torch: ~6 s on a busy 2-core machine
def test_datasets_a_worker_cannot_load_are_a_clear_error(config, datasets, tmp_path, importable):
    sweep = Sweep(config=config, arms=[Arm("triplet", "triplet")], seeds=[0], floors=[])
    given = {**datasets, "train": copy.copy(datasets["train"])}
    given["train"].origin = LoadsOnlyInTheParent()
    with pytest.raises(RuntimeError, match=r"^triplet seed 0 failed: ValueError: a worker process cannot load the "
                       r"datasets given to run_sweep \(RuntimeError: not in this process\).*use jobs=1$"):  # fmt: skip
        benchmark.run_sweep(sweep, tmp_path, datasets=given, log=quiet, command="cmd", jobs=2)


def test_datasets_that_cannot_be_pickled_are_refused_before_any_run(config, datasets, tmp_path):
    given = {**datasets, "train": copy.copy(datasets["train"])}
    given["train"].transform = lambda image: image
    sweep = Sweep(config=config, arms=[Arm("triplet", "triplet")], seeds=[0])
    with pytest.raises(ValueError, match=r"cannot be pickled.*use jobs=1$"):
        benchmark.run_sweep(sweep, tmp_path, datasets=given, log=quiet, command="cmd", jobs=2)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("jobs", ["0", "-2"])
@pytest.mark.parametrize("main", [benchmark.main, lambda argv: cli.main(["benchmark", *argv])], ids=["runner", "cli"])
def test_jobs_below_one_is_one_line_and_exit_2(main, jobs, capsys):
    assert main(["--jobs", jobs]) == 2
    assert capsys.readouterr().err == f"pml-recallk benchmark: error: --jobs must be at least 1, got {jobs}\n"


@pytest.mark.parametrize("jobs", ["two", "1.5"])
def test_jobs_that_is_not_an_integer_is_exit_2(jobs, capsys):
    # argparse's own message (after the usage lines), as for every option of the wrong type.
    assert benchmark.main(["--jobs", jobs]) == 2
    assert f"error: argument --jobs: invalid int value: '{jobs}'" in capsys.readouterr().err


def test_run_sweep_refuses_jobs_below_one(config, datasets, tmp_path):
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        benchmark.run_sweep(Sweep(config=config, arms=TWO_ARMS), tmp_path, datasets=datasets, log=quiet, jobs=0)


_PARENT = """
import os, sys, time
from pml_recallk.benchmark.runner import worker_pool
pool = worker_pool(2)
pids = set()
while len(pids) < 2:  # one task each: a worker that is busy sleeping cannot take the other's
    pids |= {f.result() for f in [pool.submit(os.getpid) for _ in range(8)]}
for _ in range(2):
    pool.submit(time.sleep, 120)
print(*sorted(pids), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that no init reaps in a container counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed():
    """B27: a parent killed by SIGKILL (the OOM killer) left its workers running, then idle, for good."""
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in pids if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, "the workers outlived their parent"
    finally:
        parent.kill()
        parent.wait()

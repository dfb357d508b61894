"""What a run folder keeps to be resumed: RunCheckpoints (contents, damaged or foreign files, a full disk) and the
lock that keeps two live processes out of one output folder."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pml_recallk.experiments.config as experiments_config
from pml_recallk import _io
from pml_recallk.experiments import resolve_config
from pml_recallk.experiments.checkpoints import (
    CHECKPOINT_FORMAT,
    LAST_ENTRIES,
    History,
    Parts,
    RunCheckpoints,
    load_checkpoint,
    output_dir_lock,
    seed_everything,
)
from pml_recallk.experiments.config import ConfigError
from pml_recallk.experiments.train import run_experiment


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_config(tiny_overrides):
    return resolve_config(overrides=[*tiny_overrides, "train.epochs=2"])


def _parts(seed: int = 0, model: torch.nn.Module | None = None) -> Parts:
    torch.manual_seed(seed)
    model, loss = model or torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, model.in_features)).sum().backward()
    optimizer.step()  # a momentum buffer: the optimiser's state is not empty
    return Parts(model=model, loss=loss, miner=None, optimizers={"trunk_optimizer": optimizer}, scheduler=None)


# ------------------------------------------------------------------------------------------ contents


def test_last_holds_every_entry_and_restores_the_parts_and_generators(tmp_path):
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.prepare()
    parts, history = _parts(0), History(loss=[[1, 0.5]], val=[{"epoch": 1, "recall_at_1": 0.5}], epochs_run=1)
    checkpoints.save_last(3, {"train": {}}, parts, history)
    after_save = torch.rand(3)  # what the generator gives next, as saved

    raw = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and set(LAST_ENTRIES) <= set(raw)

    other = _parts(1)
    torch.rand(5)  # move the generator
    restored = checkpoints.restore(checkpoints.read_last(), other)
    assert restored == history
    assert torch.equal(torch.rand(3), after_save)
    for name, tensor in parts.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[name], tensor)
    momentum = other.optimizers["trunk_optimizer"].state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, parts.optimizers["trunk_optimizer"].state_dict()["state"][0]["momentum_buffer"])


def test_a_history_saved_by_an_older_run_keeps_the_defaults_of_the_entries_it_lacks(tmp_path):
    """last.pt of a run before History had ``warnings`` (written only after a collapse) still resumes."""
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.save_last(1, {}, _parts(), History(loss=[[0, 1.0]]))
    state = torch.load(checkpoints.last, weights_only=True)
    del state["history"]["warnings"]
    state["history"]["an_entry_of_the_future"] = 1
    torch.save(state, checkpoints.last)
    restored = checkpoints.restore(checkpoints.read_last(), _parts())
    assert restored == History(loss=[[0, 1.0]]) and restored.warnings == []


def test_seeding_depends_only_on_seed_and_epoch():
    draws = []
    for seed, epoch in ((1, 2), (1, 3), (1, 2)):
        seed_everything(seed, epoch)
        draws.append((torch.rand(1).item(), float(np.random.rand())))  # noqa: NPY002 - the generator PML uses
    assert draws[0] == draws[2] and draws[0] != draws[1]


def test_a_folder_without_last_reads_as_a_fresh_run(tmp_path):
    assert RunCheckpoints(tmp_path).read_last() is None


def test_a_run_folder_means_its_best_checkpoint(tmp_path):
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.save_best(2, {}, torch.nn.Linear(2, 2), {"recall_at_1": 0.25})
    assert checkpoints.best == tmp_path / "checkpoints" / "best.pt"
    assert load_checkpoint(tmp_path)["val"] == {"recall_at_1": 0.25}


@pytest.mark.parametrize("entry", ["rng", "history", "optimizers"])
def test_a_last_checkpoint_without_an_entry_is_one_line_naming_the_file_and_the_entry(tmp_path, entry):
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.save_last(1, {}, _parts(), History())
    state = torch.load(checkpoints.last, weights_only=True)
    del state[entry]
    torch.save(state, checkpoints.last)
    with pytest.raises(ConfigError, match=f"{checkpoints.last} cannot be resumed: it has no {entry}") as error:
        checkpoints.read_last()
    assert "\n" not in str(error.value)


def test_a_last_checkpoint_whose_rng_is_of_another_shape_is_refused(tmp_path):
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.save_last(1, {}, _parts(), History())
    state = torch.load(checkpoints.last, weights_only=True)
    state["rng"] = {"torch": state["rng"]["torch"]}
    torch.save(state, checkpoints.last)
    with pytest.raises(ConfigError, match="no rng"):
        checkpoints.read_last()


def test_a_last_checkpoint_that_does_not_fit_the_model_is_one_line(tmp_path):
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.save_last(1, {}, _parts(), History())
    other = _parts(model=torch.nn.Linear(5, 2))
    with pytest.raises(ConfigError, match="does not fit this run's model") as error:
        checkpoints.restore(checkpoints.read_last(), other)
    assert "\n" not in str(error.value)


def test_resume_from_a_checkpoint_without_rng_is_one_line_before_anything_is_written(tiny_config, tmp_path):
    run_experiment(tiny_config, tmp_path, log=quiet)
    last = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["rng"]
    torch.save(state, last)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    from pml_recallk.cli import main

    assert main(["train", "--output-dir", str(tmp_path), "--resume"]) == 2
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------------------------------------------ disk full


def _disk_full_in_torch_save(monkeypatch, after_bytes: int = 100) -> None:
    """Make torch.save fail as it does on a full disk: an ENOSPC wrapped in torch's RuntimeError."""
    save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        f.write(b"x" * after_bytes)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 498880 vs 498768")  # noqa: B904

    monkeypatch.setattr(torch, "save", full_disk_save)
    return save


def test_a_full_disk_while_writing_last_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.save_last(1, {}, _parts(), History(epochs_run=1))
    _disk_full_in_torch_save(monkeypatch)
    with pytest.raises(ConfigError, match="the disk is full: .*last.pt.*intact.*--resume") as error:
        checkpoints.save_last(2, {}, _parts(), History(epochs_run=2))
    assert "\n" not in str(error.value)
    monkeypatch.undo()
    assert checkpoints.read_last()["epoch"] == 1
    assert sorted(p.name for p in checkpoints.folder.iterdir()) == ["last.pt"]  # no temporary file


def test_a_full_disk_in_a_training_run_exits_2_with_one_line(tiny_config, tmp_path, monkeypatch, capsys):
    from pml_recallk import cli

    def fail_at_epoch_2(obj, f, *args, **kwargs):
        if obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    save = torch.save
    monkeypatch.setattr(torch, "save", fail_at_epoch_2)
    monkeypatch.setattr(experiments_config, "resolve_config", lambda *args, **kwargs: tiny_config)
    assert cli.main(["train", "--output-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("pml-recallk: error: the disk is full: "), error
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_full_disk_while_writing_the_results_is_one_line_and_resume_writes_them(tiny_config, tmp_path, monkeypatch):
    from pml_recallk.experiments import train

    def full(obj, path):
        raise _io.DiskFullError(errno.ENOSPC, "no space left on the device", str(path))

    monkeypatch.setattr(train, "write_json_atomic", full)
    with pytest.raises(ConfigError, match="the disk is full: .*results.json.*--resume") as error:
        run_experiment(tiny_config, tmp_path, log=quiet)
    assert "\n" not in str(error.value)
    monkeypatch.undo()
    results = run_experiment(tiny_config, tmp_path, resume=True, log=quiet)
    assert json.loads((tmp_path / "results.json").read_text())["trained"] == results["trained"]


def test_disk_full_is_recognised_through_the_chain_of_errors(tmp_path, monkeypatch):
    _disk_full_in_torch_save(monkeypatch)
    with pytest.raises(_io.DiskFullError):
        _io.save_torch_atomic({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError):  # any other failure keeps its own type
        _io.replace_atomically(tmp_path / "y", lambda f: (_ for _ in ()).throw(ValueError("no")))


# --------------------------------------------------------------------------------------------- lock


_HOLD = textwrap.dedent(
    """
    import sys, time
    from pml_recallk.experiments.checkpoints import output_dir_lock
    with output_dir_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _holder(folder: Path, seconds: float = 60) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_is_refused_at_once_naming_the_folder_and_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(ConfigError) as error, output_dir_lock(tmp_path):
            pass
        assert time.monotonic() - started < 1
        assert str(tmp_path) in str(error.value) and f"PID {holder.pid}" in str(error.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path)
    holder.kill()  # SIGKILL: no cleanup runs; the lock file stays, its lock does not
    holder.wait()
    with output_dir_lock(tmp_path):
        pass
    assert not (tmp_path / ".pml-recallk.lock").exists()


def test_the_lock_is_reentrant_in_one_process_and_leaves_no_file(tmp_path):
    with output_dir_lock(tmp_path), output_dir_lock(tmp_path / "."):
        assert (tmp_path / ".pml-recallk.lock").read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_a_folder_the_lock_made_is_removed_when_nothing_was_written(tmp_path):
    with output_dir_lock(tmp_path / "a" / "b"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_two_training_runs_into_one_folder_the_second_is_refused_before_writing(
    tiny_config, tmp_path, capsys, monkeypatch
):
    """X10: the second run used to write into the first one's folder, and both ended with exit 0."""
    from pml_recallk import cli

    monkeypatch.setattr(experiments_config, "resolve_config", lambda *args, **kwargs: tiny_config)
    holder = _holder(tmp_path)
    try:
        for resume in ([], ["--resume"]):
            assert cli.main(["train", "--output-dir", str(tmp_path), "--epochs", "1", *resume]) == 2
            error = capsys.readouterr().err.strip()
            assert error == (
                f"pml-recallk: error: {tmp_path.resolve()} is in use by another process (PID {holder.pid}); wait "
                "for it to finish or choose another --output-dir"
            )
        assert sorted(p.name for p in tmp_path.iterdir()) == [".pml-recallk.lock"]
    finally:
        holder.kill()
        holder.wait()

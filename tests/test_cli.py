"""The ``pml-recallk`` command: one-line errors with exit status 2, train / evaluate / config, and --resume.

The resume tests interrupt a tiny run after its first epoch (a simulated crash with ``--stop-after-epoch``, and
a real SIGKILL) and check that resuming ends with exactly the weights and numbers of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pml_recallk import cli
from pml_recallk.cli import main
from pml_recallk.experiments.config import default_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


README = Path(__file__).resolve().parents[1] / "README.md"
TINY = [
    "data.image_size=16",
    "data.max_classes=10",
    "data.batch_size=16",
    "train.iterations_per_epoch=2",
    "train.epochs=3",
    "eval.batch_size=64",
    "model.width=4",
    "model.embedding_size=16",
]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pml_recallk.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
    cache = tmp_path_factory.mktemp("glyph-cache")
    args = []
    for override in [*TINY, f"data.glyphs_cache_dir={json.dumps(str(cache))}"]:
        args += ["--set", override]
    return args


@pytest.fixture(scope="module")
def uninterrupted(tiny_args, tmp_path_factory):
    """A tiny run in this process (subprocesses are kept for what needs one: a crash, a kill)."""
    output = tmp_path_factory.mktemp("uninterrupted")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["train", "--output-dir", str(output), *tiny_args])
    assert status == 0, stderr.getvalue()
    return output, stdout.getvalue()


def one_error_line(capsys, argv: list[str]) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("pml-recallk: error: "), captured.err
    return lines[0]


# ------------------------------------------------------------------------------------- user mistakes


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["train", "--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
        (["train", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
        (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["train", "--dataset", "cub"], "the cub dataset needs its data: pass --data-root PATH"),
        (["train", "--dataset", "cub", "--data-root", "/no/such/folder"], "data root '/no/such/folder' of cub"),
        (["train", "--set", "train.epoch=3"], "unknown config key 'train.epoch'; did you mean train.epochs?"),
        (["train", "--set", "train.epochs=abc"], "train.epochs must be int, got 'abc'"),
        (["train", "--set", "train.epochs"], "must look like table.key=value"),
        (["train", "--epochs", "0"], "train.epochs must be at least 1"),
        (["train", "--batch-size", "30"], "must be a multiple of data.samples_per_class"),
        (["train", "--device", "tpu"], "train.device must be auto, cpu"),
        (["train", "--config", "/no/such.toml"], "config file '/no/such.toml' does not exist"),
        (["train", "--resume"], "--resume needs the --output-dir"),
        (["evaluate"], "the following arguments are required: --checkpoint"),
        (["evaluate", "--checkpoint", "/no/such.pt"], "checkpoint '/no/such.pt' does not exist"),
        (["config", "--set", "loss.k_values=[0]"], "loss.k_values must be a non-empty list"),
        (["train", "--set", "data.max_classes=1"], "data.max_classes must be 0 (every class) or at least 2"),
        (["evaluate", "--checkpoint", str(README)], "cannot read checkpoint"),
        (["train", "--output-dir", str(README)], "is a file; choose a folder for --output-dir"),
        (["train", "--output-dir", str(README / "run")], "cannot be made"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(capsys, argv, message):
    assert message in one_error_line(capsys, argv)


def test_bad_config_file_key_names_the_file(capsys, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nepocs = 3\n")
    line = one_error_line(capsys, ["train", "--config", str(path)])
    assert "mine.toml" in line and "did you mean train.epochs" in line


def test_benchmark_forwards_its_arguments_to_the_runner(capsys, monkeypatch):
    received = []
    monkeypatch.setattr(cli.benchmark, "main", lambda argv: received.append(argv) or 0)
    assert main(["benchmark", "--losses", "rsk", "--help"]) == 0
    assert received == [["--losses", "rsk", "--help"]]


@pytest.mark.parametrize("content", [b"", b"a text file\n" * 50], ids=["empty", "text"])
def test_evaluate_on_a_file_that_is_no_checkpoint_is_one_line(capsys, tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    assert "checkpoint" in one_error_line(capsys, ["evaluate", "--checkpoint", str(path)])


def test_help_exits_0(capsys):
    assert main(["train", "--help"]) == 0
    assert "--output-dir" in capsys.readouterr().out


def test_config_prints_the_resolved_config(capsys):
    assert main(["config", "--set", "train.epochs=5"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    expected = default_config()
    expected["train"]["epochs"] = 5
    assert printed == expected


def test_convenience_flags_win_over_set(capsys, tmp_path):
    assert main(["config", "--set", "train.epochs=5", "--epochs", "7", "--dataset", "cub", "--data-root", "/d"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 7 and printed["data"]["root"] == "/d"
    assert printed["data"]["batch_size"] == 400  # the cub recipe


# ------------------------------------------------------------------------------------------ train


def test_train_prints_untrained_and_trained_recall(uninterrupted):
    output, stdout = uninterrupted
    results = json.loads((output / "results.json").read_text())
    assert "untrained" in stdout and "trained" in stdout
    for k in (1, 2, 4, 8):
        line = next(line for line in stdout.splitlines() if line.startswith(f"Recall@{k} "))
        untrained, trained = map(float, line.split()[1:])
        assert untrained == pytest.approx(results["untrained"][f"recall_at_{k}"], abs=5e-5)
        assert trained == pytest.approx(results["trained"][f"recall_at_{k}"], abs=5e-5)


def test_evaluate_mistakes_are_one_line_and_make_no_folder(uninterrupted, tmp_path, capsys):
    output, _ = uninterrupted
    checkpoint = str(output / "checkpoints" / "best.pt")
    line = one_error_line(capsys, ["evaluate", "--checkpoint", checkpoint, "--split", "bogus"])
    assert line.endswith("glyphs has no split 'bogus'; its splits are train, val, test")
    missing = tmp_path / "nonexistent_dir" / "x.json"
    line = one_error_line(capsys, ["evaluate", "--checkpoint", checkpoint, "--output", str(missing)])
    assert "does not exist" in line and not missing.parent.exists()


def test_resume_with_fewer_epochs_is_refused_and_keeps_the_config(uninterrupted, tiny_args, capsys):
    output, _ = uninterrupted
    saved = (output / "config.toml").read_text()
    line = one_error_line(capsys, ["train", "--output-dir", str(output), "--resume", "--epochs", "2"])
    assert "has already trained 3 epochs" in line
    assert (output / "config.toml").read_text() == saved


def test_evaluate_reports_the_saved_model(uninterrupted, tmp_path, capsys):
    output, _ = uninterrupted
    results = json.loads((output / "results.json").read_text())
    written = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(output / "checkpoints" / "best.pt"), "--output", str(written)]) == 0
    assert json.loads(written.read_text())["test"] == pytest.approx(results["trained"], abs=1e-6)
    assert "Recall@1" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ resume


def assert_same_run(expected_dir, resumed_dir):
    expected = json.loads((expected_dir / "results.json").read_text())
    resumed = json.loads((resumed_dir / "results.json").read_text())
    for key in ("untrained", "trained", "best_epoch", "best_val", "epochs_run"):
        assert resumed[key] == expected[key], key
    for name in ("best.pt", "last.pt"):
        a = torch.load(expected_dir / "checkpoints" / name, weights_only=True)
        b = torch.load(resumed_dir / "checkpoints" / name, weights_only=True)
        assert a["epoch"] == b["epoch"]
        for key, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][key]), (name, key)
    a = torch.load(expected_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed_dir / "checkpoints" / "last.pt", weights_only=True)
    assert a["history"]["loss"] == b["history"]["loss"]
    assert a["history"]["val"] == b["history"]["val"]


def test_resume_after_a_crash_ends_like_an_uninterrupted_run(uninterrupted, tiny_args, tmp_path, capsys):
    expected_dir, _ = uninterrupted
    crashed = run_cli("train", "--output-dir", str(tmp_path), *tiny_args, "--stop-after-epoch", "1")
    assert crashed.returncode == 3, crashed.stderr
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "results.json").exists()

    assert "pass --resume" in one_error_line(capsys, ["train", "--output-dir", str(tmp_path), *tiny_args])

    # --resume alone: the config comes from the checkpoint.
    assert main(["train", "--output-dir", str(tmp_path), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert_same_run(expected_dir, tmp_path)


@pytest.mark.slow
def test_resume_after_sigkill_ends_like_an_uninterrupted_run(uninterrupted, tiny_args, tmp_path, capsys):
    expected_dir, _ = uninterrupted
    last = tmp_path / "checkpoints" / "last.pt"
    process = subprocess.Popen(
        [sys.executable, "-m", "pml_recallk.cli", "train", "--output-dir", str(tmp_path), *tiny_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_after = torch.load(last, weights_only=True)["epoch"]
    assert killed_after < 3
    assert main(["train", "--output-dir", str(tmp_path), *tiny_args, "--resume"]) == 0
    assert f"after epoch {killed_after}" in capsys.readouterr().err
    assert_same_run(expected_dir, tmp_path)


def make_vehicle_id_tree(root, rng):
    """A VehicleID-layout folder: 12 training vehicles and test lists of 3, 4 and 5 vehicles, 4 photos each.

    Each vehicle is a colour with noise, so the classes are learnable and every split has several classes.
    """
    (root / "image").mkdir(parents=True)
    (root / "train_test_split").mkdir()
    lists = {"train_list.txt": range(0, 12), "test_list_800.txt": range(100, 103)}
    lists["test_list_1600.txt"] = range(100, 104)
    lists["test_list_2400.txt"] = range(100, 105)
    colours = {vehicle: rng.integers(0, 256, size=3) for vehicle in range(0, 105)}
    for listing, vehicles in lists.items():
        lines = []
        for vehicle in vehicles:
            for photo in range(4):
                name = f"{vehicle:04d}_{photo}"
                pixels = np.clip(colours[vehicle] + rng.normal(0, 20, size=(20, 20, 3)), 0, 255).astype(np.uint8)
                if not (root / "image" / f"{name}.jpg").exists():
                    Image.fromarray(pixels).save(root / "image" / f"{name}.jpg")
                lines.append(f"{name} {vehicle}")
        (root / "train_test_split" / listing).write_text("\n".join(lines) + "\n")


def test_a_missing_image_is_one_line_before_any_folder_is_made(tmp_path, capsys):
    make_vehicle_id_tree(tmp_path / "VehicleID", np.random.default_rng(0))
    (tmp_path / "VehicleID" / "image" / "0003_1.jpg").unlink()
    argv = ["train", "--dataset", "vehicleid", "--data-root", str(tmp_path / "VehicleID")]
    assert main([*argv, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines ("loading ..."), then the error
    assert err[-1].startswith("pml-recallk: error: VehicleID: image ") and "0003_1.jpg" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "run").exists()


def test_vehicleid_recipe_reports_each_test_list(tmp_path, capsys):
    """A benchmark recipe end to end on a fake VehicleID tree: its three test lists, SiMix, frozen BatchNorm."""
    make_vehicle_id_tree(tmp_path / "VehicleID", np.random.default_rng(0))
    small = ["model.name=small_cnn", "model.embedding_size=16", "model.width=4", "data.image_size=16"]
    small += ["data.batch_size=16", "data.num_workers=0", "train.iterations_per_epoch=1", "train.epochs=1"]
    argv = ["train", "--dataset", "vehicleid", "--data-root", str(tmp_path / "VehicleID")]
    argv += ["--output-dir", str(tmp_path / "run"), *(a for s in small for a in ("--set", s))]
    assert main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    splits = ["test_small", "test_medium", "test_large"]
    assert results["test_splits"] == splits
    assert results["config"]["mixup"]["enabled"] and results["config"]["train"]["freeze_batchnorm"]
    for which in ("untrained", "trained"):
        assert list(results[which]) == splits
        for split in splits:
            assert set(results[which][split]) == {"recall_at_1", "recall_at_5"}
    assert all(f"{split}:" in stdout for split in splits)


def test_metric_table_orders_recall_by_k_and_names_map_at_r():
    from pml_recallk.cli import _metric_table

    metrics = {"recall_at_16": 0.9, "mean_average_precision_at_r": 0.5, "recall_at_2": 0.7, "recall_at_1": 0.6}
    lines = _metric_table({"untrained": metrics, "trained": metrics}).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["Recall@1", "Recall@2", "Recall@16", "MAP@R"]
    assert lines[-1].split()[1:] == ["0.5000", "0.5000"]

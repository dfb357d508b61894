"""A run whose loss cannot learn says so (K44, K45): RS@k's NothingToLearnWarning is printed once, as one line of
the command's log, and kept in ``results.json`` ``warnings``; the run itself is not refused (with a memory, a
batch without positives can still learn from the memory's)."""

from __future__ import annotations

import json

import pytest

from pml_recallk.cli import main


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["loss.k_values=[1000]"], "is at least the size of every query's database"),  # K45: k above every batch
        (["data.samples_per_class=1", "data.batch_size=8"], "no query of the batch has a positive"),  # K44
    ],
    ids=["K45-k-above-the-batch", "K44-one-sample-per-class"],
)
def test_a_loss_that_cannot_learn_is_printed_once_and_kept_in_the_results(
    tiny_cli_args, tmp_path, capsys, overrides, says
):
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["train", "--epochs", "2", "--output-dir", str(tmp_path), *tiny_cli_args, *sets]) == 0
    err = capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text())
    assert {loss for _, loss in results["loss_curve"]} == {0.0}  # the case: nothing trains, every step
    recorded = [w for w in results["warnings"] if says in w]
    assert len(recorded) == 1, results["warnings"]
    assert recorded[0].startswith("epoch 1: RecallKSurrogateLoss: ")
    printed = [line for line in err.splitlines() if says in line]
    assert len(printed) == 1 and printed[0].startswith("pml-recallk: warning: epoch 1: "), err
    assert "NothingToLearnWarning" not in err  # the command's line, not Python's warning with its source line


def test_a_resumed_run_keeps_the_warning_once(tiny_cli_args, tmp_path, capsys):
    sets = ["--set", "loss.k_values=[1000]"]
    assert main(["train", "--epochs", "1", "--output-dir", str(tmp_path), *tiny_cli_args, *sets]) == 0
    assert main(["train", "--epochs", "2", "--resume", "--output-dir", str(tmp_path), *tiny_cli_args, *sets]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len([w for w in results["warnings"] if "database" in w]) == 1, results["warnings"]

"""docs/your_data.md: its four commands, run on generated images (RGB and grayscale, with and without val/)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from own_data import make_tree

from pml_recallk.cli import build_parser, main

DOC = Path(__file__).resolve().parents[2] / "docs" / "your_data.md"
QUICK = ["--epochs", "1", "--device", "cpu", "--set", "data.image_size=16", "--set", "train.iterations_per_epoch=2",
         "--set", "model.width=4", "--set", "data.batch_size=8"]  # fmt: skip


def _commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", DOC.read_text(), re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def _available() -> set[str]:
    parser = build_parser()
    return set(next(a for a in parser._actions if a.dest == "command").choices)


def test_the_doc_gives_the_four_commands():
    assert [c[:2] for c in _commands()] == [["pml-recallk", c] for c in ("train", "evaluate", "embed", "retrieve")]


@pytest.mark.parametrize("mode, val", [("RGB", True), ("L", False)])
def test_the_four_commands_run_on_generated_images(tmp_path, monkeypatch, capsys, mode, val):
    monkeypatch.setenv("PML_RECALLK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.chdir(tmp_path)
    make_tree(tmp_path / "my_photos", classes=8, mode=mode, val=val)
    for argv in _commands():
        command = argv[1]
        if command not in _available():
            continue  # embed and retrieve: in the version that ships them
        argv = argv[1:] + (QUICK if command == "train" else [])
        assert main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        if command == "train":
            results = json.loads((tmp_path / "runs" / "photos" / "results.json").read_text())
            assert results["config"]["data"]["channels"] == (1 if mode == "L" else 3)
        if command == "evaluate":
            assert "Recall@8" in out and f"{results['trained']['recall_at_1']:.4f}" in out

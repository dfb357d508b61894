"""report.validation_rows (printed by benchmarks/validation_table.py): the validation side of a sweep, from the
runs' result.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pml_recallk.benchmark.report import RESULT_FORMAT, validation_rows


def _write(folder: Path, arm: str, seed: int, best_epoch: int, curve: list[tuple[float, float]]) -> None:
    run = folder / "runs" / arm / f"seed_{seed}"
    run.mkdir(parents=True)
    points = [{"epoch": e, "recall_at_1": r, "mean_average_precision_at_r": m} for e, (r, m) in enumerate(curve)]
    spec = {"arm": arm, "seed": seed, "loss": "rsk", "data": {}, "steps": 10}
    result = {"format": RESULT_FORMAT, "spec": spec, "test": {}, "best_epoch": best_epoch, "val_curve": points}
    result |= {"train_seconds": 1.0, "seconds": 2.0}
    (run / "result.json").write_text(json.dumps(result))


def test_rows_use_the_epoch_each_run_chose_and_sort_by_its_map_at_r(tmp_path):
    # Arm "a" chose epoch 2 (as a run selecting by MAP@R would), although epoch 1 has the higher Recall@1.
    _write(tmp_path, "a", 0, 2, [(0.1, 0.05), (0.9, 0.50), (0.8, 0.70)])
    _write(tmp_path, "a", 1, 1, [(0.1, 0.05), (0.9, 0.60), (0.8, 0.40)])
    _write(tmp_path, "b", 0, 1, [(0.1, 0.05), (0.95, 0.80), (0.7, 0.30)])
    _write(tmp_path, "floor", 0, 0, [(0.1, 0.05)])  # nothing trained: left out
    rows = validation_rows(tmp_path)
    assert [row["arm"] for row in rows] == ["b", "a"]
    a = rows[1]
    assert a["best_epoch"] == [2, 1] and a["seeds"] == 2 and a["steps"] == 10
    assert a["val_recall_at_1"] == pytest.approx((0.8 + 0.9) / 2)
    assert a["val_map_at_r"] == pytest.approx((0.70 + 0.60) / 2)
    assert a["last_val_map_at_r"] == pytest.approx((0.70 + 0.40) / 2)

"""The benchmark report (pml_recallk.benchmark.report): table of mean ± sample std, per-seed CSV, plots."""

from __future__ import annotations

import csv
import statistics

import pytest

from pml_recallk import benchmark
from pml_recallk.benchmark import Arm, Sweep
from pml_recallk.experiments.config import ConfigError


def fake_result(arm: str, seed: int, r1: float, map_r: float, seconds: float, batch: int = 16, loss: str = "") -> dict:
    return {
        "spec": {"arm": arm, "loss": loss or arm, "seed": seed, "batch_size": batch, "steps": 8, "images_seen": 128,
                 "data": {"train": {"images": 80, "classes": 10}}},
        "test": {"recall_at_1": r1, "recall_at_2": min(1.0, r1 + 0.1), "mean_average_precision_at_r": map_r},
        "best_epoch": 1,
        "train_seconds": seconds,
        "seconds": seconds + 1,
    }  # fmt: skip


def sweep_of(config, *names: str) -> Sweep:
    return Sweep(config=config, arms=[Arm(name, name) for name in names], seeds=[0])


def test_table_is_mean_and_sample_std_over_seeds(config, tmp_path):
    results = [
        fake_result("triplet", 0, 0.50, 0.20, 10.0),
        fake_result("triplet", 1, 0.60, 0.25, 12.0),
        fake_result("triplet", 2, 0.70, 0.30, 14.0),
        fake_result("fastap", 0, 0.40, 0.10, 20.0),
    ]
    benchmark.write_report(sweep_of(config, "triplet", "fastap"), results, tmp_path, command="CMD --x 1")

    with open(tmp_path / "results.csv") as f:
        rows = {row["arm"]: row for row in csv.DictReader(f)}
    triplet = rows["triplet"]
    assert float(triplet["recall_at_1_mean"]) == pytest.approx(statistics.mean([0.5, 0.6, 0.7]))
    assert float(triplet["recall_at_1_std"]) == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert float(triplet["mean_average_precision_at_r_std"]) == pytest.approx(statistics.stdev([0.2, 0.25, 0.3]))
    assert float(triplet["train_seconds_mean"]) == pytest.approx(12.0)
    assert triplet["num_seeds"] == "3"
    assert float(rows["fastap"]["recall_at_1_std"]) == 0.0  # one seed: no spread to report

    with open(tmp_path / "results_per_seed.csv") as f:
        per_seed = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"], float(r["recall_at_1"])) for r in per_seed] == [
        ("triplet", "0", 0.5), ("triplet", "1", 0.6), ("triplet", "2", 0.7), ("fastap", "0", 0.4)
    ]  # fmt: skip

    markdown = (tmp_path / "results.md").read_text()
    assert markdown.split("```bash\n")[1].startswith("CMD --x 1\n")  # the command comes first
    assert "| triplet | triplet | 16 | 8 | 60.00 ± 10.00 |" in markdown
    # One seed has no spread: the table shows its value alone, not a spread of 0.
    assert "| fastap | fastap | 16 | 8 | 40.00 | 50.00 | 10.00 | 20.0 | 1 |" in markdown
    for plot in ("recall_at_k.png", "recall_at_1_vs_batch.png", "recall_at_1_vs_time.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_differences_are_taken_seed_by_seed(config, tmp_path):
    rsk = [fake_result("rsk", seed, r1, map_r, 5.0) for seed, r1, map_r in ((0, 0.50, 0.2), (1, 0.70, 0.3))]
    triplet = [fake_result("triplet", seed, r1, map_r, 5.0) for seed, r1, map_r in ((0, 0.53, 0.1), (1, 0.71, 0.3))]
    benchmark.write_report(sweep_of(config, "rsk", "triplet"), rsk + triplet, tmp_path, command="cmd")
    markdown = (tmp_path / "results.md").read_text()
    # Differences 3 and 1 points (R@1), -10 and 0 points (MAP@R): mean and sample std of each pair.
    expected_r1 = f"{statistics.mean([3, 1]):+.2f} ± {statistics.stdev([3, 1]):.2f}"
    expected_map = f"{statistics.mean([-10, 0]):+.2f} ± {statistics.stdev([-10, 0]):.2f}"
    assert f"| triplet | {expected_r1} | {expected_map} | 2 |" in markdown


def test_a_difference_over_one_shared_seed_is_shown_without_a_spread(config, tmp_path):
    rsk = [fake_result("rsk", seed, 0.50 + seed / 10, 0.2, 5.0) for seed in (0, 1)]
    triplet = [fake_result("triplet", 1, 0.64, 0.25, 5.0)]  # seed 1 only: one pair, 0.64 - 0.60
    benchmark.write_report(sweep_of(config, "rsk", "triplet"), rsk + triplet, tmp_path, command="cmd")
    expected = f"| triplet | {100 * (0.64 - 0.60):+.2f} | {100 * (0.25 - 0.2):+.2f} | 1 |"
    assert expected in (tmp_path / "results.md").read_text()


def test_rows_group_arms_of_one_loss_for_the_batch_plot(config):
    results = [fake_result(f"rsk_b{b}", 0, r1, 0.2, 1.0, batch=b, loss="rsk") for b, r1 in ((256, 0.5), (1024, 0.6))]
    rows = benchmark.summarize(results + [fake_result("untrained", 0, 0.1, 0.05, 0.0, loss="untrained")])
    assert [(row["arm"], row["loss"], row["batch_size"]) for row in rows] == [
        ("rsk_b256", "rsk", 256), ("rsk_b1024", "rsk", 1024), ("untrained", "untrained", 16)
    ]  # fmt: skip


def _written(tmp_path, text: str):
    run = tmp_path / "runs" / "rsk" / "seed_0"
    run.mkdir(parents=True)
    (run / "result.json").write_text(text)
    return run / "result.json"


def test_a_result_reads_back_as_written(tmp_path):
    import json

    result = {"format": benchmark.RESULT_FORMAT, **fake_result("rsk", 0, 0.5, 0.2, 1.0)}
    path = _written(tmp_path, json.dumps(result))
    assert benchmark.read_result(path) == result
    assert benchmark.load_results(tmp_path) == [result]


@pytest.mark.parametrize(
    ("case", "text", "message"),
    [
        ("B22 truncated", '{"format": "pml-recallk-benchmark-v2", "spec": {"arm": "rsk",', "is damaged"),
        ("B23 empty", "", "is empty"),
        ("B25 another shape", '{"format": 1}', "is not a result of this benchmark (format 1"),
        ("a list", "[1, 2]", "is not a result of this benchmark (format 'list'"),
        ("no test metrics", '{"format": "pml-recallk-benchmark-v2", "spec": {}}', "(no test, best_epoch"),
        ("not UTF-8", "\udcff", "not UTF-8"),
    ],
)
def test_a_damaged_or_foreign_result_is_one_line_naming_the_file(tmp_path, case, text, message):
    run = tmp_path / "runs" / "rsk" / "seed_0"
    run.mkdir(parents=True)
    path = run / "result.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    for read in (lambda: benchmark.read_result(path), lambda: benchmark.load_results(tmp_path)):
        with pytest.raises(ConfigError) as error:
            read()
        line = str(error.value)
        assert line.startswith(str(path)) and message in line and "delete it to rerun" in line, case
        assert "\n" not in line and len(line) < 300, line


def test_a_loss_family_is_the_loss_with_what_changes_its_kind():
    spec = {"arm": "a", "loss": "rsk", "equal_steps": "b",
            "config": {"mixup": {"enabled": True, "mode": "database_only"}, "memory": {"enabled": True}}}  # fmt: skip
    assert benchmark.report._family(spec) == "rsk + SiMix (database_only) + memory (equal steps)"
    # The proxies' own rate makes another line: two ProxyAnchor arms at one batch would otherwise share one.
    spec = {"arm": "pa", "loss": "proxy_anchor", "config": {"train": {"warmup_epochs": 1, "loss_lr": 0.01}}}
    assert benchmark.report._family(spec) == "proxy_anchor + warm-up, loss_lr 0.01"
    assert benchmark.report._family({"arm": "pa", "loss": "proxy_anchor", "config": {"train": {"loss_lr": 0.0}}}) == (
        "proxy_anchor"
    )
    # RS@k's calibration term is a remedy of its own: beside plain RS@k at one batch it is another line, and off
    # (λ = 0, the default) it is plain RS@k.
    spec = {"arm": "c", "loss": "rsk", "config": {"loss": {"name": "rsk", "calibration_weight": 0.1}}}
    assert benchmark.report._family(spec) == "rsk + calibration λ 0.1"
    assert (
        benchmark.report._family({"arm": "c", "loss": "rsk", "config": {"loss": {"calibration_weight": 0.0}}}) == "rsk"
    )


def test_the_batch_plot_puts_equal_steps_arms_in_a_panel_of_their_own_from_their_reference_arm():
    from pml_recallk.benchmark.report import batch_panels

    results = [fake_result("rsk_b256", 0, 0.90, 0.7, 1.0, batch=256, loss="rsk")]
    results += [fake_result("rsk_b1024", 0, 0.91, 0.7, 1.0, batch=1024, loss="rsk")]
    results += [fake_result("c_b256", 0, 0.92, 0.7, 1.0, batch=256, loss="contrastive")]
    for arm, loss, batch, reference in (
        ("rsk_b4096_eq", "rsk", 4096, "rsk_b256"),
        ("c_b1024_eq", "contrastive", 1024, "c_b256"),
    ):
        result = fake_result(arm, 0, 0.93, 0.7, 1.0, batch=batch, loss=loss)
        result["spec"]["equal_steps"] = reference
        results.append(result)
    rows = benchmark.summarize(results)
    (same_epochs_title, same_epochs), (same_steps_title, same_steps) = batch_panels(rows)
    lines = {family: [row["arm"] for row in line] for family, line in same_epochs.items()}
    assert lines == {"rsk": ["rsk_b256", "rsk_b1024"], "contrastive": ["c_b256"]}
    lines = {family: [row["arm"] for row in line] for family, line in same_steps.items()}
    # Each equal-steps line starts at the arm whose steps it takes.
    assert lines == {
        "rsk (equal steps)": ["rsk_b256", "rsk_b4096_eq"],
        "contrastive (equal steps)": ["c_b256", "c_b1024_eq"],
    }
    assert "epochs" in same_epochs_title and "steps" in same_steps_title
    assert len(batch_panels(rows[:3])) == 1  # no equal-steps arm: one panel


def test_the_batch_axis_keeps_the_points_near_the_best_and_shows_a_low_study_whole():
    from pml_recallk.benchmark.report import batch_axis_bottom

    # High Recall: the axis starts 1 below the lowest mean within 20 of the best; the collapsed arm (2.0) and the
    # one 20.5 below the best fall under it.
    assert batch_axis_bottom([47.4, 43.5, 29.3, 26.9, 2.0]) == pytest.approx(28.3)
    # A study whose best is at most 40 is shown from 0: every arm on the axis, the collapsed ones included.
    assert batch_axis_bottom([29.5, 13.7, 11.4, 5.4, 0.8]) == 0.0
    assert batch_axis_bottom([40.0, 1.0]) == 0.0 and batch_axis_bottom([40.5, 1.0]) == pytest.approx(39.5)

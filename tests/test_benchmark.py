"""The loss benchmark runner (pml_recallk.benchmark): protocol, evaluation, resuming, report and command line.

Runs use a small generated data set (noisy copies of one random 16×16 pattern per class), so each takes about a
second on a CPU; the glyph sweeps themselves are run by hand (benchmarks/README.md).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pml_recallk import benchmark
from pml_recallk.benchmark import LOSSES, UNTRAINED, BenchmarkLoss, Sweep
from pml_recallk.config import ConfigError, resolve_config

ROOT = Path(__file__).resolve().parents[1]


class Patterns(Dataset):
    """``per_class`` noisy copies of one random pattern per class, as (1, 16, 16) tensors."""

    def __init__(self, num_classes: int, per_class: int, seed: int, noise: float = 0.8):
        generator = torch.Generator().manual_seed(seed)
        patterns = torch.randn(num_classes, 1, 16, 16, generator=generator)
        self.labels = np.repeat(np.arange(num_classes), per_class)
        self.images = patterns[self.labels] + noise * torch.randn(len(self.labels), 1, 16, 16, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions: a second thread only adds synchronisation, which costs seconds on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def datasets():
    return {"train": Patterns(10, 8, seed=0), "val": Patterns(4, 6, seed=1), "test": Patterns(6, 6, seed=2)}


@pytest.fixture
def config():
    return resolve_config(
        overrides=[
            "train.epochs=2", "data.image_size=16", "model.width=4", "model.embedding_size=8", "train.device=cpu",
        ]
    )  # fmt: skip


def make_sweep(config, **kwargs) -> Sweep:
    settings = {"losses": ["triplet"], "seeds": [0], "budget_images": 128, "batch_size": 16, "chunk_size": 8}
    return Sweep(config=config, **{**settings, **kwargs})


def brute_force_metrics(embeddings: torch.Tensor, labels: np.ndarray, k_values) -> dict[str, float]:
    """Leave-one-out Recall@k and MAP@R, written plainly: sort every other item by distance, then count."""
    embeddings = F.normalize(embeddings.double(), dim=1)
    recall = {k: [] for k in k_values}
    average_precisions = []
    for q in range(len(labels)):
        others = [j for j in range(len(labels)) if j != q]
        distances = [float(torch.dist(embeddings[q], embeddings[j])) for j in others]
        ranked = [others[i] for i in np.argsort(distances, kind="stable")]
        hits = [labels[j] == labels[q] for j in ranked]
        for k in k_values:
            recall[k].append(float(any(hits[:k])))
        r = sum(hits)
        precision_sum, found = 0.0, 0
        for rank, hit in enumerate(hits[:r], start=1):
            if hit:
                found += 1
                precision_sum += found / rank
        average_precisions.append(precision_sum / r)
    metrics = {f"recall_at_{k}": float(np.mean(values)) for k, values in recall.items()}
    metrics["mean_average_precision_at_r"] = float(np.mean(average_precisions))
    return metrics


# ------------------------------------------------------------------------------------------------ protocol


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains_under_the_same_protocol(loss, config, datasets, tmp_path):
    sweep = make_sweep(config, losses=[loss], large_batch_size=24)
    result = benchmark.run_one(sweep, loss, 0, datasets, tmp_path, log=lambda _: None)

    spec = result["spec"]
    large = LOSSES[loss].batch == "large"
    assert spec["batch_size"] == (24 if large else 16)
    assert spec["trainer"] == ("MemoryEfficientTrainer" if large else "MetricLossOnly")
    # The budget is in images: 128 images at 2 epochs is 4 steps of 16 per epoch, or round(64 / 24) = 3 of 24.
    assert spec["images_seen"] == (2 * 3 * 24 if large else 128)
    assert set(result["test"]) == {f"recall_at_{k}" for k in (1, 2, 4, 8)} | {"mean_average_precision_at_r"}
    assert all(0.0 <= value <= 1.0 for value in result["test"].values())
    assert result["best_epoch"] in (1, 2)
    assert [row["epoch"] for row in result["val_history"]] == [1, 2]
    assert result["train_seconds"] > 0
    assert json.loads((tmp_path / "result.json").read_text()) == result
    # HookContainer's record-keeper logged the validation and test accuracies of the run.
    logged = {path.name for path in (tmp_path / "logs").glob("*.csv")}
    assert any("VAL" in name for name in logged) and any("TEST" in name for name in logged)


def test_untrained_row_equals_brute_force_recall_and_map_at_r(config, datasets, tmp_path):
    from pml_recallk.experiment import build_model

    result = benchmark.run_one(make_sweep(config), UNTRAINED, 3, datasets, tmp_path, log=lambda _: None)

    torch.manual_seed(3)
    model = build_model(config).eval()
    test = datasets["test"]
    with torch.no_grad():
        embeddings = model(torch.stack([test[i][0] for i in range(len(test))]))
    expected = brute_force_metrics(embeddings, test.labels, (1, 2, 4, 8))
    assert result["test"] == pytest.approx(expected, abs=1e-6)


def test_large_batch_holds_every_training_class_and_the_same_budget(config):
    config["train"]["epochs"] = 4
    sweep = make_sweep(config, batch_size=32, budget_images=4096)
    assert sweep.batch_of("rsk", num_classes=50) == 32
    assert sweep.batch_of("rsk_large", num_classes=50) == 200  # 50 classes × m = 4
    for batch in (32, 200):
        images = sweep.iterations(batch) * batch * 4
        assert abs(images - 4096) <= 2 * batch  # rounded to whole steps per epoch, never more than a step off
    with pytest.raises(ConfigError, match="classes per batch"):
        sweep.batch_of("rsk", num_classes=7)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("batch_size", 18, "multiple of"), ("large_batch_size", 4, "at least two"), ("budget_images", 0, "at least 1"),
     ("seeds", [1, 1], "distinct"), ("losses", ["rsk", "smooth_ap"], "unknown loss")],
)  # fmt: skip
def test_bad_sweep_settings_are_refused(config, field, value, message):
    with pytest.raises(ConfigError, match=message):
        make_sweep(config, **{field: value})


@pytest.fixture
def seen(monkeypatch):
    """The keyword arguments the runner gives PML's MetricLossOnly, recorded as the trainer is built."""
    from pytorch_metric_learning import trainers

    recorded = {}

    class Recording(trainers.MetricLossOnly):
        def __init__(self, *args, **kwargs):
            recorded.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trainers, "MetricLossOnly", Recording)
    return recorded


def test_proxy_anchor_proxies_get_their_own_optimizer_at_100x(config, datasets, tmp_path, seen):
    benchmark.run_one(make_sweep(config, losses=["proxy_anchor"]), "proxy_anchor", 0, datasets, tmp_path)

    optimizers, loss = seen["optimizers"], seen["loss_funcs"]["metric_loss"]
    assert set(optimizers) == {"trunk_optimizer", "metric_loss_optimizer"}
    proxy_group = optimizers["metric_loss_optimizer"].param_groups[0]
    assert proxy_group["params"][0] is loss.proxies
    assert proxy_group["lr"] == pytest.approx(100 * optimizers["trunk_optimizer"].param_groups[0]["lr"])
    assert loss.proxies.shape == (10, 8)  # one proxy per training class


def test_the_configs_learning_rate_schedule_is_used(config, datasets, tmp_path, seen):
    config["train"].update(lr_milestones=[1], lr_gamma=0.1)
    benchmark.run_one(make_sweep(config), "triplet", 0, datasets, tmp_path)
    # Two epochs with a milestone after the first: the second trains at lr × 0.1.
    assert seen["optimizers"]["trunk_optimizer"].param_groups[0]["lr"] == pytest.approx(config["train"]["lr"] * 0.1)
    assert set(seen["lr_schedulers"]) == {"trunk_scheduler_by_epoch"}


def test_miners_are_passed_to_the_trainer(config, datasets, tmp_path, seen):
    from pytorch_metric_learning import miners

    benchmark.run_one(make_sweep(config), "triplet", 0, datasets, tmp_path)
    miner = seen["mining_funcs"]["tuple_miner"]
    assert isinstance(miner, miners.TripletMarginMiner) and miner.type_of_triplets == "semihard"


# --------------------------------------------------------------------------------------------- resuming


def test_rerun_skips_finished_runs_and_restarts_an_interrupted_one(config, datasets, tmp_path, monkeypatch):
    sweep = make_sweep(config, losses=["triplet", "fastap"], seeds=[0, 1])
    first = benchmark.run_sweep(sweep, tmp_path, datasets=datasets, log=lambda _: None, command="cmd")
    assert [(r["spec"]["loss"], r["spec"]["seed"]) for r in first] == [
        (UNTRAINED, 0), (UNTRAINED, 1), ("triplet", 0), ("triplet", 1), ("fastap", 0), ("fastap", 1),
    ]  # fmt: skip

    # Interrupt fastap seed 1: its folder holds logs but no result.
    interrupted = tmp_path / "runs" / "fastap" / "seed_1"
    (interrupted / "result.json").unlink()
    calls = []
    real_run_one = benchmark.run_one

    def counting_run_one(sweep, loss, seed, *args, **kwargs):
        calls.append((loss, seed))
        return real_run_one(sweep, loss, seed, *args, **kwargs)

    monkeypatch.setattr(benchmark, "run_one", counting_run_one)
    second = benchmark.run_sweep(sweep, tmp_path, datasets=datasets, log=lambda _: None, command="cmd")
    assert calls == [("fastap", 1)]
    assert second[:5] == first[:5]
    # Training is deterministic on CPU for a seed, so the restarted run gives the same numbers.
    assert second[5]["test"] == pytest.approx(first[5]["test"])


def test_finished_runs_made_with_other_settings_are_an_error(config, datasets, tmp_path):
    benchmark.run_sweep(make_sweep(config), tmp_path, datasets=datasets, log=lambda _: None, command="cmd")
    with pytest.raises(ConfigError, match="other settings.*images_seen: 128 != 256"):
        benchmark.run_sweep(
            make_sweep(config, budget_images=256), tmp_path, datasets=datasets, log=lambda _: None, command="cmd"
        )


# ----------------------------------------------------------------------------------------------- report


def fake_result(loss: str, seed: int, r1: float, map_r: float, seconds: float) -> dict:
    return {
        "spec": {"loss": loss, "seed": seed, "batch_size": 16, "steps": 8, "images_seen": 128,
                 "data": {"train": {"images": 80, "classes": 10}}},
        "test": {"recall_at_1": r1, "recall_at_2": min(1.0, r1 + 0.1), "mean_average_precision_at_r": map_r},
        "train_seconds": seconds,
        "seconds": seconds + 1,
    }  # fmt: skip


def test_table_is_mean_and_sample_std_over_seeds(config, tmp_path):
    results = [
        fake_result("triplet", 0, 0.50, 0.20, 10.0),
        fake_result("triplet", 1, 0.60, 0.25, 12.0),
        fake_result("triplet", 2, 0.70, 0.30, 14.0),
        fake_result("fastap", 0, 0.40, 0.10, 20.0),
    ]
    benchmark.write_report(make_sweep(config, losses=["triplet", "fastap"]), results, tmp_path, command="CMD --x 1")

    with open(tmp_path / "results.csv") as f:
        rows = {row["loss"]: row for row in csv.DictReader(f)}
    triplet = rows["triplet"]
    assert float(triplet["recall_at_1_mean"]) == pytest.approx(statistics.mean([0.5, 0.6, 0.7]))
    assert float(triplet["recall_at_1_std"]) == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert float(triplet["mean_average_precision_at_r_std"]) == pytest.approx(statistics.stdev([0.2, 0.25, 0.3]))
    assert float(triplet["train_seconds_mean"]) == pytest.approx(12.0)
    assert triplet["num_seeds"] == "3"
    assert float(rows["fastap"]["recall_at_1_std"]) == 0.0  # one seed: no spread to report

    markdown = (tmp_path / "results.md").read_text()
    assert markdown.split("```bash\n")[1].startswith("CMD --x 1\n")  # the command comes first
    assert "| triplet | 16 | 8 | 60.00 ± 10.00 |" in markdown
    for plot in ("recall_at_k.png", "recall_at_1_vs_time.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_differences_are_taken_seed_by_seed(config, tmp_path):
    rsk = [fake_result("rsk", seed, r1, map_r, 5.0) for seed, r1, map_r in ((0, 0.50, 0.2), (1, 0.70, 0.3))]
    triplet = [fake_result("triplet", seed, r1, map_r, 5.0) for seed, r1, map_r in ((0, 0.53, 0.1), (1, 0.71, 0.3))]
    benchmark.write_report(make_sweep(config, losses=["rsk", "triplet"]), rsk + triplet, tmp_path, command="cmd")
    markdown = (tmp_path / "results.md").read_text()
    # Differences 3 and 1 points (R@1), -10 and 0 points (MAP@R): mean and sample std of each pair.
    expected_r1 = f"{statistics.mean([3, 1]):+.2f} ± {statistics.stdev([3, 1]):.2f}"
    expected_map = f"{statistics.mean([-10, 0]):+.2f} ± {statistics.stdev([-10, 0]):.2f}"
    assert f"| triplet | {expected_r1} | {expected_map} | 2 |" in markdown


def test_sweep_toml_written_with_the_report_reads_back(config, tmp_path):
    sweep = make_sweep(config, losses=["rsk", "fastap"], seeds=[4, 5], glyphs={"one_face_per_family": True})
    benchmark.write_report(sweep, [fake_result("rsk", 4, 0.5, 0.2, 1.0)], tmp_path, command="cmd")
    again, _ = benchmark.load_sweep(tmp_path / "sweep.toml")
    assert (again.losses, again.seeds, again.budget_images) == (["rsk", "fastap"], [4, 5], 128)
    assert again.glyphs == {"one_face_per_family": True}
    assert again.config == sweep.config


# ------------------------------------------------------------------------------------------ sweep files


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "configs").glob("sweep_*.toml")), ids=lambda p: p.name)
def test_committed_sweep_files_are_valid(path):
    sweep, output_dir = benchmark.load_sweep(path)
    assert output_dir == f"benchmarks/results/{path.stem}"
    assert len(sweep.seeds) >= 3
    assert {"rsk", "rsk_large", "rsk_simix", "contrastive", "multi_similarity", "triplet", "proxy_anchor",
            "fastap"} <= set(sweep.losses)  # fmt: skip


def test_sweep_file_tables_override_the_recipe_and_its_model_variant(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('[sweep]\nlosses = ["rsk"]\n\n[model]\nname = "vit_b16"\n\n[train]\nepochs = 3\n')
    sweep, _ = benchmark.load_sweep(path, dataset="cub", overrides=["data.root=/data/CUB_200_2011"])
    # The CUB recipe's ViT-B/16 variant (AdamW at 1e-5), with the file's epochs on top.
    assert (sweep.config["model"]["name"], sweep.config["train"]["optimizer"]) == ("vit_b16", "adamw")
    assert sweep.config["train"]["lr"] == pytest.approx(1e-5)
    assert sweep.config["train"]["epochs"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [('[sweep]\nlosses = ["rsk"]\nbudget = 10\n', "sweep.budget"),
     ('[train]\nepoch = 3\n', "did you mean train.epochs"),
     ('[sweep]\nglyphs = "one_face_per_family"\n', "table of Glyphs arguments"),
     ('[sweep]\nseeds = [0, "1"]\n', "seeds must be")],
)  # fmt: skip
def test_sweep_file_mistakes_name_the_key(text, message, tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        benchmark.load_sweep(path)


# ----------------------------------------------------------------------------------------- command line


def test_list_prints_every_loss_with_its_settings(capsys):
    assert benchmark.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, entry in LOSSES.items():
        assert name in out and entry.settings in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--losses", "rsk,nope"], "unknown loss 'nope'"), (["--sweep", "missing.toml"], "does not exist"),
     (["--batch-size", "30"], "multiple of"), (["--set", "train.epoch=3"], "did you mean train.epochs")],
)  # fmt: skip
def test_user_mistakes_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pml_recallk_benchmark_is_this_runner(capsys):
    from pml_recallk import cli

    assert cli.main(["benchmark", "--list"]) == 0
    assert "proxy_anchor" in capsys.readouterr().out


def test_report_only_rewrites_the_table_from_finished_runs(config, datasets, tmp_path, monkeypatch):
    sweep = make_sweep(config)
    benchmark.run_sweep(sweep, tmp_path / "out", datasets=datasets, log=lambda _: None, command="cmd")
    (tmp_path / "out" / "results.md").unlink()
    sweep_file = tmp_path / "out" / "sweep.toml"
    assert benchmark.main(["--sweep", str(sweep_file), "--output-dir", str(tmp_path / "out"), "--report-only"]) == 0
    assert "| triplet | 16 |" in (tmp_path / "out" / "results.md").read_text()


# ------------------------------------------------------------------------------------------- extending


def test_a_registered_loss_runs_in_a_sweep(config, datasets, tmp_path, monkeypatch):
    from pytorch_metric_learning import losses

    monkeypatch.setitem(LOSSES, "circle", BenchmarkLoss(lambda c, d: (losses.CircleLoss(), None), "CircleLoss()"))
    result = benchmark.run_one(make_sweep(config, losses=["circle"]), "circle", 0, datasets, tmp_path)
    assert result["spec"]["settings"] == "CircleLoss()"
    with pytest.raises(ValueError, match="already registered"):
        benchmark.register_loss("circle", LOSSES["circle"])
    with pytest.raises(ValueError, match="identifier"):
        benchmark.register_loss("my loss", LOSSES["circle"])


def reference_smooth_ap_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.01) -> float:
    """Smooth-AP (Brown et al., 2020) with positives chosen by label, the query among its own positives as in the
    authors' code: 1 − mean_q mean_{p ∈ P_q} (1 + Σ_{j∈P_q, j≠p} σ_pj) / (1 + Σ_{j≠p} σ_pj)."""
    e = F.normalize(embeddings.double(), dim=1)
    s = e @ e.T
    aps = []
    for q in range(len(labels)):
        positives = [j for j in range(len(labels)) if labels[j] == labels[q]]
        terms = []
        for p in positives:
            above = torch.sigmoid((s[q] - s[q, p]) / temperature)
            above[p] = 0.0
            terms.append((1 + above[positives].sum()) / (1 + above.sum()))
        aps.append(torch.stack(terms).mean())
    return float(1 - torch.stack(aps).mean())


def test_pml_smooth_ap_is_left_out_because_it_ignores_labels_on_benchmark_batches():
    """PML 2.9's SmoothAPLoss is not in the benchmark: on MPerClassSampler batches (C classes × m = 4, in blocks)
    it differs from Smooth-AP unless C = m. If this test fails, PML has fixed it: add it to LOSSES."""
    from pytorch_metric_learning.losses import SmoothAPLoss

    torch.manual_seed(0)
    for classes, agrees in ((4, True), (8, False)):
        labels = torch.arange(classes).repeat_interleave(4)
        embeddings = torch.randn(4 * classes, 16) + 2 * torch.randn(classes, 16).repeat_interleave(4, dim=0)
        pml = float(SmoothAPLoss(temperature=0.01)(embeddings, labels))
        assert (abs(pml - reference_smooth_ap_loss(embeddings, labels)) < 1e-4) == agrees
    assert "smooth_ap" not in LOSSES

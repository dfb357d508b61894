"""The benchmark runner (pml_recallk.benchmark.runner): every arm is an experiment run, resumable, with curves.

The central check: one configuration and seed run through ``pml-recallk train``'s function and through the
benchmark end with the same trained weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pml_recallk import benchmark
from pml_recallk.benchmark import UNTRAINED, Arm, Sweep
from pml_recallk.benchmark import runner as runner_module
from pml_recallk.experiments import LOSSES, builders, load_checkpoint, resolve_config, run_experiment
from pml_recallk.experiments.checkpoints import seed_everything
from pml_recallk.experiments.config import ConfigError


def quiet(message: str) -> None:
    pass


def make_sweep(config, arms=None, **kwargs) -> Sweep:
    return Sweep(config=config, arms=arms or [Arm("triplet", "triplet")], seeds=kwargs.pop("seeds", [0]), **kwargs)


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


def run_one(sweep, name, seed, datasets, run_dir):
    """One (arm, seed) as run_sweep runs it."""
    config = runner_module.planned_config(sweep, sweep.arm(name), seed, runner_module._DatasetCache(datasets))
    spec = runner_module._run_spec(name, seed, config, datasets)
    return runner_module.run_arm(spec, config, datasets, run_dir, log=quiet)


# ------------------------------------------------------------------------------------------------ protocol


def test_train_and_benchmark_give_the_same_trained_weights(config, datasets, tmp_path):
    """One config and seed through run_experiment (what `pml-recallk train` runs) and through the benchmark."""
    sweep = make_sweep(config, arms=[Arm("rsk", "rsk")], seeds=[3])
    benchmark.run_sweep(sweep, tmp_path / "bench", datasets=datasets, log=quiet, command="cmd")
    # The same config as `pml-recallk train --seed 3` would resolve (MAP@R, which the benchmark reports, changes
    # what is evaluated, not what is trained).
    trained = resolve_config(overrides=["train.seed=3"], base=config)
    run_experiment(trained, tmp_path / "train", log=quiet, datasets=datasets)
    for name in ("best.pt", "last.pt"):
        a = load_checkpoint(tmp_path / "train" / "checkpoints" / name)["model"]
        b = load_checkpoint(tmp_path / "bench" / "runs" / "rsk" / "seed_3" / "checkpoints" / name)["model"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains_under_the_same_protocol(loss, config, datasets, tmp_path):
    sweep = make_sweep(config, arms=[Arm("arm", loss)])
    result = run_one(sweep, "arm", 0, datasets, tmp_path)
    spec = result["spec"]
    assert (spec["batch_size"], spec["steps"], spec["loss"]) == (16, 4, loss)
    assert set(result["test"]) == {f"recall_at_{k}" for k in (1, 2, 4, 8)} | {"mean_average_precision_at_r"}
    assert all(0.0 <= value <= 1.0 for value in result["test"].values())
    assert result["best_epoch"] in (1, 2)
    # The validation curve per epoch (0: untrained) and the loss of every iteration are recorded.
    assert [row["epoch"] for row in result["val_curve"]] == [0, 1, 2]
    assert [it for it, _ in result["loss_curve"]] == [0, 1, 2, 3] and np.isfinite(result["loss_curve"]).all()
    assert result["train_seconds"] > 0
    assert json.loads((tmp_path / "result.json").read_text()) == result
    logged = {path.name for path in (tmp_path / "logs").glob("*.csv")}
    assert any("VAL" in name for name in logged)


def test_untrained_floor_equals_brute_force_recall_and_map_at_r(config, datasets, tmp_path):
    sweep = make_sweep(config)
    plan = runner_module._planned(sweep, runner_module._DatasetCache(datasets))
    name, seed, floor_config = plan[0]
    assert (name, seed) == (UNTRAINED, 0)
    spec = runner_module._run_spec(name, seed, floor_config, datasets)
    result = runner_module.run_arm(spec, floor_config, datasets, tmp_path, log=quiet)

    seed_everything(0, 0)  # the seeding of a run's initial network
    model = builders.build_model(floor_config).eval()
    test = datasets["test"]
    with torch.no_grad():
        embeddings = model(torch.stack([test[i][0] for i in range(len(test))]))
    expected = brute_force_metrics(embeddings, test.labels, (1, 2, 4, 8))
    assert result["test"] == pytest.approx(expected, abs=1e-6)


@pytest.fixture
def seen(monkeypatch):
    """The keyword arguments the experiment gives its trainer, recorded as the trainer is built."""
    recorded = {}

    class Recording(builders._Trainer):
        def __init__(self, *args, **kwargs):
            recorded.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(builders, "_Trainer", Recording)
    return recorded


def test_proxy_anchor_proxies_get_their_own_optimizer_at_100x(config, datasets, tmp_path, seen):
    run_one(make_sweep(config, arms=[Arm("pa", "proxy_anchor")]), "pa", 0, datasets, tmp_path)
    optimizers, loss = seen["optimizers"], seen["loss_funcs"]["metric_loss"]
    assert set(optimizers) == {"trunk_optimizer", "metric_loss_optimizer"}
    proxy_group = optimizers["metric_loss_optimizer"].param_groups[0]
    assert proxy_group["params"][0] is loss.proxies
    assert proxy_group["lr"] == pytest.approx(100 * optimizers["trunk_optimizer"].param_groups[0]["lr"])
    assert loss.proxies.shape == (10, 8)  # one proxy per training class


def test_train_loss_lr_sets_the_proxies_rate_and_leaves_the_networks(config, datasets, tmp_path, seen):
    arm = Arm("pa", "proxy_anchor", {"train": {"loss_lr": 0.0125}})
    run_one(make_sweep(config, arms=[arm]), "pa", 0, datasets, tmp_path)
    optimizers = seen["optimizers"]
    assert optimizers["metric_loss_optimizer"].param_groups[0]["lr"] == 0.0125
    assert optimizers["trunk_optimizer"].param_groups[0]["lr"] == config["train"]["lr"]


def test_the_configs_learning_rate_schedule_is_used(config, datasets, tmp_path, seen):
    arm = Arm("triplet", "triplet", {"train": {"lr_milestones": [1], "lr_gamma": 0.1}})
    run_one(make_sweep(config, arms=[arm]), "triplet", 0, datasets, tmp_path)
    # Two epochs with a milestone after the first: the second trains at lr × 0.1.
    assert seen["optimizers"]["trunk_optimizer"].param_groups[0]["lr"] == pytest.approx(config["train"]["lr"] * 0.1)
    assert set(seen["lr_schedulers"]) == {"trunk_scheduler_by_epoch"}


def test_miners_are_passed_to_the_trainer(config, datasets, tmp_path, seen):
    from pytorch_metric_learning import miners

    run_one(make_sweep(config), "triplet", 0, datasets, tmp_path)
    miner = seen["mining_funcs"]["tuple_miner"]
    assert isinstance(miner, miners.TripletMarginMiner) and miner.type_of_triplets == "semihard"


def test_a_large_batch_goes_through_the_gradient_cache_in_chunks(config, datasets, tmp_path, seen):
    arm = Arm("rsk_b40", "rsk", {"data": {"batch_size": 40}, "train": {"chunk_size": 8}})
    result = run_one(make_sweep(config, arms=[arm]), "rsk_b40", 0, datasets, tmp_path)
    assert (seen["batch_size"], seen["chunk_size"]) == (40, 8)
    assert (result["spec"]["batch_size"], result["spec"]["chunk_size"]) == (40, 8)


def test_equal_steps_and_budget_set_the_steps_per_epoch(config, datasets):
    config["train"]["iterations_per_epoch"] = 0  # one pass over the 80 training images
    arms = [
        Arm("b16", "rsk"),
        Arm("b40", "rsk", {"data": {"batch_size": 40}}),
        Arm("b40_equal", "rsk", {"data": {"batch_size": 40}}, equal_steps="b16"),
    ]
    data = runner_module._DatasetCache(datasets)
    sweep = make_sweep(config, arms=arms)
    steps = {a.name: runner_module.planned_config(sweep, a, 0, data)["train"]["iterations_per_epoch"] for a in arms}
    # 80 // 16 = 5 and 80 // 40 = 2 steps per epoch; the equal-steps arm takes the batch-16 arm's 5.
    assert steps == {"b16": 0, "b40": 0, "b40_equal": 5}
    assert builders.iterations_of(sweep.arm_config(arms[1], 0), 80, 40) == 2
    budget = make_sweep(config, arms=arms, budget_images=320)
    planned = {a.name: runner_module.planned_config(budget, a, 0, data)["train"]["iterations_per_epoch"] for a in arms}
    # 320 images in 2 epochs: round(160 / 16) = 10 and round(160 / 40) = 4 steps per epoch.
    assert planned == {"b16": 10, "b40": 4, "b40_equal": 5}


def test_fine_tuning_arm_and_pretrained_floor_start_from_the_checkpoint(config, datasets, tmp_path):
    pretrain = tmp_path / "pretrain"
    run_experiment(config, pretrain, log=quiet, datasets=datasets)
    base = resolve_config(overrides=[f"model.init_checkpoint={json.dumps(str(pretrain))}"], base=config)
    sweep = make_sweep(base, arms=[Arm("rsk_ft", "rsk", {"train": {"epochs": 1}})], floors=["untrained", "pretrained"])
    results = benchmark.run_sweep(sweep, tmp_path / "bench", datasets=datasets, log=quiet, command="cmd")
    by_arm = {r["spec"]["arm"]: r for r in results}
    best = pretrain / "checkpoints" / "best.pt"
    assert by_arm["pretrained"]["init_checkpoint"]["path"] == str(best)
    assert by_arm["pretrained"]["init_checkpoint"]["recipe"] == json.loads(json.dumps(config))
    assert by_arm["rsk_ft"]["init_checkpoint"]["path"] == str(best)
    assert by_arm["untrained"]["init_checkpoint"] is None
    # The pretrained floor is the pretrained network's test score, the untrained one the seed's fresh network.
    pretrained_results = json.loads((pretrain / "results.json").read_text())  # Recall@k only: no MAP@R there
    for floor, which in (("pretrained", "trained"), ("untrained", "untrained")):
        recall = {k: v for k, v in by_arm[floor]["test"].items() if k.startswith("recall_at_")}
        assert recall == pytest.approx(pretrained_results[which])


# --------------------------------------------------------------------------------------------- resuming


def test_rerun_skips_finished_runs_and_continues_an_interrupted_one(config, datasets, tmp_path, monkeypatch):
    sweep = make_sweep(config, arms=[Arm("triplet", "triplet"), Arm("fastap", "fastap")], seeds=[0, 1])
    first = benchmark.run_sweep(sweep, tmp_path, datasets=datasets, log=quiet, command="cmd")
    assert [(r["spec"]["arm"], r["spec"]["seed"]) for r in first] == [
        (UNTRAINED, 0), (UNTRAINED, 1), ("triplet", 0), ("triplet", 1), ("fastap", 0), ("fastap", 1),
    ]  # fmt: skip

    # Interrupt fastap seed 1 after its first epoch: its folder holds last.pt of epoch 1 but no result.
    interrupted = tmp_path / "runs" / "fastap" / "seed_1"
    (interrupted / "result.json").unlink()
    (interrupted / "results.json").unlink()
    last = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    calls = []
    real_run_experiment = runner_module.run_experiment

    def counting(config, run_dir, **kwargs):
        calls.append((str(run_dir), kwargs["resume"]))
        return real_run_experiment(config, run_dir, **kwargs)

    monkeypatch.setattr(runner_module, "run_experiment", counting)
    second = benchmark.run_sweep(sweep, tmp_path, datasets=datasets, log=quiet, command="cmd")
    assert calls == [(str(interrupted), True)]
    assert last["epoch"] == 2  # (the run had finished; resuming it re-evaluates without training again)
    assert second[:5] == first[:5]
    assert second[5]["test"] == pytest.approx(first[5]["test"])


def test_finished_runs_made_with_other_settings_are_an_error(config, datasets, tmp_path):
    benchmark.run_sweep(make_sweep(config), tmp_path, datasets=datasets, log=quiet, command="cmd")
    changed = make_sweep(config, arms=[Arm("triplet", "triplet", {"train": {"lr": 0.5}})])
    with pytest.raises(ConfigError, match=r"other settings.*config\.train\.lr: 0\.001 != 0\.5"):
        benchmark.run_sweep(changed, tmp_path, datasets=datasets, log=quiet, command="cmd")


def test_cross_batch_memory_arm_records_its_settings(config, datasets, tmp_path, seen):
    arm = Arm("rsk_xbm", "rsk", {"memory": {"enabled": True, "size": 48}})
    result = run_one(make_sweep(config, arms=[arm]), "rsk_xbm", 0, datasets, tmp_path)
    loss = seen["loss_funcs"]["metric_loss"]
    assert type(loss).__name__ == "CrossBatchMemory" and loss.memory_size == 48
    assert type(loss.loss).__name__ == "RecallKSurrogateLoss"
    assert result["spec"]["config"]["memory"] == {"enabled": True, "size": 48}


def test_a_run_finished_before_a_config_key_was_added_is_still_finished(config, datasets, tmp_path):
    # A result.json written by an earlier release lacks the keys added since; at their defaults they change nothing.
    benchmark.run_sweep(make_sweep(config), tmp_path, datasets=datasets, log=quiet, command="cmd")
    for path in tmp_path.glob("runs/*/seed_*/result.json"):
        result = json.loads(path.read_text())
        del result["spec"]["config"]["train"]["warmup_epochs"]
        path.write_text(json.dumps(result))
    messages = []
    benchmark.run_sweep(make_sweep(config), tmp_path, datasets=datasets, log=messages.append, command="cmd")
    assert sum("finished before, skipped" in m for m in messages) == len(list(tmp_path.glob("runs/*/seed_*")))
    # A key at another value than its default is still another setting.
    changed = make_sweep(config, arms=[Arm("triplet", "triplet", {"train": {"warmup_epochs": 1}})])
    with pytest.raises(ConfigError, match=r"other settings.*config\.train\.warmup_epochs: 0 != 1"):
        benchmark.run_sweep(changed, tmp_path, datasets=datasets, log=quiet, command="cmd")


@pytest.mark.parametrize("damage", ["truncate", "empty", "foreign"])
def test_a_sweep_rerun_over_a_damaged_result_is_one_line_and_leaves_it(config, datasets, tmp_path, damage):
    """B22, B23, B25: a rerun used to end in a JSONDecodeError naming no file, or a line with a whole spec in it."""
    sweep = make_sweep(config, arms=[])
    benchmark.run_sweep(sweep, tmp_path, datasets=datasets, log=quiet, command="cmd")
    path = tmp_path / "runs" / UNTRAINED / "seed_0" / "result.json"
    text = {"truncate": path.read_text()[:300], "empty": "", "foreign": '{"format": 1}'}[damage]
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}") as error:
        benchmark.run_sweep(sweep, tmp_path, datasets=datasets, log=quiet, command="cmd")
    assert "\n" not in str(error.value) and "{" not in str(error.value)
    assert path.read_text() == text


def test_a_difference_in_settings_is_shown_short(config, datasets, tmp_path):
    benchmark.run_sweep(make_sweep(config), tmp_path, datasets=datasets, log=quiet, command="cmd")
    path = tmp_path / "runs" / "triplet" / "seed_0" / "result.json"
    result = json.loads(path.read_text())
    result["spec"]["data"] = {"train": "a table of another shape " * 10}
    path.write_text(json.dumps(result))
    with pytest.raises(ConfigError, match="other settings") as error:
        benchmark.run_sweep(make_sweep(config), tmp_path, datasets=datasets, log=quiet, command="cmd")
    assert len(str(error.value)) < 400, str(error.value)


def test_a_sweep_folder_in_use_by_another_process_is_refused(config, datasets, tmp_path, capsys):
    import subprocess
    import sys

    hold = "import sys, time\nfrom pml_recallk.experiments.checkpoints import output_dir_lock as lock\n"
    hold += "with lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another process \\(PID {holder.pid}\\)"):
            benchmark.run_sweep(make_sweep(config), tmp_path, datasets=datasets, log=quiet, command="cmd")
        assert not (tmp_path / "runs").exists()
        (tmp_path / "runs" / "rsk" / "seed_0").mkdir(parents=True)  # a finished run, so that a report is due
        result = {
            "format": benchmark.RESULT_FORMAT,
            "spec": {"arm": "triplet", "seed": 0, "loss": "triplet", "data": {}},
        }
        result |= {"test": {"recall_at_1": 0.5}, "best_epoch": 1, "train_seconds": 1.0, "seconds": 1.0}
        (tmp_path / "runs" / "rsk" / "seed_0" / "result.json").write_text(json.dumps(result))
        sweep_file = tmp_path / "sweep.toml"
        sweep_file.write_text("[arms.triplet]\nloss = 'triplet'\n")
        argv = ["--sweep", str(sweep_file), "--output-dir", str(tmp_path), "--report-only"]
        assert benchmark.main(argv) == 2
        assert f"in use by another process (PID {holder.pid})" in capsys.readouterr().err
        assert not (tmp_path / "results.md").exists()
    finally:
        holder.kill()
        holder.wait()

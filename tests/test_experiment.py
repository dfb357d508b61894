"""run_experiment / evaluate_checkpoint on tiny glyph runs (pml_recallk/experiments/train.py).

One tiny run (16-px glyphs, 10 classes, 3 epochs of 2 steps) is shared by the module; its numbers are checked
against a brute-force Recall@k written here, its best epoch against the validation records, and its files
against what the issue asks for.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning.trainers import base_trainer

from pml_recallk.experiments import builders, resolve_config
from pml_recallk.experiments.builders import build_datasets
from pml_recallk.experiments.checkpoints import CHECKPOINT_FORMAT, Parts, load_checkpoint
from pml_recallk.experiments.config import ConfigError
from pml_recallk.experiments.plots import recall_axis_limits
from pml_recallk.experiments.train import evaluate_checkpoint, run_experiment
from pml_recallk.losses.recall_k_surrogate_loss import contains_recall_k_surrogate

K_VALUES = [1, 2, 4, 8]


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_config(tiny_overrides):
    return resolve_config(overrides=[*tiny_overrides, "train.epochs=3"])


@pytest.fixture(scope="module")
def tiny_run(tiny_config, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    results = run_experiment(tiny_config, output, log=quiet)
    return output, results


def brute_force_recall(embeddings: np.ndarray, labels: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Recall@k by a plain loop: a query scores 1 at k if one of its k most similar other items shares its label.

    Queries whose label has no other item are left out (as PML does).
    """
    embeddings = embeddings.astype(np.float64)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    hits = {k: [] for k in ks}
    for i in range(len(labels)):
        if (labels == labels[i]).sum() < 2:
            continue
        similarity = embeddings @ embeddings[i]
        similarity[i] = -np.inf
        ranked_labels = labels[np.argsort(-similarity, kind="stable")]
        first_hit = int(np.flatnonzero(ranked_labels == labels[i])[0])
        for k in ks:
            hits[k].append(first_hit < k)
    return {f"recall_at_{k}": float(np.mean(hits[k])) for k in ks}


def test_results_json_has_the_promised_shape(tiny_run):
    output, results = tiny_run
    on_disk = json.loads((output / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for which in ("untrained", "trained"):
        assert set(on_disk[which]) == {f"recall_at_{k}" for k in K_VALUES}
        values = [on_disk[which][f"recall_at_{k}"] for k in K_VALUES]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values == sorted(values)  # Recall@k cannot fall as k grows
    assert on_disk["test_splits"] == ["test"]
    assert on_disk["epochs_run"] == 3 and 1 <= on_disk["best_epoch"] <= 3
    assert on_disk["seconds"] > 0 and on_disk["config"]["train"]["epochs"] == 3
    assert 0 < on_disk["train_seconds"] < on_disk["seconds"]


def test_results_hold_the_validation_and_loss_curves(tiny_run):
    output, results = tiny_run
    records = _validation_records(output)
    assert [row["epoch"] for row in results["val_curve"]] == [0, 1, 2, 3]
    assert [row["recall_at_1"] for row in results["val_curve"][1:]] == pytest.approx([records[e] for e in (1, 2, 3)])
    # One loss per iteration: 3 epochs × 2 steps, as PML's record-keeper logged them.
    assert [iteration for iteration, _ in results["loss_curve"]] == list(range(6))
    with open(output / "logs" / "loss_histories.csv") as f:
        logged = [float(row["total_loss"]) for row in csv.DictReader(f)]
    assert [loss for _, loss in results["loss_curve"]] == pytest.approx(logged)


def test_outputs_logs_plots_and_checkpoints_exist(tiny_run):
    output, _ = tiny_run
    for png in ("loss_curve.png", "recall_curves.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output / "logs" / "logs.db").is_file()
    assert (output / "logs" / "loss_histories.csv").is_file()
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))
    assert (output / "config.toml").is_file()
    last = load_checkpoint(output / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["format"] == CHECKPOINT_FORMAT
    assert {"model", "optimizers", "lr_scheduler", "loss", "rng", "history", "config"} <= set(last)
    assert not list((output / "checkpoints").glob(".*.tmp"))


def _validation_records(output):
    """Per-epoch validation Recall@1 as record-keeper wrote it (the CSV of HookContainer's end_of_testing_hook)."""
    (path,) = (output / "logs").glob("accuracies_*_VAL_vs_self.csv")
    with open(path) as f:
        return {int(row["epoch"]): float(row["recall_at_1_level0"]) for row in csv.DictReader(f)}


def test_best_epoch_is_the_first_best_validation_epoch(tiny_run):
    output, results = tiny_run
    records = _validation_records(output)
    assert sorted(records) == [1, 2, 3]
    best = max(records.values())
    assert results["best_epoch"] == min(e for e, r in records.items() if r == best)
    assert results["best_val"]["recall_at_1"] == pytest.approx(best)
    assert load_checkpoint(output)["epoch"] == results["best_epoch"]  # the run folder means best.pt


def test_select_by_map_at_r_picks_the_first_epoch_with_the_best_validation_map_at_r(tiny_overrides, tmp_path):
    # Seed 0 of this tiny run has its best validation Recall@1 and its best MAP@R at different epochs (1 and 5 when
    # written), so a selection that ignored eval.select_by would pick another epoch.
    config = resolve_config(
        overrides=[
            *tiny_overrides, "train.epochs=5", "eval.map_at_r=true", 'eval.select_by="mean_average_precision_at_r"',
        ]
    )  # fmt: skip
    results = run_experiment(config, tmp_path, log=quiet)
    (path,) = (tmp_path / "logs").glob("accuracies_*_VAL_vs_self.csv")
    with open(path) as f:
        rows = {int(row["epoch"]): row for row in csv.DictReader(f)}
    map_at_r = {epoch: float(row["mean_average_precision_at_r_level0"]) for epoch, row in rows.items()}
    recall = {epoch: float(row["recall_at_1_level0"]) for epoch, row in rows.items()}

    def first_best(curve):
        return min(epoch for epoch, value in curve.items() if value == max(curve.values()))

    if first_best(map_at_r) == first_best(recall):
        pytest.skip("on this platform the run's best epoch is the same by both metrics: nothing to tell apart")
    assert results["best_epoch"] == first_best(map_at_r)
    assert results["best_val"]["mean_average_precision_at_r"] == pytest.approx(max(map_at_r.values()))
    assert load_checkpoint(tmp_path)["epoch"] == first_best(map_at_r)


def test_select_by_map_at_r_without_map_at_r_is_refused():
    with pytest.raises(ConfigError, match="eval.select_by = mean_average_precision_at_r needs .* eval.map_at_r = true"):
        resolve_config(overrides=['eval.select_by="mean_average_precision_at_r"'])
    with pytest.raises(ConfigError, match="eval.select_by must be one of recall_at_1, mean_average_precision_at_r"):
        resolve_config(overrides=['eval.select_by="recall_at_5"'])


def test_reported_recall_matches_a_brute_force_evaluation_of_the_best_model(tiny_run, tiny_config):
    from pml_recallk import datasets
    from pml_recallk.models import SmallConvNet, transforms

    output, results = tiny_run
    model = SmallConvNet(embedding_size=16, in_channels=1, width=4)
    model.load_state_dict(load_checkpoint(output / "checkpoints" / "best.pt")["model"])
    model.eval()
    test = datasets.Glyphs(split="test", image_size=16, cache_dir=tiny_config["data"]["glyphs_cache_dir"])
    keep = np.flatnonzero(np.isin(test.labels, np.unique(test.labels)[:10]))
    transform = transforms.test_transform(16, channels=1)
    with torch.no_grad():
        embeddings = model(torch.stack([transform(test[i][0]) for i in keep])).numpy()
    expected = brute_force_recall(embeddings, np.asarray(test.labels)[keep], K_VALUES)
    assert results["trained"] == pytest.approx(expected, abs=1e-6)


def test_evaluate_checkpoint_reproduces_the_reported_numbers(tiny_run):
    output, results = tiny_run
    evaluated = evaluate_checkpoint(output / "checkpoints" / "best.pt", log=quiet)
    assert evaluated["test"] == pytest.approx(results["trained"], abs=1e-6)
    on_val = evaluate_checkpoint(output, splits=["val"], log=quiet)
    assert on_val["val"] == pytest.approx(results["best_val"], abs=1e-6)


def test_a_finished_run_is_not_overwritten(tiny_run, tiny_config):
    output, _ = tiny_run
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run_experiment(tiny_config, output, log=quiet)


def test_resuming_with_another_recipe_is_refused(tiny_run, tiny_config):
    output, _ = tiny_run
    changed = resolve_config(overrides=["train.lr=0.5"], base=tiny_config)
    with pytest.raises(ConfigError, match=r"different config: train\.lr: 0\.001 != 0\.5"):
        run_experiment(changed, output, resume=True, log=quiet)


def test_train_and_val_are_class_disjoint_parts_of_the_train_split(tiny_config):
    parts = build_datasets(tiny_config)
    assert list(parts) == ["train", "val", "test"]
    train_classes = set(parts["train"].dataset.class_ids.tolist())
    val_classes = set(parts["val"].dataset.class_ids.tolist())
    assert not train_classes & val_classes
    assert len(train_classes | val_classes) == 10 and len(val_classes) == 2  # 20% of the 10 classes
    image, label = parts["train"][0]
    assert image.shape == (1, 16, 16) and isinstance(label, int)
    assert len(np.unique(parts["test"].labels)) == 10


def test_unknown_split_is_a_clear_error_listing_val(tiny_config):
    with pytest.raises(ConfigError, match="glyphs has no split 'validation'; its splits are train, val, test$"):
        build_datasets(tiny_config, ["validation"])


def test_a_batch_larger_than_the_classes_allow_is_a_clear_error(tiny_config, tmp_path):
    config = resolve_config(overrides=["data.batch_size=40"], base=tiny_config)
    with pytest.raises(ConfigError, match="asks for 10 classes per batch but the training part has 8 classes"):
        run_experiment(config, tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()  # a run that cannot start leaves no folder behind


def test_a_missing_benchmark_root_is_a_clear_error(tmp_path):
    config = resolve_config("cub", overrides=[f"data.root={json.dumps(str(tmp_path / 'nowhere'))}"])
    with pytest.raises(ConfigError, match="CUB200: expected .*nowhere"):
        build_datasets(config)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_load_checkpoint_rejects_foreign_or_missing_files(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="cannot read checkpoint|does not exist") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    torch.save({"model": {}}, path)
    with pytest.raises(ConfigError, match="is not a pml-recallk checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", ["README", b"", "text"], ids=["readme", "empty", "text"])
def test_load_checkpoint_refuses_other_files_in_one_line(tmp_path, content):
    path = tmp_path / "x.pt"
    if content == "README":
        path.write_text((Path(__file__).resolve().parents[1] / "README.md").read_text())
    elif content == "text":
        path.write_text("e\n" * 100)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="is empty|cannot read checkpoint") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_a_run_trained_channels_last_resumes_and_evaluates_in_the_default_layout(tiny_config, tmp_path):
    # train.channels_last says how fast a run goes, not what it computes (a runtime key, like the device)
    first = resolve_config(overrides=["train.epochs=1", "train.channels_last=true"], base=tiny_config)
    run_experiment(first, tmp_path, log=quiet)
    resumed = resolve_config(overrides=["train.epochs=2", "train.channels_last=false"], base=tiny_config)
    results = run_experiment(resumed, tmp_path, resume=True, log=quiet)
    assert results["epochs_run"] == 2 and results["config"]["train"]["channels_last"] is False
    assert evaluate_checkpoint(tmp_path, log=quiet)["test"] == pytest.approx(results["trained"], abs=1e-6)


def test_resuming_with_fewer_epochs_than_run_is_refused_before_anything_is_written(tiny_run, tiny_config):
    output, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    shorter = resolve_config(overrides=["train.epochs=2"], base=tiny_config)
    with pytest.raises(ConfigError, match="has already trained 3 epochs; resume with --epochs 3 or more"):
        run_experiment(shorter, output, resume=True, log=quiet)
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()} == before


def test_an_output_folder_that_is_a_file_is_refused(tiny_config, tmp_path):
    (tmp_path / "file").write_text("x")
    for output in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(ConfigError, match="is a file"):
            run_experiment(tiny_config, output, log=quiet)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_that_cannot_be_written_is_refused(tiny_config, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="cannot be written"):
        run_experiment(tiny_config, locked / "run", log=quiet)
    assert not (locked / "run").exists()


def test_fine_tuning_starts_from_the_checkpoint_and_records_its_recipe(tiny_run, tiny_config, tmp_path):
    source, source_results = tiny_run
    for init in (source / "checkpoints" / "best.pt", tmp_path / "plain.pt"):
        if init.name == "plain.pt":  # a plain state_dict file works too
            torch.save(load_checkpoint(source)["model"], init)
        config = resolve_config(overrides=["train.epochs=1", f"model.init_checkpoint={json.dumps(str(init))}"],
                                base=tiny_config)  # fmt: skip
        results = run_experiment(config, tmp_path / init.stem, log=quiet)
        # Before fine-tuning, the network is the checkpoint's: its test numbers are the source run's.
        assert results["untrained"] == pytest.approx(source_results["trained"], abs=1e-6)
        assert results["init_checkpoint"]["path"] == str(init)
        expected_recipe = json.loads(json.dumps(tiny_config)) if init.name == "best.pt" else None
        assert results["init_checkpoint"]["recipe"] == expected_recipe


def test_an_init_checkpoint_that_is_missing_or_does_not_fit_is_a_clear_error(tiny_run, tiny_config, tmp_path):
    source, _ = tiny_run
    cases = [(tmp_path / "nowhere.pt", [], "does not exist"), (source, ["model.width=8"], "does not fit the config")]
    for path, extra, message in cases:
        config = resolve_config(overrides=[*extra, f"model.init_checkpoint={json.dumps(str(path))}"], base=tiny_config)
        with pytest.raises(ConfigError, match=message):
            run_experiment(config, tmp_path / "run", log=quiet)
        assert not (tmp_path / "run").exists()


def test_pml_prints_no_missing_embedder_warning(tiny_config, caplog):
    train = build_datasets(tiny_config, ["train"])["train"]
    model = builders.build_model(tiny_config)
    loss, miner = builders.build_loss(tiny_config, num_classes=8)
    optimizers = builders.build_optimizers(tiny_config, model, loss)
    parts = Parts(model=model, loss=loss, miner=miner, optimizers=optimizers, scheduler=None)
    with caplog.at_level(logging.INFO, logger="PML"):
        trainer = builders.build_trainer(tiny_config, parts, train, torch.device("cpu"), 16, 2, print, print)
    assert not [r for r in caplog.records if "missing" in r.getMessage()], caplog.text
    # The command, which knows the loss, passes the trainer RS@k's collapse monitor (the trainer imports no loss).
    assert (trainer.loss_monitor is not None) == contains_recall_k_surrogate(loss)


def test_each_epoch_is_logged_and_pml_keeps_its_own_progress_bar(tiny_config, tmp_path):
    import tqdm

    log: list[str] = []
    run_experiment(tiny_config, tmp_path, log=log.append)
    epochs = [line for line in log if ": training, " in line]
    assert epochs == [f"epoch {e}/3: training, 2 iterations" for e in (1, 2, 3)], log
    assert base_trainer.tqdm is tqdm  # PML's module is not swapped


@pytest.mark.parametrize("values", [[0.9, 0.95, 0.97], [0.2, 0.99], [1.0, 1.0]])
def test_recall_curves_axis_is_zoomed_to_the_data(values):
    low, high = recall_axis_limits(values)
    assert low < min(values) and high > max(values) - 1e-9 and high <= 1.02
    # Zoomed: the data fill most of the axis (not a fixed 0-1 range squashing them).
    assert (max(values) - min(values)) >= 0.5 * (high - low) or high - low <= 0.1


def test_a_collapse_of_validation_recall_is_logged_and_recorded(tiny_config, tmp_path, monkeypatch):
    from pml_recallk.experiments import train

    seen = []

    def collapsed_after_epoch_1(curve, floor):
        seen.append((list(curve), floor))
        return "validation recall fell to 0.01" if len(curve) >= 2 else None

    monkeypatch.setattr(train, "validation_collapse", collapsed_after_epoch_1)
    messages = []
    config = resolve_config(overrides=["train.epochs=2"], base=tiny_config)
    results = run_experiment(config, tmp_path / "run", log=messages.append)
    untrained_r1 = results["val_curve"][0]["recall_at_1"]
    assert seen == [([r["recall_at_1"] for r in results["val_curve"][1 : 1 + n]], untrained_r1) for n in (1, 2)]
    assert results["warnings"] == ["epoch 2: training collapse: validation recall fell to 0.01"]
    assert any(m.startswith("warning: epoch 2: training collapse") for m in messages)

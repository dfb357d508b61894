"""run_experiment / evaluate_checkpoint on tiny glyph runs (pml_recallk/experiment.py).

One tiny run (16-px glyphs, 10 classes, 3 epochs of 2 steps) is shared by the module; its numbers are checked
against a brute-force Recall@k written here, its best epoch against the validation records, and its files
against what the issue asks for.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pml_recallk.config import ConfigError, resolve_config
from pml_recallk.experiment import (
    CHECKPOINT_FORMAT,
    build_datasets,
    evaluate_checkpoint,
    load_checkpoint,
    run_experiment,
    save_atomic,
)

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
K_VALUES = [1, 2, 4, 8]


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def glyph_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("glyph-cache")


@pytest.fixture(scope="module")
def tiny_config(glyph_cache):
    return resolve_config(overrides=[*TINY, f"data.glyphs_cache_dir={json.dumps(str(glyph_cache))}"])


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
    assert {"model", "optimizer", "lr_scheduler", "loss", "rng", "history", "config"} <= set(last)
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


def test_unknown_split_is_a_clear_error(tiny_config):
    with pytest.raises(ConfigError, match="glyphs has no split 'validation'; its splits are train, test"):
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


def test_save_atomic_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_atomic({"a": torch.arange(3)}, path)

    def crash(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"a": torch.arange(5)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["a"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_load_checkpoint_rejects_foreign_or_missing_files(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="cannot read checkpoint|does not exist"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(ConfigError, match="is not a pml-recallk checkpoint"):
        load_checkpoint(path)

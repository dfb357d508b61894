"""``pml-recallk`` on a user's own images, end to end: train, resume and evaluate on an image folder and on a CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from own_data import make_tree, write_csv
from PIL import Image

from pml_recallk.cli import main
from pml_recallk.experiments import builders, load_checkpoint, resolve_config

# 16-px images, 6 classes of 5, the small CNN, 2 epochs of 2 iterations: a few seconds a run.
QUICK = [
    "--epochs", "2", "--device", "cpu",
    "--set", "data.image_size=16", "--set", "train.iterations_per_epoch=2", "--set", "model.width=4",
    "--set", "model.embedding_size=8", "--set", "data.batch_size=8", "--set", "data.samples_per_class=4",
]  # fmt: skip


@pytest.fixture(autouse=True)
def quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_RECALLK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")


def _train(capsys, dataset: str, root: Path, run: Path, *extra: str) -> dict:
    argv = ["train", "--dataset", dataset, "--data-root", str(root), "--output-dir", str(run), *QUICK, *extra]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 0, err
    return json.loads((run / "results.json").read_text())


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / name)["model"]


def test_image_folder_and_the_same_data_as_csv_train_bitwise_the_same_weights(tmp_path, capsys):
    rows = make_tree(tmp_path / "d", classes=8, val=True)
    listing = write_csv(tmp_path / "d" / "listing.csv", rows)
    folder = _train(capsys, "image_folder", tmp_path / "d", tmp_path / "run_folder")
    table = _train(capsys, "csv", listing, tmp_path / "run_csv")
    a, b = _weights(tmp_path / "run_folder"), _weights(tmp_path / "run_csv")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert folder["trained"] == table["trained"] and folder["val_curve"] == table["val_curve"]
    saved = load_checkpoint(tmp_path / "run_csv" / "checkpoints" / "last.pt")["config"]
    assert (saved["data"]["dataset"], saved["data"]["root"], saved["data"]["channels"]) == ("csv", str(listing), 3)
    # The data's own val/ is the validation split: 1 class of 5 images, not a part of train.
    assert folder["val_curve"][0]["recall_at_1"] in {i / 5 for i in range(6)}


@pytest.mark.parametrize("fmt", ["image_folder", "csv"])
def test_grayscale_flat_folder_trains_a_one_channel_model_and_evaluates_its_own_data(tmp_path, capsys, fmt):
    rows = make_tree(tmp_path / "d", classes=10, mode="L", layout="flat")
    root = tmp_path / "d"
    if fmt == "csv":
        # The flat folder's seeded rule, written as a CSV: the same classes on each side.
        test = set(np.array(sorted({r[1] for r in rows}))[np.random.default_rng(0).permutation(10)[:5]])
        root = write_csv(tmp_path / "d" / "l.csv", [(p, c, "test" if c in test else "train") for p, c, _ in rows])
    results = _train(capsys, fmt, root, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert state["config"]["data"]["channels"] == 1
    assert state["model"]["features.0.weight"].shape[1] == 1  # the small CNN's first convolution: one channel in
    # evaluate without --dataset scores the data set the run was trained on, with the saved root.
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["test"] == results["trained"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--dataset", "glyphs"]) == 2
    assert f"was trained on {fmt}, not glyphs" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["image_folder", "csv"])
def test_resume_goes_on_to_the_weights_of_an_uninterrupted_run(tmp_path, capsys, fmt):
    rows = make_tree(tmp_path / "d", classes=8)
    root = tmp_path / "d" if fmt == "image_folder" else write_csv(tmp_path / "d" / "l.csv", rows)
    _train(capsys, fmt, root, tmp_path / "whole")
    _train(capsys, fmt, root, tmp_path / "halves", "--epochs", "1")
    assert main(["train", "--resume", "--output-dir", str(tmp_path / "halves"), "--epochs", "2"]) == 0
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "halves")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _embeddings(run: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    config = state["config"]
    model = builders.build_model(config)
    model.load_state_dict(state["model"])
    model.eval()
    data = builders.build_datasets(config, [split])[split]
    with torch.no_grad():
        embeddings = model(torch.stack([data[i][0] for i in range(len(data))])).double().numpy()
    return embeddings, np.asarray(data.labels)


def _recall_at_k(sim: np.ndarray, hits: np.ndarray, k: int) -> float:
    """Queries in rows, gallery in columns (self-matches already -inf): the share of queries with a hit in the top k,
    queries without any match left out."""
    found, counted = 0, 0
    for row, hit in zip(sim, hits):
        if not hit[np.isfinite(row)].any():
            continue
        counted += 1
        top = np.argsort(-row, kind="stable")[:k]
        found += bool(hit[top].any())
    return found / counted


def test_csv_query_gallery_evaluation_is_recall_of_queries_against_the_gallery(tmp_path, capsys):
    rows = make_tree(tmp_path / "d", classes=8, per_class=6)
    # In each test class: images 0-1 queries only, 2-3 queries and gallery, 4-5 gallery only.
    index = [int(r[0][-5]) for r in rows]
    is_query = [str(r[2] == "test" and i < 4).lower() for r, i in zip(rows, index)]
    is_gallery = [str(r[2] != "test" or i >= 2).lower() for r, i in zip(rows, index)]
    listing = write_csv(tmp_path / "l.csv", rows, "d/", {"is_query": is_query, "is_gallery": is_gallery})
    results = _train(capsys, "csv", listing, tmp_path / "run", "--set", "eval.map_at_r=false")
    embeddings, labels = _embeddings(tmp_path / "run", "test")
    test_rows = [i for i, r in enumerate(rows) if r[2] == "test"]
    query = np.array([is_query[i] == "true" for i in test_rows])
    gallery = np.array([is_gallery[i] == "true" for i in test_rows])
    normed = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sim = normed[query] @ normed[gallery].T
    q_index, g_index = np.flatnonzero(query), np.flatnonzero(gallery)
    sim[q_index[:, None] == g_index[None, :]] = -np.inf  # an item never finds itself
    hits = labels[query][:, None] == labels[gallery][None, :]
    for k in (1, 2, 4, 8):
        assert results["trained"][f"recall_at_{k}"] == pytest.approx(_recall_at_k(sim, hits, k), abs=1e-9), k


def test_test_splits_may_name_val_and_get_it_at_the_end(tmp_path, capsys):
    make_tree(tmp_path / "d", classes=8)
    results = _train(capsys, "image_folder", tmp_path / "d", tmp_path / "run", "--set", 'data.test_splits=["val"]')
    assert results["test_splits"] == ["val"] and "recall_at_1" in results["trained"]


def _refused(capsys, argv: list[str], message: str, run: Path | None = None) -> None:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("pml-recallk: error:")]
    assert errors == lines[-1:] and message in errors[0], lines  # one error line, the last, no traceback
    if run is not None:
        assert not run.exists()  # refused before the run folder is made


def test_bad_images_are_refused_before_the_run_folder_naming_the_file(tmp_path, capsys):
    rows = make_tree(tmp_path / "d", classes=6)
    bad = tmp_path / "d" / "train" / "class_01" / "img_3.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    run = tmp_path / "run"
    for dataset, root in (("image_folder", tmp_path / "d"), ("csv", write_csv(tmp_path / "d" / "l.csv", rows))):
        argv = ["train", "--dataset", dataset, "--data-root", str(root), "--output-dir", str(run), *QUICK]
        _refused(capsys, argv, f"image {bad}", run)


def test_paper_loader_images_are_decoded_before_the_run_folder(tmp_path, capsys):
    root = tmp_path / "cub"
    lines, labels = [], []
    for class_id in (1, 2, 3, 101, 102, 103):
        folder = root / "images" / f"{class_id:03d}.Bird"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (class_id, i, 0)).save(folder / f"img_{i}.jpg")
            lines.append(f"{len(lines) + 1} {folder.name}/img_{i}.jpg")
            labels.append(f"{len(labels) + 1} {class_id}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    bad = root / "images" / "101.Bird" / "img_1.jpg"
    bad.write_bytes(b"")
    argv = ["train", "--dataset", "cub", "--data-root", str(root), "--output-dir", str(tmp_path / "run"),
            "--set", "model.name=small_cnn", "--set", "data.image_size=16", "--set", "data.batch_size=8"]  # fmt: skip
    _refused(capsys, argv, f"image {bad} is empty (0 bytes)", tmp_path / "run")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "data.train_split=test"], "data.train_split is 'test', a split that is evaluated"),  # K41
        (["--set", 'data.test_splits=["test", "train"]'], "names the training part 'train'"),
        (["--set", "memory.enabled=true", "--set", "memory.size=4"], "memory.size (4) is smaller than"),  # K46
        (["--set", "model.name=vit_b16"], "model.name vit_b16 takes 224-pixel images but data.image_size is 16"),  # K49
        (["--set", "mixup.enabled=true", "--set", "loss.name=contrastive"], "mixup.enabled=true: SimilarityMixup"),
        (["--set", 'data.test_splits=["nope"]'], "image_folder has no split 'nope'; its splits are train, val, test"),
    ],
)
def test_config_mistakes_are_refused_before_the_run_folder(tmp_path, capsys, extra, message):
    make_tree(tmp_path / "d", classes=8)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "image_folder", "--data-root", str(tmp_path / "d"), "--output-dir", str(run)]
    _refused(capsys, [*argv, *QUICK, *extra], message, run)


def test_memory_smaller_than_a_batch_of_every_class_is_refused_before_the_run_folder(tmp_path, capsys):
    make_tree(tmp_path / "d", classes=8)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "image_folder", "--data-root", str(tmp_path / "d"), "--output-dir", str(run),
            *QUICK, "--set", "data.batch_size=0", "--set", "memory.enabled=true", "--set", "memory.size=6"]  # fmt: skip
    _refused(capsys, argv, "memory.size (6) is smaller than the batch (12 images: data.batch_size 0)", run)


def test_a_data_root_for_a_data_set_that_reads_none_is_refused(tmp_path, capsys):
    _refused(capsys, ["train", "--data-root", str(tmp_path)], "but the glyphs dataset reads no data root")


def test_config_files_that_are_a_folder_or_not_utf8_are_one_line(tmp_path, capsys):
    _refused(capsys, ["train", "--config", str(tmp_path)], f"config file {str(tmp_path)!r} is a folder")  # K06
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"\xff\xfe[train]\nepochs = 2\n")
    _refused(capsys, ["train", "--config", str(bad)], "is not UTF-8 text (byte 0xff at offset 0)")  # K07


def test_stop_on_nan_is_a_config_key_that_reaches_the_trainer():  # K48
    config = resolve_config(overrides=["train.stop_on_nan=false"])
    model = builders.build_model(config)
    loss, miner = builders.build_loss(config, 4)
    parts = {"model": model, "loss": loss, "miner": miner, "scheduler": None,
             "optimizers": builders.build_optimizers(config, model, loss)}  # fmt: skip
    data = torch.utils.data.TensorDataset(torch.zeros(8, 1, 32, 32), torch.arange(8) % 2)
    data.labels = np.arange(8) % 2
    trainer = builders.build_trainer(config, parts, data, torch.device("cpu"), 8, 1, lambda t: None, lambda t: True)
    assert trainer.stop_on_nan is False


def test_config_prints_the_new_shape_for_a_csv(tmp_path, capsys):
    listing = write_csv(tmp_path / "d" / "l.csv", make_tree(tmp_path / "d"))
    sets = ["loss.name=ArcFaceLoss", "loss.margin=20.0", "miner.name=MultiSimilarityMiner", "miner.epsilon=0.2"]
    argv = ["config", "--dataset", "csv", "--data-root", str(listing), *(a for s in sets for a in ("--set", s))]
    assert main(argv) == 0
    import tomllib

    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["data"]["dataset"] == "csv" and printed["data"]["root"] == str(listing)
    assert printed["loss"] == {"name": "ArcFaceLoss", "margin": 20.0, "scale": 64, "weight_reg_weight": 1,
                               "embedding_reg_weight": 1}  # fmt: skip
    assert printed["miner"] == {"name": "MultiSimilarityMiner", "epsilon": 0.2}
    assert printed["eval"]["k_values"] == [1, 2, 4, 8]

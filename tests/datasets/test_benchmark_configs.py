"""The paper's recipes (pml_recallk/experiments/recipes/, package data) say what docs/method.md §6 and the released
code say.

The expected values below are written from docs/method.md §5-6 and the notes on the released code (learning rates,
epochs, milestones, batch and chunk sizes per dataset and backbone), not read from the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pml_recallk import datasets
from pml_recallk.experiments import resolve_config
from pml_recallk.models import MODEL_NAMES

CONFIG_DIR = Path(__file__).resolve().parents[2] / "pml_recallk" / "experiments" / "recipes"
LOADERS = {
    "cub": datasets.CUB200,
    "cars196": datasets.Cars196,
    "sop": datasets.StanfordOnlineProducts,
    "inaturalist": datasets.INaturalist2018,
    "vehicleid": datasets.VehicleID,
}
# The keys every recipe sets, with their types (bool is checked apart from int, its subclass).
REQUIRED = {
    "data": {
        "dataset": str,
        "train_split": str,
        "test_splits": list,
        "image_size": int,
        "crop_scale": list,
        "flip": bool,
        "batch_size": int,
        "samples_per_class": int,
        "num_workers": int,
    },
    "model": {"name": str, "embedding_size": int},
    "train": {
        "optimizer": str,
        "lr": float,
        "weight_decay": float,
        "epochs": int,
        "iterations_per_epoch": int,
        "lr_milestones": list,
        "lr_gamma": float,
        "chunk_size": int,
        "freeze_batchnorm": bool,
        "mixed_precision": str,
        "seed": int,
    },
    "loss": {
        "k_values": list,
        "rank_temperature": float,
        "k_temperature": float,
        "k_margin": float,
        "count_query_in_rank": bool,
    },
    "mixup": {"enabled": bool, "mode": str, "alpha_range": list},
    "eval": {"every_n_epochs": int, "batch_size": int},
}
# Recall@k comes from the data set's class (recall_k_values), not from the recipe.
# (optimizer, lr, epochs, LR milestones, chunk size) per dataset and backbone (docs/method.md §6, released code).
PAPER = {
    ("cub", "resnet50"): ("adam", 1e-4, 40, [10, 20, 30], 100),
    ("cub", "vit_b32"): ("adamw", 3e-5, 40, [10, 20, 30], 100),
    ("cub", "vit_b16"): ("adamw", 1e-5, 40, [10, 20, 30], 100),
    ("cars196", "resnet50"): ("adam", 1e-4, 170, [80, 140], 98),
    ("cars196", "vit_b32"): ("adamw", 3e-5, 50, [20, 30, 40], 98),
    ("cars196", "vit_b16"): ("adamw", 1e-5, 50, [20, 30, 40], 98),
    ("sop", "resnet50"): ("adam", 2e-4, 55, [25, 50], 200),
    ("sop", "vit_b32"): ("adamw", 5e-5, 55, [25, 50], 200),
    ("sop", "vit_b16"): ("adamw", 5e-5, 55, [25, 50], 100),
    ("inaturalist", "resnet50"): ("adam", 1e-4, 90, [40, 70], 200),
    ("inaturalist", "vit_b32"): ("adamw", 5e-5, 90, [10, 40, 70], 200),
    ("inaturalist", "vit_b16"): ("adamw", 5e-5, 90, [10, 40, 70], 100),
    ("vehicleid", "resnet50"): ("adam", 1e-4, 90, [40, 70], 200),
    ("vehicleid", "vit_b32"): ("adamw", 1e-4, 90, [40, 70], 200),
    ("vehicleid", "vit_b16"): ("adamw", 5e-5, 90, [40, 70], 100),
}
BATCH_SIZE = {"cub": 400, "cars196": 392, "sop": 4000, "inaturalist": 4000, "vehicleid": 4000}
EVAL_K = {"cub": [1, 2, 4, 8], "cars196": [1, 2, 4, 8], "sop": [1, 10, 100, 1000], "inaturalist": [1, 4, 16, 32]}
EVAL_K["vehicleid"] = [1, 5]


def load(name: str) -> dict:
    with open(CONFIG_DIR / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


def resolved(config: dict, model: str) -> dict:
    """The top-level tables with [variants.<model>] laid over them, table by table."""
    merged = {table: dict(values) for table, values in config.items() if table != "variants"}
    for table, values in config.get("variants", {}).get(model, {}).items():
        merged[table].update(values)
    return merged


def test_every_benchmark_has_a_recipe():
    assert {p.stem for p in CONFIG_DIR.glob("*.toml")} >= set(LOADERS)


@pytest.mark.parametrize("dataset, model", sorted(PAPER), ids=[f"{d}-{m}" for d, m in sorted(PAPER)])
def test_recipe_is_the_papers(dataset, model):
    config = load(dataset)
    assert set(config["variants"]) == {"vit_b16", "vit_b32"}
    for variant in config["variants"].values():
        for table, values in variant.items():
            assert set(values) <= set(REQUIRED[table]), (table, values)
    recipe = resolved(config, model)

    for table, keys in REQUIRED.items():
        assert set(recipe[table]) == set(keys), f"[{table}] keys"
        for key, kind in keys.items():
            value = recipe[table][key]
            assert isinstance(value, kind) and (kind is bool or not isinstance(value, bool)), (table, key, value)

    data, train = recipe["data"], recipe["train"]
    assert data["dataset"] == dataset
    splits = LOADERS[dataset].splits
    assert data["train_split"] == "train" and set(data["test_splits"]) == set(splits) - {"train"}
    assert (data["image_size"], data["crop_scale"], data["flip"]) == (224, [0.08, 1.0], True)
    assert (data["batch_size"], data["samples_per_class"]) == (BATCH_SIZE[dataset], 4)
    assert recipe["model"] == {"name": model, "embedding_size": 512} and model in MODEL_NAMES
    optimizer, lr, epochs, milestones, chunk_size = PAPER[(dataset, model)]
    assert (train["optimizer"], train["epochs"], train["lr_milestones"], train["chunk_size"]) == (
        optimizer,
        epochs,
        milestones,
        chunk_size,
    )
    assert train["lr"] == pytest.approx(lr, rel=1e-12)
    assert (train["weight_decay"], train["lr_gamma"], train["freeze_batchnorm"]) == (4e-4, 0.3, True)
    assert data["batch_size"] % chunk_size == 0
    assert recipe["loss"] == {
        "k_values": [1, 2, 4, 8, 16],
        "rank_temperature": 0.01,
        "k_temperature": 1.0,
        "k_margin": 0.0,
        "count_query_in_rank": False,
    }
    # SiMix as the released code does it (queries_and_database is the library's name of the "official" mode).
    assert recipe["mixup"] == {"enabled": True, "mode": "queries_and_database", "alpha_range": [0.0, 1.0]}
    assert (recipe["train"]["mixed_precision"], "k_values" in recipe["eval"]) == ("off", False)
    resolved_config = resolve_config(dataset, overrides=["data.root=/x", f"model.name={model}"])
    assert resolved_config["eval"]["k_values"] == EVAL_K[dataset]

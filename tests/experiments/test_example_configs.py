"""The shipped Han configs (examples/configs/) are the runs and sweeps whose results are committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pml_recallk import benchmark
from pml_recallk.experiments import resolve_config
from pml_recallk.experiments.config import load_toml, upgrade_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "configs"
PRETRAIN, FINETUNE = EXAMPLES / "han_glyphs_pretrain.toml", EXAMPLES / "han_glyphs_finetune.toml"


def _differences(config: dict, saved: dict) -> list[str]:
    """The keys of ``saved`` whose value ``config`` does not have (keys added to the schema later are ignored)."""
    return [
        f"{table}.{key}: {config[table].get(key)!r} != {value!r}"
        for table, values in saved.items()
        for key, value in values.items()
        if config[table].get(key) != value
    ]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_resolves(path):
    assert resolve_config(config_file=path)["data"]["dataset"] == "han_glyphs"


def test_the_pretrain_config_is_the_committed_pretraining_run():
    # Saved by an earlier release: read through the one upgrade step, as a checkpoint's config is.
    saved = upgrade_config(load_toml(ROOT / "benchmarks" / "results" / "han_pretrain" / "config.toml"))
    assert _differences(resolve_config(config_file=PRETRAIN), saved) == []


def test_the_finetune_config_starts_from_the_pretrain_configs_output_and_network():
    pretrain, finetune = resolve_config(config_file=PRETRAIN), resolve_config(config_file=FINETUNE)
    folder = finetune["model"]["init_checkpoint"]
    assert f"--output-dir {folder}" in PRETRAIN.read_text()
    assert {**finetune["model"], "init_checkpoint": ""} == pretrain["model"]
    assert finetune["data"]["train_split"] == "train" and pretrain["data"]["train_split"] == "pretrain"


def test_the_scratch_recipe_sweep_runs_the_han_glyphs_recipe_as_it_is():
    sweep, _ = benchmark.load_sweep(ROOT / "benchmarks" / "configs" / "sweep_han_glyphs_scratch_recipe.toml")
    recipe = resolve_config("han_glyphs", overrides=["eval.map_at_r=true", "train.seed=1"])
    assert sweep.arm_config(sweep.arm("rsk_b256"), seed=1) == recipe
    assert {arm.loss for arm in sweep.arms} == {"rsk", "contrastive", "fastap"}


def test_the_scratch_sweep_is_the_han_glyphs_recipe_at_the_learning_rate_before_the_search():
    sweep, _ = benchmark.load_sweep(ROOT / "benchmarks" / "configs" / "sweep_han_glyphs_scratch.toml")
    recipe = resolve_config("han_glyphs", overrides=["eval.map_at_r=true"])
    assert _differences(sweep.config, recipe) == ["train.lr: 0.001 != 0.003"]
    assert _differences(recipe, sweep.config) == ["train.lr: 0.003 != 0.001"]


def test_the_recipe_sweep_runs_the_finetune_config_as_it_is(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep.base_config is a path from the working directory, as the runner is started
    sweep, _ = benchmark.load_sweep(ROOT / "benchmarks" / "configs" / "sweep_han_glyphs_finetune_recipe.toml")
    recipe = resolve_config(config_file=FINETUNE, overrides=["train.seed=1"])
    assert sweep.arm_config(sweep.arm("rsk_b1024"), seed=1) == recipe
    assert {arm.loss for arm in sweep.arms} == {"rsk", "contrastive", "fastap"}

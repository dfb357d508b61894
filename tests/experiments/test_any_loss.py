"""Any loss and miner of PML from the config (pml_recallk.experiments.registry), and the one upgrade step."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from pytorch_metric_learning import losses, miners

from pml_recallk.cli import main
from pml_recallk.experiments import builders, resolve_config
from pml_recallk.experiments.config import ConfigError, config_differences, default_config, upgrade_config
from pml_recallk.experiments.registry import LOSSES, loss_entry


@pytest.mark.parametrize("name", ["ProxyAnchorLoss", "ArcFaceLoss", "SoftTripleLoss", "NormalizedSoftmaxLoss",
                                  "CosFaceLoss", "ProxyNCALoss", "SubCenterArcFaceLoss"])  # fmt: skip
def test_losses_that_need_classes_and_embedding_size_get_them(name):
    config = resolve_config(overrides=[f"loss.name={name}", "model.embedding_size=12"])
    loss, miner = builders.build_loss(config, num_classes=7)
    assert type(loss) is getattr(losses, name) and miner is None
    # One weight row (or column) per class (SoftTriple and sub-centre ArcFace: several), each of the embedding size.
    weights = next(loss.parameters())
    other = weights.shape[0] if weights.shape[1] == 12 else weights.shape[1]
    assert 12 in weights.shape and other % 7 == 0


def test_a_loss_class_takes_its_keyword_arguments_from_overrides_in_any_order():
    config = resolve_config(overrides=["loss.margin=20.5", "loss.name=ArcFaceLoss", "loss.scale=30"])
    loss, _ = builders.build_loss(config, num_classes=5)
    assert (loss.margin, loss.scale) == (pytest.approx(math.radians(20.5)), 30)  # PML keeps the margin in radians
    assert config["loss"]["name"] == "ArcFaceLoss" and "k_values" not in config["loss"]  # RS@k's keys left


def test_a_miner_from_the_config():
    config = resolve_config(overrides=["loss.name=ContrastiveLoss", "miner.name=MultiSimilarityMiner",
                                       "miner.epsilon=0.3"])  # fmt: skip
    loss, miner = builders.build_loss(config, num_classes=5)
    assert isinstance(loss, losses.ContrastiveLoss) and isinstance(miner, miners.MultiSimilarityMiner)
    assert miner.epsilon == 0.3


def test_rsk_path_and_tile_size_are_settable():
    loss, _ = builders.build_loss(resolve_config(overrides=["loss.path=tiled", "loss.tile_size=32"]), num_classes=5)
    assert (loss.path, loss.tile_size) == ("tiled", 32)
    loss, _ = builders.build_loss(resolve_config(), num_classes=5)
    assert loss.path == "auto" and loss.tile_size is None  # 0: not set


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.name=ArcFaceLoss", "loss.margn=3"], "ArcFaceLoss takes no 'margn'; did you mean loss.margin?"),
        (["loss.name=ArcFaceLos"], "unknown loss 'ArcFaceLos'; did you mean ArcFaceLoss"),
        (["loss.rank_temprature=0.1"], "did you mean loss.rank_temperature"),
        (["loss.name=ArcFaceLoss", "loss.num_classes=3"], "loss.num_classes is set by the run"),
        (["loss.name=ArcFaceLoss", "loss.margin=big"], "loss.margin must be a number"),
        (["miner.epsilon=0.1"], "miner.epsilon needs a miner: set miner.name"),
        (["miner.name=MultiSimilarityMinr"], "unknown miner 'MultiSimilarityMinr'; did you mean MultiSimilarityMiner"),
        (["loss.distance=cosine"], "loss.distance takes a Python object"),
    ],
)
def test_unknown_or_bad_keys_are_errors_with_close_matches(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_presets_keep_their_paper_settings():
    for name in ("contrastive", "multi_similarity", "triplet", "proxy_anchor", "fastap"):
        config = resolve_config(overrides=[f"loss.name={name}"])
        loss, miner = builders.build_loss(config, num_classes=10)
        assert LOSSES[name].settings.split("(")[0] == type(loss).__name__
        for key, value in LOSSES[name].arguments.items():
            assert getattr(loss, key) == value, (name, key)
        assert (miner is None) == (not LOSSES[name].miner)
    assert loss_entry("proxy_anchor").loss_lr_factor == 100.0


def test_an_arc_face_run_trains_from_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    argv = ["train", "--epochs", "1", "--device", "cpu", "--output-dir", str(tmp_path / "run"),
            "--set", "loss.name=ArcFaceLoss", "--set", "loss.margin=28.6", "--set", "data.max_classes=8",
            "--set", "train.iterations_per_epoch=2", "--set", "model.width=4"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["loss"]["name"] == "ArcFaceLoss" and results["config"]["loss"]["margin"] == 28.6


def test_a_config_saved_by_the_last_release_upgrades_in_one_step():
    saved = default_config()
    saved["train"]["amp"] = saved["train"].pop("mixed_precision") == "auto"
    # The last release's [loss] held RS@k's keys whatever loss.name said.
    rsk_keys = {"k_values": [1, 2, 4, 8, 16], "rank_temperature": 0.01, "k_temperature": 1.0, "k_margin": 0.0,
                "count_query_in_rank": False, "query_chunk_size": 0}  # fmt: skip
    saved["loss"] = {"name": "multi_similarity", **rsk_keys}
    saved["mixup"]["mode"] = "official"
    del saved["miner"], saved["data"]["channels"], saved["train"]["stop_on_nan"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saved config upgrades silently
        upgraded = upgrade_config(saved)
    fresh = resolve_config(overrides=["loss.name=multi_similarity"])
    assert config_differences(upgraded, fresh) == []
    assert upgraded["miner"] == {"name": "MultiSimilarityMiner", "epsilon": 0.1}
    assert upgraded["mixup"]["mode"] == "queries_and_database"


def test_old_spellings_in_a_file_or_override_warn_and_work(tmp_path):
    with pytest.warns(DeprecationWarning, match="mixup.mode 'database' is now 'database_only'"):
        assert resolve_config(overrides=["mixup.mode=database"])["mixup"]["mode"] == "database_only"

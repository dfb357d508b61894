"""The icon study's sweep files (issue 21) hold the arms and the protocol that docs/icons_benchmark.md says they do.

Config-level checks only: the data set and the weights are built outside git (benchmarks/.cache), and loading a sweep
file reads neither.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pml_recallk import benchmark
from pml_recallk.benchmark import report
from pml_recallk.experiments.builders import build_model
from pml_recallk.experiments.config import RUNTIME_KEYS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "benchmarks" / "configs"
FINETUNE, SCRATCH, SEARCH, SCRATCH_SEARCH, PROXY_SEARCH = (
    CONFIGS / f"sweep_icons_{n}.toml"
    for n in ("finetune", "scratch", "finetune_search", "scratch_search", "finetune_proxy_search")
)
PML_PRESETS = {"contrastive", "fastap", "multi_similarity", "triplet", "proxy_anchor"}


def _load(path: Path) -> benchmark.Sweep:
    sweep, output_dir = benchmark.load_sweep(path)
    assert output_dir == f"benchmarks/results/{path.stem}", "results go to benchmarks/results/<sweep file>/"
    return sweep


def _configs(sweep: benchmark.Sweep) -> dict[str, dict]:
    return {arm.name: sweep.arm_config(arm, seed=sweep.seeds[0]) for arm in sweep.arms}


def _flat(config: dict) -> dict[str, object]:
    return {f"{table}.{key}": value for table, values in config.items() for key, value in values.items()}


@pytest.mark.parametrize("path", [FINETUNE, SCRATCH, SEARCH, SCRATCH_SEARCH, PROXY_SEARCH], ids=lambda p: p.name)
def test_every_arm_trains_the_same_network_on_the_icon_csv(path):
    for name, config in _configs(_load(path)).items():
        data, model = config["data"], config["model"]
        assert (data["dataset"], data["root"]) == ("csv", "benchmarks/.cache/icons/icons.csv"), name
        # RGB for the trunk; no mirror (it turns one concept into another); the 64 px the data set is built at.
        assert (data["channels"], data["flip"], data["image_size"]) == (3, False, 64), name
        assert (model["name"], model["embedding_size"]) == ("mobilenet_v2_block13", 128), name
        # Every batch above 256 goes through the gradient cache in chunks of 256, so no step holds more activations.
        assert config["train"]["chunk_size"] == (256 if data["batch_size"] > 256 else 0), name


def test_protocol_a_fine_tunes_the_pretrained_trunk_and_protocol_b_starts_from_random_weights():
    finetune, scratch = _load(FINETUNE), _load(SCRATCH)
    for config in _configs(finetune).values():
        assert config["model"]["pretrained_path"] == "benchmarks/.cache/mobilenet_v2_nsfwjs.pth"
        assert config["train"]["freeze_batchnorm"] is True  # the paper's setting for a pretrained trunk
    for config in _configs(scratch).values():
        assert config["model"]["pretrained_path"] == "" and config["model"]["init_checkpoint"] == ""
        assert config["train"]["freeze_batchnorm"] is False
    assert finetune.seeds == scratch.seeds == [0, 1, 2]
    assert finetune.floors == scratch.floors == ["untrained"]


def test_protocol_b_runs_protocol_a_s_arms_without_the_memory_and_with_the_same_overrides():
    # The PML losses at 4,096 with batch 256's steps are each protocol's best two on its own validation runs
    # (test_the_arms_are_the_ones_the_issue_lists), so they may differ between the protocols.
    def arms(path: Path) -> dict:
        return {
            arm.name: arm
            for arm in _load(path).arms
            if not arm.name.endswith("_b4096_equal_steps") or arm.loss == "rsk"
        }

    finetune, scratch = arms(FINETUNE), arms(SCRATCH)
    # The memory, and the remedy chosen on protocol A's validation search, are protocol A's alone.
    only_a = {"rsk_xbm_b256", "rsk_calibration_b256"}
    assert set(finetune) - set(scratch) == only_a and set(scratch) <= set(finetune)
    for name, arm in scratch.items():
        other = finetune[name]
        assert (arm.loss, arm.equal_steps) == (other.loss, other.equal_steps), name
        if arm.loss != "proxy_anchor":  # its warm-up (A) and its proxy rate (B) are per protocol, documented there
            # how fast a protocol's runs go (train.channels_last in B's long arms) is not what they compute
            computed = [{k: v for k, v in _flat(a.overrides).items() if k not in RUNTIME_KEYS} for a in (arm, other)]
            assert computed[0] == computed[1], name


def _validation_recall_at_256(path: Path, pml: dict[str, str]) -> dict[str, float]:
    """Mean over the committed seeds of each batch-256 PML arm's validation Recall@1 at the epoch its run chose."""
    rows = report.validation_rows(ROOT / "benchmarks" / "results" / path.stem)
    means = {row["arm"]: row["val_recall_at_1"] for row in rows if row["arm"] in pml and row["arm"].endswith("_b256")}
    assert len(means) >= 2, f"no committed batch-256 runs of two PML losses for {path.name}"
    return means


@pytest.mark.parametrize("path", [FINETUNE, SCRATCH], ids=lambda p: p.name)
def test_the_arms_are_the_ones_the_issue_lists(path):
    sweep = _load(path)
    configs = _configs(sweep)

    def shape(name: str) -> tuple:
        arm, config = sweep.arm(name), configs[name]
        mixup = config["mixup"]["mode"] if config["mixup"]["enabled"] else ""
        memory = config["memory"]["size"] if config["memory"]["enabled"] else 0
        steps = config["train"]["iterations_per_epoch"]
        return config["loss"]["name"], config["data"]["batch_size"], arm.equal_steps, steps, mixup, memory

    # RS@k at three batches at equal epochs (one pass per epoch: iterations_per_epoch 0), and 1,024 / 4,096 with
    # batch 256's steps.
    assert [shape(f"rsk_b{b}") for b in (256, 1024, 4096)] == [("rsk", b, "", 0, "", 0) for b in (256, 1024, 4096)]
    for batch in (1024, 4096):
        assert shape(f"rsk_b{batch}_equal_steps") == ("rsk", batch, "rsk_b256", 0, "", 0)
    # SiMix in both modes, at one batch (RS@k's best, to be confirmed), otherwise RS@k at that batch.
    simix = [shape(f"rsk_simix_{mode}_b256") for mode in ("database_only", "queries_and_database")]
    assert simix == [("rsk", 256, "", 0, mode, 0) for mode in ("database_only", "queries_and_database")]
    # Each PML preset at 256 and 1,024, and the best two with batch 256's steps at 4,096.
    pml = {name: configs[name]["loss"]["name"] for name in configs if configs[name]["loss"]["name"] != "rsk"}
    assert set(pml.values()) == PML_PRESETS
    for loss in PML_PRESETS:
        batches = sorted(configs[n]["data"]["batch_size"] for n, value in pml.items() if value == loss)
        assert batches[:2] == [256, 1024], loss
    equal_steps = sorted(
        (configs[n]["loss"]["name"], configs[n]["data"]["batch_size"], sweep.arm(n).equal_steps)
        for n in pml
        if "equal_steps" in n
    )
    # The best two at 4,096 are the two PML losses with the best mean validation Recall@1 at 256 in this sweep's
    # committed runs (each run's chosen epoch), so a re-run that changes the order fails here until they move.
    validation = _validation_recall_at_256(path, pml)
    best_two = sorted(validation, key=validation.get, reverse=True)[:2]
    # Beside them RS@k's best batch-and-steps arm (1,024 with batch 256's steps in both protocols), matched by the
    # best PML loss at 256.
    expected = sorted([*((pml[arm], 4096, arm) for arm in best_two), (pml[best_two[0]], 1024, best_two[0])])
    assert equal_steps == expected
    # Every arm uses its preset's settings: no arm sets loss hyper-parameters or a miner of its own, but the remedy
    # arm of protocol A, which sets the one key the validation search chose.
    remedy = {"rsk_calibration_b256"} & set(configs)
    for name in configs:
        loss_keys = set(sweep.arm(name).overrides.get("loss", {})) - {"name"}
        assert loss_keys == ({"calibration_weight"} if name in remedy else set()), name
        assert "miner" not in sweep.arm(name).overrides, name
    for name in remedy:
        assert configs[name]["loss"]["calibration_weight"] == 0.1 and configs[name]["data"]["batch_size"] == 256
    # Nothing but batch, steps, chunking and the named option differs between arms.
    allowed = {"data.batch_size", "train.chunk_size", "mixup.enabled", "mixup.mode", "memory.enabled", "memory.size"}
    allowed |= {"train.warmup_epochs", "train.loss_lr"}  # ProxyAnchor's, checked below
    allowed |= RUNTIME_KEYS  # where and how fast an arm runs (train.channels_last), not what it computes
    for name in configs:
        keys = set(_flat(sweep.arm(name).overrides)) - (
            {"loss.name", "loss.calibration_weight"}
            & {f"loss.{key}" for key in sweep.arm(name).overrides.get("loss", {}) if name in remedy}
        )
        assert keys <= allowed, (name, keys - allowed)


def test_protocol_a_has_the_memory_arm_and_proxy_anchor_s_warm_up():
    sweep = _load(FINETUNE)
    configs = _configs(sweep)
    xbm = configs["rsk_xbm_b256"]
    assert (xbm["loss"]["name"], xbm["data"]["batch_size"], xbm["memory"]["enabled"]) == ("rsk", 256, True)
    assert xbm["memory"]["size"] == 8 * 256
    for name in ("proxy_anchor_b256", "proxy_anchor_b1024"):
        # The paper's one warm-up epoch, out of the protocol's epochs, and the registry's proxy rate.
        assert (configs[name]["train"]["warmup_epochs"], configs[name]["train"]["loss_lr"]) == (1, 0.0)
        assert configs[name]["train"]["epochs"] > 1
    scratch = _configs(_load(SCRATCH))
    for name in ("proxy_anchor_b256", "proxy_anchor_b1024"):
        assert (scratch[name]["train"]["warmup_epochs"], scratch[name]["train"]["loss_lr"]) == (0, 1e-2)


def test_the_protocols_epochs_and_rates():
    finetune, scratch = _load(FINETUNE).config["train"], _load(SCRATCH).config["train"]
    assert (finetune["epochs"], finetune["iterations_per_epoch"], finetune["lr"]) == (2, 0, 3e-4)
    assert (scratch["epochs"], scratch["iterations_per_epoch"], scratch["lr"]) == (4, 0, 1e-3)
    assert finetune["weight_decay"] == scratch["weight_decay"] == 4e-4


@pytest.mark.parametrize(
    ("path", "protocol", "arm"),
    [
        (SEARCH, FINETUNE, "rsk_b256"),
        (SCRATCH_SEARCH, SCRATCH, "rsk_b256"),
        (PROXY_SEARCH, FINETUNE, "proxy_anchor_b256"),
    ],
    ids=["A", "B", "A ProxyAnchor"],
)
def test_a_search_never_embeds_a_test_image_and_its_base_is_its_protocol_s_arm(path, protocol, arm):
    search = _load(path)
    configs = _configs(search)
    assert search.floors == [] and search.seeds == [0, 1, 2]
    assert all(config["data"]["test_splits"] == ["val"] for config in configs.values())
    main = _load(protocol).arm_config(_load(protocol).arm(arm), seed=0)
    differences = {key for key, value in _flat(configs["base"]).items() if _flat(main)[key] != value}
    assert differences == {"data.test_splits"}
    # Every other arm changes one thing of the base, and names it.
    for name, config in configs.items():
        changed = {key for key, value in _flat(config).items() if _flat(configs["base"])[key] != value}
        assert len(changed) <= 2 and (name == "base") == (not changed), (name, changed)


def test_the_protocols_batchnorm_setting_reaches_the_network():
    # The MobileNetV2 registry entries pass train.freeze_batchnorm on (the model's own default is frozen, so
    # without that protocol B would silently train with frozen statistics).
    for path, frozen in ((FINETUNE, True), (SCRATCH, False)):
        sweep = _load(path)
        config = sweep.arm_config(sweep.arm("rsk_b256"), seed=0)
        config["model"]["pretrained_path"] = ""  # the weights are not in git; the BatchNorm mode does not need them
        model = build_model(config).train()
        modes = {layer.training for layer in model.modules() if isinstance(layer, torch.nn.BatchNorm2d)}
        assert modes == {not frozen}, path.name


def test_the_report_names_the_pretrained_backbone_of_protocol_a():
    # The report's data line said "from random weights" whenever init_checkpoint was empty, also for protocol A.
    line_a, line_b = (report._data_line(_load(path), []) for path in (FINETUNE, SCRATCH))
    assert "from the backbone weights `benchmarks/.cache/mobilenet_v2_nsfwjs.pth`" in line_a
    assert "random" not in line_a and "from random weights" in line_b

"""Config layering, recipes, TOML files, ``--set`` overrides and validation (pml_recallk/experiments/config.py)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from pml_recallk.experiments.config import (
    DATASETS,
    RECIPES,
    SCHEMA,
    ConfigError,
    apply_overrides,
    config_differences,
    default_config,
    dumps_toml,
    parse_override,
    resolve_config,
    validate_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from pml_recallk.experiments.registry import dataset_class


def folder_dataset(name: str) -> bool:
    return dataset_class(name).needs_root


ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "pml_recallk" / "experiments" / "recipes"
GENERIC = ("image_folder", "csv")
BENCHMARKS = [d for d in DATASETS if folder_dataset(d) and d not in GENERIC]


def _with_root(dataset: str) -> list[str]:
    return ['data.root="/data/somewhere"'] if folder_dataset(dataset) else []


# ------------------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_default_config_is_valid_and_complete(dataset):
    config = resolve_config(dataset, overrides=_with_root(dataset))
    assert set(config) == set(SCHEMA)
    for table, fields in SCHEMA.items():
        if table in ("loss", "miner"):  # a name and that class's arguments
            assert set(fields) <= set(config[table]), table
        else:
            assert set(config[table]) == set(fields), table
    assert config["data"]["dataset"] == dataset


@pytest.mark.parametrize("dataset", DATASETS)
def test_default_config_returns_a_fresh_copy(dataset):
    first = default_config(dataset)
    first["loss"]["k_values"].append(99)
    first["train"]["epochs"] = -1
    second = default_config(dataset)
    assert 99 not in second["loss"]["k_values"]
    assert second["train"]["epochs"] >= 1


# The paper's recipes, written out from docs/method.md §5-6 (not from the recipe files): epochs, batch size, lr, and the
# reported k of each benchmark.
PAPER = {
    "cub": dict(epochs=40, batch_size=400, lr=1e-4, k=[1, 2, 4, 8]),
    "cars196": dict(epochs=170, batch_size=392, lr=1e-4, k=[1, 2, 4, 8]),
    "sop": dict(epochs=55, batch_size=4000, lr=2e-4, k=[1, 10, 100, 1000]),
    "inaturalist": dict(epochs=90, batch_size=4000, lr=1e-4, k=[1, 4, 16, 32]),
    "vehicleid": dict(epochs=90, batch_size=4000, lr=1e-4, k=[1, 5]),
}


@pytest.mark.parametrize("dataset", BENCHMARKS)
def test_recipes_follow_the_paper(dataset):
    config = default_config(dataset)
    paper = PAPER[dataset]
    assert config["train"]["epochs"] == paper["epochs"]
    assert config["data"]["batch_size"] == paper["batch_size"]
    assert config["train"]["lr"] == pytest.approx(paper["lr"])
    assert config["eval"]["k_values"] == paper["k"]
    assert config["data"]["samples_per_class"] == 4
    assert config["train"]["weight_decay"] == pytest.approx(4e-4)
    assert config["train"]["lr_gamma"] == pytest.approx(0.3)
    assert config["train"]["optimizer"] == "adam"
    assert (config["model"]["name"], config["model"]["embedding_size"]) == ("resnet50", 512)
    assert config["data"]["image_size"] == 224
    assert config["loss"]["k_values"] == [1, 2, 4, 8, 16]
    assert config["loss"]["rank_temperature"] == pytest.approx(0.01)
    assert config["loss"]["k_temperature"] == pytest.approx(1.0)


# -------------------------------------------------------------------------------------- TOML files


@pytest.mark.parametrize("dataset", DATASETS)
def test_toml_round_trip(dataset, tmp_path):
    config = resolve_config(dataset, overrides=_with_root(dataset))
    for comments in (False, True):
        assert tomllib.loads(dumps_toml(config, comments=comments)) == config
        path = tmp_path / f"{dataset}-{comments}.toml"
        path.write_text(dumps_toml(config, comments=comments))
        assert resolve_config(config_file=path) == config


def test_strings_with_quotes_and_backslashes_survive_toml(tmp_path):
    config = resolve_config(overrides=['data.glyphs_cache_dir = "C:\\\\cache \\"x\\""'])
    assert config["data"]["glyphs_cache_dir"] == 'C:\\cache "x"'
    assert tomllib.loads(dumps_toml(config)) == config


def test_recipes_are_package_data_and_the_only_copy():
    assert sorted(p.stem for p in RECIPE_DIR.glob("*.toml")) == sorted(DATASETS)
    for dataset in DATASETS:
        with open(RECIPE_DIR / f"{dataset}.toml", "rb") as f:
            assert tomllib.load(f) == RECIPES[dataset]
    # benchmarks/configs holds sweep files only: no second copy of a recipe to keep in sync.
    assert not [p.name for p in (ROOT / "benchmarks" / "configs").glob("*.toml") if not p.name.startswith("sweep_")]


# The Recall@k each paper reports (docs/method.md §5, and issue 10 for the Han glyphs), written out here.
REPORTED_K = {
    "cub": [1, 2, 4, 8], "cars196": [1, 2, 4, 8], "sop": [1, 10, 100, 1000], "inaturalist": [1, 4, 16, 32],
    "vehicleid": [1, 5], "han_glyphs": [1, 2, 4, 8, 16, 32], "glyphs": [1, 2, 4, 8],
    "image_folder": [1, 2, 4, 8], "csv": [1, 2, 4, 8],
}  # fmt: skip


@pytest.mark.parametrize("dataset", DATASETS)
def test_reported_k_is_the_data_sets_preset(dataset):
    assert resolve_config(dataset, overrides=_with_root(dataset))["eval"]["k_values"] == REPORTED_K[dataset]
    # Set explicitly, the config's k win; [] means the preset again.
    assert resolve_config(dataset, overrides=[*_with_root(dataset), "eval.k_values=[1, 3]"])["eval"]["k_values"] == [
        1,
        3,
    ]
    assert (
        resolve_config(dataset, overrides=[*_with_root(dataset), "eval.k_values=[]"])["eval"]["k_values"]
        == (REPORTED_K[dataset])
    )


def test_han_glyphs_recipe_is_a_cpu_recipe_of_64_classes_per_batch():
    config = resolve_config("han_glyphs")
    assert (config["data"]["batch_size"], config["data"]["samples_per_class"]) == (256, 4)
    assert config["model"]["name"] == "small_cnn" and config["data"]["root"] == ""


def test_the_old_amp_key_still_works_with_a_deprecation_warning(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("[train]\namp = true\n")
    with pytest.warns(DeprecationWarning, match="train.amp is now train.mixed_precision"):
        assert resolve_config(config_file=path)["train"]["mixed_precision"] == "auto"
    with pytest.warns(DeprecationWarning):
        assert resolve_config(overrides=["train.amp=false"])["train"]["mixed_precision"] == "off"
    with pytest.warns(DeprecationWarning):
        assert resolve_config(overrides=["train.amp=bfloat16"])["train"]["mixed_precision"] == "bfloat16"


def test_the_old_module_path_still_works_with_a_deprecation_warning():
    import importlib
    import sys as system

    for name in ("pml_recallk.config", "pml_recallk.experiment"):
        system.modules.pop(name, None)
        with pytest.warns(DeprecationWarning, match=name.replace(".", r"\.") + " is deprecated"):
            module = importlib.import_module(name)
        assert callable(getattr(module, "resolve_config", None) or module.run_experiment)


def test_a_saved_config_of_the_last_release_upgrades():
    saved = default_config()
    saved["train"]["amp"] = saved["train"].pop("mixed_precision") == "auto"
    del saved["memory"], saved["model"]["init_checkpoint"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = resolve_config(base=saved)
    assert config == default_config()


def test_dataset_is_taken_from_the_config_file(tmp_path):
    path = tmp_path / "cars.toml"
    path.write_text('[data]\ndataset = "cars196"\nroot = "/x"\n[train]\nepochs = 3\n')
    config = resolve_config(config_file=path)
    assert config["data"]["dataset"] == "cars196"
    assert config["train"]["epochs"] == 3  # the file wins over the recipe...
    assert config["data"]["batch_size"] == 392  # ...which fills in the rest


def test_layers_win_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nepochs = 3\nlr = 0.5\n[data]\nroot = "/from/file"\n')
    config = resolve_config("cub", path, ["train.epochs=7"])
    assert config["train"]["epochs"] == 7  # override > file
    assert config["train"]["lr"] == 0.5  # file > recipe
    assert config["data"]["batch_size"] == 400  # recipe > schema default
    assert config["model"]["width"] == SCHEMA["model"]["width"].default


def test_base_replaces_defaults_and_recipe():
    saved = resolve_config("sop", overrides=["data.root=/sop", "train.epochs=2"])
    resumed = resolve_config(overrides=["data.num_workers=1"], base=saved)
    assert config_differences(saved, resumed) == ["data.num_workers: 8 != 1"]


# -------------------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("train.epochs=3", "train.epochs", 3),
        ("train.lr=2e-4", "train.lr", 2e-4),
        ("train.lr = 0.5 ", "train.lr", 0.5),
        ("loss.k_values=[1, 4]", "loss.k_values", [1, 4]),
        ("mixup.enabled=true", "mixup.enabled", True),
        ('data.root="/a b/c"', "data.root", "/a b/c"),
        ("data.root=/data/CUB_200_2011", "data.root", "/data/CUB_200_2011"),
        ("model.name=resnet50", "model.name", "resnet50"),
        ("data.root=", "data.root", ""),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=1", ("train", "lr", 1.0)),  # an int where a float goes
        ("loss.k_temperature=[1, 2, 4, 8, 16]", ("loss", "k_temperature", [1.0, 2.0, 4.0, 8.0, 16.0])),
        ("loss.k_temperature=2", ("loss", "k_temperature", 2.0)),
        ("data.crop_scale=[0.2, 1]", ("data", "crop_scale", [0.2, 1.0])),
    ],
)
def test_numbers_are_converted_to_the_field_type(override, expected):
    table, key, value = expected
    result = apply_overrides(default_config(), [override])[table][key]
    assert result == value and type(result) is type(value)
    if isinstance(value, list):
        assert all(type(x) is float for x in result)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "did you mean train.epochs"),
        ("trian.epochs=3", "did you mean train.epochs"),
        ("nonsense.key=1", "unknown config key 'nonsense.key'"),
        ("train.epochs", "must look like table.key=value"),
        ("=3", "must look like table.key=value"),
        ("train.epochs=three", "train.epochs must be int, got 'three'"),
        ("train.epochs=2.5", "train.epochs must be int, got 2.5"),
        ("train.epochs=true", "train.epochs must be int"),
        ("train.lr=fast", "train.lr must be float"),
        ("train.lr=nan", "train.lr must be a finite float"),
        ("loss.k_values=[1, 2.5]", "loss.k_values must be list[int]"),
        ("loss.k_values=4", "loss.k_values must be list[int]"),
        ("mixup.enabled=1", "mixup.enabled must be bool"),
        ("train.mixed_precision=1", "train.mixed_precision must be str"),
        ("memory.size=many", "memory.size must be int"),
        ("model.init_checkpoint=3", "model.init_checkpoint must be str"),
        ("data.root=3", "data.root must be str"),
    ],
)
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=[override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[data]\nbatchsize = 10\n")
    with pytest.raises(ConfigError, match=r"typo\.toml.*data\.batchsize.*did you mean data\.batch_size"):
        resolve_config(config_file=path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[traning]\nepochs = 1\n", "unknown config table 'traning'; did you mean train"),
        ("epochs = 1\n", "unknown config table 'epochs'"),
        ("[train]\nepochs = 1\n[variants.vit_b99.train]\nlr = 1.0\n", "unknown config model 'vit_b99'"),
        ("[variants.vit_b16]\nlr = 1.0\n", "[variants.vit_b16.lr] must be a table"),
        ("[data]\nbatch_size = 1\n[variants.vit_b16.train]\nlr = 1.0\n", "data.batch_size (1) must be a multiple"),
        ("[train\n", "is not valid TOML"),
    ],
)
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve_config(config_file=path)
    assert message in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(config_file=tmp_path / "nope.toml")


# -------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["data.batch_size=30"], "multiple of data.samples_per_class"),
        (["data.batch_size=4"], "at least two classes"),
        (["data.test_splits=[]"], "data.test_splits must be a non-empty list"),
        (["mixup.alpha_range=[0.5, 2.0]"], "mixup.alpha_range must be [low, high]"),
        (["train.mixed_precision=float8"], "train.mixed_precision must be one of off, auto, float16, bfloat16"),
        (["data.max_classes=1"], "data.max_classes must be 0 (every class) or at least 2"),
        (["loss.name=smoothap"], "unknown loss 'smoothap'"),
        (["memory.enabled=true"], "memory.size must be set"),
        (["memory.size=-1"], "memory.size must be at least 0"),
        (["train.epochs=0"], "train.epochs must be at least 1"),
        (["data.val_fraction=1.0"], "data.val_fraction must be in (0, 1)"),
        (["data.val_fraction=0"], "data.val_fraction must be in (0, 1)"),
        (["eval.k_values=[2, 4]"], "eval.k_values must contain 1"),
        (["eval.k_values=[1, 1]"], "distinct positive integers"),
        (["loss.k_values=[]"], "non-empty"),
        (["loss.k_values=[0, 1]"], "distinct positive integers"),
        (["loss.k_temperature=[1.0, 2.0]"], "loss.k_temperature has 2 values but loss.k_values has 5"),
        (["loss.k_temperature=0"], "loss.k_temperature must be positive"),
        (["loss.rank_temperature=0"], "loss.rank_temperature must be positive"),
        (["train.device=gpu"], "train.device must be auto, cpu"),
        (["train.optimizer=lamb"], "train.optimizer must be one of adam, adamw, sgd"),
        (["mixup.mode=both"], "mixup.mode must be one of queries_and_database, database_only"),
        (["model.name=resnet18"], "model.name must be one of"),
        (["train.lr_milestones=[5, 3]"], "train.lr_milestones must increase"),
        (["data.crop_scale=[0.5]"], "data.crop_scale must be [low, high]"),
        (["data.crop_scale=[0.9, 0.5]"], "data.crop_scale must be [low, high]"),
        (["data.image_size=4"], "data.image_size must be at least 8"),
    ],
)
def test_invalid_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(overrides=overrides)
    assert message in str(info.value)


@pytest.mark.parametrize("dataset", BENCHMARKS)
def test_benchmarks_need_a_root(dataset):
    with pytest.raises(ConfigError, match="--data-root"):
        resolve_config(dataset)


def test_dataset_flag_overrides_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\ndataset = "cub"\n')
    assert resolve_config("glyphs", config_file=path)["data"]["dataset"] == "glyphs"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_valid_devices(device):
    validate_config(resolve_config(overrides=[f"train.device={device}"]))


def test_config_differences_lists_changed_keys():
    a = default_config()
    b = apply_overrides(a, ["train.epochs=99", "mixup.enabled=true"])
    assert config_differences(a, b) == [
        f"train.epochs: {a['train']['epochs']} != 99",
        "mixup.enabled: False != True",
    ]


# ---------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize("dataset", BENCHMARKS)
@pytest.mark.parametrize("model, optimizer", [("vit_b16", "adamw"), ("vit_b32", "adamw"), ("resnet50", "adam")])
def test_choosing_a_backbone_applies_its_variant(dataset, model, optimizer):
    config = resolve_config(dataset, overrides=["data.root=/x", f"model.name={model}"])
    assert config["model"]["name"] == model
    assert config["train"]["optimizer"] == optimizer
    assert config == default_config(dataset, model) | {"data": {**default_config(dataset)["data"], "root": "/x"}}


def test_variant_lies_over_the_file_and_under_the_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[data]\ndataset = "cub"\nroot = "/x"\n[train]\nlr = 0.5\nepochs = 2\n[variants.vit_b16.train]\nlr = 0.25\n'
    )
    assert resolve_config(config_file=path)["train"]["lr"] == 0.5  # resnet50: no variant
    vit = resolve_config(config_file=path, overrides=["model.name=vit_b16"])
    assert vit["train"]["lr"] == 0.25  # the file's variant beats its top-level table
    assert vit["train"]["optimizer"] == "adamw"  # the recipe's variant fills what the file's does not set
    assert vit["train"]["epochs"] == 2
    tuned = resolve_config(config_file=path, overrides=["model.name=vit_b16", "train.lr=0.125"])
    assert tuned["train"]["lr"] == 0.125  # an override beats every variant


def test_batch_size_zero_means_every_training_class():
    assert default_config()["data"]["batch_size"] == 0  # the glyph job: all classes × 4 in every batch
    validate_config(resolve_config(overrides=["data.batch_size=0"]))


def test_docs_list_every_config_key():
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    missing = [f"{t}.{k}" for t, fields in SCHEMA.items() for k in fields if f"`{t}.{k}`" not in text]
    assert missing == [], "docs/cli.md does not describe these config keys"


def test_training_on_a_test_split_needs_the_explicit_key():  # K41
    for split in ("test", "val"):
        with pytest.raises(ConfigError, match=f"data.train_split is '{split}', a split that is evaluated"):
            resolve_config(overrides=[f"data.train_split={split}"])
    config = resolve_config(overrides=["data.train_split=test", "data.train_on_test_split=true"])
    assert config["data"]["train_split"] == "test"

"""Experiment configuration: defaults, per-dataset recipes, TOML files and ``--set key=value`` overrides.

A config is a dict of tables, ``{"data": {...}, "model": {...}, "train": {...}, "loss": {...}, "mixup": {...},
"eval": {...}}``, the same shape as a TOML file with those tables. :data:`SCHEMA` lists every key with its type,
default and meaning; nothing outside it is accepted, so a typo is an error (with close matches) rather than a
silently ignored setting. Values are layered, later ones winning:

1. the defaults of :data:`SCHEMA` (the embedded glyph job of ``pml-recallk train``);
2. the recipe of the chosen dataset (:data:`RECIPES`: ``pml_recallk/experiments/recipes/<dataset>.toml``, package
   data and the only copy; the paper's settings of docs/method.md §6 for the paper's benchmarks);
3. a TOML file (``--config FILE``);
4. the variant of the chosen backbone, from the recipe and the file (``[variants.vit_b16.train]`` ...);
5. dotted overrides (``--set train.epochs=3``).

TOML has no null, so "not set" is spelled ``0`` (numbers), ``""`` (strings) or ``[]`` (lists) and each such key
says so. ``eval.k_values = []`` means the data set's Recall@k preset (its class's ``recall_k_values``).

Example:
    >>> config = resolve_config(overrides=["train.epochs=2", "loss.k_values=[1, 4]"])
    >>> config["train"]["epochs"], config["loss"]["k_values"], config["data"]["dataset"]
    (2, [1, 4], 'glyphs')
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .registry import DATASETS as _DATASET_CLASSES
from .registry import LOSSES, MODEL_NAMES, dataset_class, folder_dataset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DATASETS",
    "RECIPES",
    "RESUMABLE_KEYS",
    "RUNTIME_KEYS",
    "SCHEMA",
    "ConfigError",
    "Field",
    "apply_overrides",
    "config_differences",
    "default_config",
    "dumps_toml",
    "load_toml",
    "merge_config",
    "parse_override",
    "resolve_config",
    "upgrade_config",
    "validate_config",
]

DATASETS = tuple(_DATASET_CLASSES)
OPTIMIZERS = ("adam", "adamw", "sgd")
MODELS = MODEL_NAMES
MIXED_PRECISION = ("off", "auto", "float16", "bfloat16")
# SiMix modes: the library's names, and the earlier names it still accepts (official, database).
MIXUP_MODES = ("queries_and_database", "database_only", "official", "database")
DEVICES_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class ConfigError(ValueError):
    """A mistake in a config file, an override or a command-line option (shown to the user as one line)."""


@dataclass(frozen=True)
class Field:
    """One config key: its type (``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"list[int]"``,
    ``"list[float]"``, ``"float|list[float]"``), default, meaning and optional constraints."""

    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None


SCHEMA: dict[str, dict[str, Field]] = {
    "data": {
        "dataset": Field("str", "glyphs", "which data set", choices=DATASETS),
        "root": Field("str", "", "folder of a benchmark's standard layout (not used by the glyph sets)"),
        "train_split": Field("str", "train", "split to train on (its classes also give the validation part)"),
        "test_splits": Field("list[str]", ["test"], "splits to report, each evaluated on its own"),
        "image_size": Field("int", 32, "side of the (square) network input in pixels", minimum=8),
        "batch_size": Field(
            "int", 0, "images per batch, classes × samples_per_class (0 = every training class once)", minimum=0
        ),
        "samples_per_class": Field("int", 4, "images of each class in a batch (MPerClassSampler's m)", minimum=1),
        "num_workers": Field("int", 0, "data-loader worker processes (training and evaluation)", minimum=0),
        "val_fraction": Field("float", 0.2, "fraction of the training classes held out to choose the best epoch"),
        "split_seed": Field("int", 0, "seed of the class-disjoint train/validation split (han_glyphs: of its splits)"),
        "max_classes": Field(
            "int", 0, "keep only the first N classes of every split, for quick runs (0 = all, else at least 2)"
        ),
        "crop_scale": Field("list[float]", [0.5, 1.0], "RandomResizedCrop area range of the training augmentation"),
        # Off for characters, which a mirror turns into other characters (or none).
        "flip": Field("bool", False, "random horizontal flips in the training augmentation"),
        "glyphs_font_dirs": Field("list[str]", [], "glyphs: font folders to render from ([] = matplotlib's fonts)"),
        "glyphs_one_face_per_family": Field(
            "bool", False, "glyphs: only each family's plain upright face (no two samples are styles of one design)"
        ),
        "glyphs_cache_dir": Field("str", "", 'glyph sets: where rendered images are cached ("" = the default)'),
        "han_font_dir": Field("str", "", 'han_glyphs: folder of the fetched CJK fonts ("" = the default)'),
        "images_per_class": Field("int", 0, "han_glyphs: cap on images per class (0 = the class's default)"),
    },
    "model": {
        "name": Field("str", "small_cnn", "embedding network", choices=MODELS),
        "embedding_size": Field("int", 128, "size of the L2-normalised embedding", minimum=1),
        "pretrained_path": Field("str", "", 'local backbone weights for resnet50/vit_*/mobilenet_v2* ("" = random)'),
        "init_checkpoint": Field(
            "str", "", 'start from these weights: a pml-recallk checkpoint or a state_dict file ("" = none)'
        ),
        "width": Field("int", 16, "small_cnn: channels of the first block", minimum=1),
        "norm": Field("str", "batch", "small_cnn: normalisation layers", choices=("batch", "group", "none")),
    },
    "train": {
        "optimizer": Field("str", "adam", "optimiser; sgd uses momentum 0.9", choices=OPTIMIZERS),
        "lr": Field("float", 1e-3, "learning rate", minimum=0.0),
        "weight_decay": Field("float", 0.0, "weight decay", minimum=0.0),
        "epochs": Field("int", 6, "number of epochs", minimum=1),
        # ProxyAnchor's warm-up (Kim et al., CVPR 2020, released code's --warm): fresh proxies at 100 × the learning
        # rate would otherwise drag a pretrained backbone down in the first steps.
        "warmup_epochs": Field(
            "int",
            0,
            "epochs at the start that train only the model's embedding layer and the loss's parameters "
            "(ProxyAnchor's warm-up; 0 = none)",
            minimum=0,
        ),
        # ProxyAnchor's paper trains its proxies at 1e-2 beside a backbone at 1e-4: a ratio of 100, which the
        # default keeps; a network trained at a higher rate may need the paper's absolute rate instead.
        "loss_lr": Field(
            "float",
            0.0,
            "learning rate of the loss's own parameters (ProxyAnchor's proxies); 0 = train.lr × the loss's factor "
            "(ProxyAnchor: 100, its paper's ratio)",
            minimum=0.0,
        ),
        "iterations_per_epoch": Field("int", 10, "optimiser steps per epoch (0 = one pass over the data)", minimum=0),
        "lr_milestones": Field("list[int]", [], "epochs after which the learning rate is multiplied by lr_gamma"),
        "lr_gamma": Field("float", 0.3, "learning-rate decay factor at each milestone", minimum=0.0),
        "chunk_size": Field(
            "int", 0, "images per forward pass of the gradient-cached step (0 = the whole batch)", minimum=0
        ),
        "freeze_batchnorm": Field(
            "bool", False, "BatchNorm in eval mode while training (the paper's ResNet-50); false: train it"
        ),
        "mixed_precision": Field(
            "str",
            "off",
            "autocast dtype of the forward passes (auto: float16 on CUDA, else bfloat16)",
            choices=MIXED_PRECISION,
        ),
        "grad_clip": Field("float", 0.0, "clip the gradient norm to this value (0 = no clipping)", minimum=0.0),
        "seed": Field("int", 0, "seed of initialisation, sampling and augmentation", minimum=0),
        "device": Field("str", "auto", "auto, cpu, cuda, cuda:N or mps"),
    },
    "loss": {
        "name": Field(
            "str", "rsk", "the loss (rsk, or a PML loss with its paper's settings: pml-recallk benchmark --list)"
        ),
        "k_values": Field("list[int]", [1, 2, 4, 8, 16], "rsk: the k of the surrogate Recall@k terms"),
        "rank_temperature": Field("float", 0.01, "rsk: temperature of the soft rank's sigmoid"),
        "k_temperature": Field("float|list[float]", 1.0, "rsk: temperature of the recall sigmoid (one, or one per k)"),
        "k_margin": Field("float", 0.0, "rsk: margin added to k in the recall sigmoid", minimum=0.0),
        "count_query_in_rank": Field("bool", False, "rsk: count the query in its own rank, as the released code does"),
        "query_chunk_size": Field(
            "int", 0, "rsk: compute the loss in chunks of this many queries (0 = all)", minimum=0
        ),
    },
    "mixup": {
        "enabled": Field("bool", False, "wrap the loss in SimilarityMixup (SiMix)"),
        "mode": Field(
            "str",
            "queries_and_database",
            "SiMix: virtual items as queries and database, or database only",
            choices=MIXUP_MODES,
        ),
        "alpha_range": Field("list[float]", [0.0, 1.0], "range of the uniform mixing weight"),
        "max_pairs_per_class": Field("int", 0, "cap on mixed pairs per class (0 = all pairs)", minimum=0),
    },
    "memory": {
        "enabled": Field("bool", False, "wrap the loss in CrossBatchMemory (a queue of past embeddings)"),
        "size": Field("int", 0, "embeddings the memory holds (at least the batch size when enabled)", minimum=0),
    },
    "eval": {
        "k_values": Field("list[int]", [], "the k of the reported Recall@k ([] = the data set's preset)"),
        "map_at_r": Field("bool", False, "also report MAP@R (PML's mean_average_precision_at_r)"),
        "every_n_epochs": Field("int", 1, "validate every this many epochs (and after the last)", minimum=1),
        "batch_size": Field("int", 256, "images per batch when computing embeddings", minimum=1),
        "patience": Field("int", 0, "stop after this many epochs without a better validation (0 = never)", minimum=0),
        # Recall@1 of a small validation split saturates (Han glyphs: 97 %), and then MAP@R separates epochs better.
        "select_by": Field(
            "str",
            "recall_at_1",
            "validation metric that picks the best epoch (mean_average_precision_at_r needs eval.map_at_r)",
            choices=("recall_at_1", "mean_average_precision_at_r"),
        ),
    },
}

# Keys that say where and how fast a run goes, not what it computes: they may differ between a run and its
# resumption, or between a finished benchmark run and the sweep that finds it.
RUNTIME_KEYS = frozenset(
    {"data.root", "data.glyphs_cache_dir", "data.han_font_dir", "data.num_workers", "train.device", "eval.batch_size"}
)
# A resumed run may also train longer (never shorter than what it has run).
RESUMABLE_KEYS = RUNTIME_KEYS | {"train.epochs"}
# Keys renamed in this release: old name → (new name, how an old value translates).
_RENAMED = {"train.amp": ("train.mixed_precision", lambda v: {False: "off", True: "auto"}.get(v, v))}


def _read_recipes() -> dict[str, dict[str, Any]]:
    """``recipes/<dataset>.toml`` (package data), one per data set: its differences from SCHEMA's defaults."""
    folder = resources.files(__package__) / "recipes"
    recipes = {}
    for dataset in DATASETS:
        path = folder / f"{dataset}.toml"
        recipes[dataset] = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return recipes


RECIPES: dict[str, dict[str, Any]] = _read_recipes()


def default_config(dataset: str = "glyphs", model: str | None = None) -> dict[str, dict[str, Any]]:
    """SCHEMA's defaults with the recipe of ``dataset`` on top, and its variant for ``model`` if it has one.

    ``eval.k_values`` left empty by the recipe becomes the data set's preset. A new dict every call.
    """
    if dataset not in RECIPES:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    config = _schema_defaults()
    config["data"]["dataset"] = dataset
    recipe = dict(RECIPES[dataset])
    variants = recipe.pop("variants", {})
    config = merge_config(config, recipe, source=f"the {dataset} recipe")
    if model is not None and model in variants:
        config = merge_config(config, variants[model], source=f"the {dataset} recipe for {model}")
    elif model is not None:
        config = merge_config(config, {"model": {"name": model}}, source="the model name")
    return _with_presets(config)


def _schema_defaults() -> dict[str, dict[str, Any]]:
    return {table: {key: copy.deepcopy(f.default) for key, f in fields.items()} for table, fields in SCHEMA.items()}


def _with_presets(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``config`` with an empty ``eval.k_values`` replaced by the data set's ``recall_k_values``."""
    dataset = config["data"]["dataset"]
    if not config["eval"]["k_values"] and dataset in DATASETS:
        config["eval"]["k_values"] = list(dataset_class(dataset).recall_k_values)
    return config


def upgrade_config(config: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A saved config (a checkpoint's) in this release's keys: renamed keys translated, new keys at default."""
    result = _schema_defaults()
    result["eval"]["k_values"] = [1, 2, 4, 8]  # before presets existed every saved config had its own
    for table, values in config.items():
        for name, value in values.items():
            key = f"{table}.{name}"
            if key in _RENAMED:
                key, value = _RENAMED[key][0], _RENAMED[key][1](value)
            new_table, _, new_name = key.partition(".")
            result.setdefault(new_table, {})[new_name] = copy.deepcopy(value)
    return result


def _unknown_key_message(key: str, candidates: Iterable[str], what: str = "key") -> str:
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config {what} {key!r}{hint}"


def _unknown_dotted_key_message(key: str) -> str:
    """Suggest keys of the same table with a similar name, then same-named keys of other tables (a key that
    lives elsewhere, e.g. train.batch_size → data.batch_size), then any similar key."""
    table, _, name = key.partition(".")
    close = []
    if table in SCHEMA:
        close = [f"{table}.{k}" for k in difflib.get_close_matches(name, list(SCHEMA[table]), n=3, cutoff=0.75)]
    close += [f"{t}.{name}" for t in SCHEMA if t != table and name in SCHEMA[t]]
    if not close:
        return _unknown_key_message(key, _all_keys())
    return f"unknown config key {key!r}; did you mean {' or '.join(close)}?"


def _all_keys() -> list[str]:
    return [f"{table}.{key}" for table, fields in SCHEMA.items() for key in fields]


def _field(key: str) -> Field:
    table, _, name = key.partition(".")
    if table in SCHEMA and name in SCHEMA[table]:
        return SCHEMA[table][name]
    raise ConfigError(_unknown_dotted_key_message(key))


def _check_type(key: str, value: Any, kind: str, source: str) -> Any:
    """Return ``value`` converted to ``kind`` (ints are accepted where floats are), or raise ConfigError."""

    def bad(what: str = kind) -> ConfigError:
        return ConfigError(f"{key} must be {what.replace('|', ' or ')}, got {value!r} (from {source})")

    def scalar(x: Any, want: str) -> Any:
        if want == "str":
            if isinstance(x, str):
                return x
        elif want == "bool":
            if isinstance(x, bool):
                return x
        elif isinstance(x, bool):  # bool is an int subclass; true is not a number here
            pass
        elif want == "int":
            if isinstance(x, int):
                return x
        elif isinstance(x, (int, float)):
            if not math.isfinite(x):
                raise bad("a finite float")
            return float(x)
        raise bad()

    if kind.startswith("list[") and "|" not in kind:
        if not isinstance(value, list):
            raise bad()
        return [scalar(x, kind[5:-1]) for x in value]
    if kind == "float|list[float]":
        return [scalar(x, "float") for x in value] if isinstance(value, list) else scalar(value, "float")
    if kind == "bool|str":
        return value if isinstance(value, (bool, str)) else scalar(value, "bool")
    return scalar(value, kind)


def _split_variants(values: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tables, variants)``: a config's ``[variants.<model>.<table>]`` apart from its top-level tables."""
    tables = {table: value for table, value in values.items() if table != "variants"}
    variants = values.get("variants", {})
    if not isinstance(variants, Mapping):
        raise ConfigError(f"{source}: [variants] must hold one table per model, got {variants!r}")
    for model, variant in variants.items():
        if model not in MODELS:
            raise ConfigError(f"{source}: [variants.{model}]: " + _unknown_key_message(model, MODELS, "model"))
        if not isinstance(variant, Mapping):
            raise ConfigError(f"{source}: [variants.{model}] must hold tables such as [variants.{model}.train]")
    return tables, dict(variants)


def merge_config(
    config: Mapping[str, Mapping[str, Any]], update: Mapping[str, Any], source: str
) -> dict[str, dict[str, Any]]:
    """Return a copy of ``config`` with the tables of ``update`` laid over it, type-checking each value.

    ``source`` names where ``update`` came from, for error messages.
    """
    merged = copy.deepcopy({table: dict(values) for table, values in config.items()})
    if not isinstance(update, Mapping):
        raise ConfigError(f"{source}: a config must be a table of tables, got {type(update).__name__}")
    for table, values in update.items():
        if table not in SCHEMA:
            raise ConfigError(f"{source}: " + _unknown_key_message(table, SCHEMA, "table"))
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{table}] must be a table of keys, got {values!r}")
        for name, value in values.items():
            key = f"{table}.{name}"
            if key in _RENAMED:
                new_key, translate = _RENAMED[key]
                warnings.warn(f"{source}: {key} is now {new_key}", DeprecationWarning, stacklevel=2)
                key, value = new_key, translate(value)
            table_name, _, name = key.partition(".")
            field = SCHEMA[table_name].get(name)
            if field is None:
                raise ConfigError(f"{source}: " + _unknown_dotted_key_message(key))
            merged[table_name][name] = _check_type(key, value, field.kind, source)
    return merged


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file (a missing or malformed file is a ConfigError naming it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"table.key=value"`` and parse the value as a TOML value (bare words are strings).

    Example:
        >>> parse_override("train.lr=2e-4"), parse_override("data.root=/data/CUB_200_2011")
        (('train.lr', 0.0002), ('data.root', '/data/CUB_200_2011'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like table.key=value, e.g. train.epochs=3")
    if key not in _RENAMED:
        _field(key)  # unknown keys fail here, before the value is looked at
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        # Unquoted text such as a path is a string; where a number or a list was meant, the type check rejects it.
        value = raw
    return key, value


def apply_overrides(config: Mapping[str, Mapping[str, Any]], overrides: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Apply ``"table.key=value"`` overrides in order (see :func:`parse_override`)."""
    result = copy.deepcopy({table: dict(values) for table, values in config.items()})
    for text in overrides:
        key, value = parse_override(text)
        table, _, name = key.partition(".")
        result = merge_config(result, {table: {name: value}}, source=f"--set {text}")
    return result


def validate_config(config: Mapping[str, Mapping[str, Any]]) -> None:
    """Check ranges, choices and the relations between keys; raise ConfigError naming the key."""
    for table, fields in SCHEMA.items():
        for name, field in fields.items():
            key, value = f"{table}.{name}", config[table][name]
            if field.choices is not None and value not in field.choices:
                raise ConfigError(f"{key} must be one of {', '.join(field.choices)}; got {value!r}")
            if field.minimum is not None and value < field.minimum:
                raise ConfigError(f"{key} must be at least {field.minimum:g}, got {value!r}")
    _validate_data(config["data"])
    _validate_loss(config)
    _validate_train(config["train"])
    k_values = config["eval"]["k_values"]
    _check_k_list("eval.k_values", k_values)
    if 1 not in k_values:
        raise ConfigError("eval.k_values must contain 1: Recall@1 is reported and watched for collapse")
    if config["eval"]["select_by"] == "mean_average_precision_at_r" and not config["eval"]["map_at_r"]:
        raise ConfigError(
            "eval.select_by = mean_average_precision_at_r needs MAP@R on validation: set eval.map_at_r = true"
        )


def _check_k_list(key: str, k_values: list[int]) -> None:
    if not k_values or any(k < 1 for k in k_values) or len(set(k_values)) != len(k_values):
        raise ConfigError(f"{key} must be a non-empty list of distinct positive integers, got {k_values}")


def _validate_data(data: Mapping[str, Any]) -> None:
    if not 0.0 < data["val_fraction"] < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {data['val_fraction']}")
    if folder_dataset(data["dataset"]) and not data["root"]:
        raise ConfigError(f"the {data['dataset']} dataset needs its folder: pass --data-root PATH")
    if not data["test_splits"] or len(set(data["test_splits"])) != len(data["test_splits"]):
        raise ConfigError(f"data.test_splits must be a non-empty list of distinct names, got {data['test_splits']}")
    if data["max_classes"] < 0 or data["max_classes"] == 1:
        raise ConfigError(
            f"data.max_classes must be 0 (every class) or at least 2 (a training and a validation class), "
            f"got {data['max_classes']}"
        )
    if data["split_seed"] < 0:
        raise ConfigError(f"data.split_seed must be at least 0, got {data['split_seed']}")
    scale = data["crop_scale"]
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {scale}")
    m, batch = data["samples_per_class"], data["batch_size"]
    if batch != 0 and (batch % m != 0 or batch < 2 * m):
        raise ConfigError(
            f"data.batch_size ({batch}) must be a multiple of data.samples_per_class ({m}) holding at least two classes"
        )


def _validate_loss(config: Mapping[str, Mapping[str, Any]]) -> None:
    loss, mixup, memory = config["loss"], config["mixup"], config["memory"]
    if loss["name"] not in LOSSES:
        raise ConfigError(_unknown_key_message(loss["name"], LOSSES, "loss").replace("config loss", "loss.name"))
    _check_k_list("loss.k_values", loss["k_values"])
    k_temperature = loss["k_temperature"]
    if isinstance(k_temperature, list) and len(k_temperature) != len(loss["k_values"]):
        raise ConfigError(
            f"loss.k_temperature has {len(k_temperature)} values but loss.k_values has {len(loss['k_values'])}"
        )
    if any(t <= 0 for t in (k_temperature if isinstance(k_temperature, list) else [k_temperature])):
        raise ConfigError(f"loss.k_temperature must be positive, got {k_temperature}")
    if loss["rank_temperature"] <= 0:
        raise ConfigError(f"loss.rank_temperature must be positive, got {loss['rank_temperature']}")
    alpha = mixup["alpha_range"]
    if len(alpha) != 2 or not 0.0 <= alpha[0] <= alpha[1] <= 1.0:
        raise ConfigError(f"mixup.alpha_range must be [low, high] with 0 <= low <= high <= 1, got {alpha}")
    if memory["enabled"] and memory["size"] < 1:
        raise ConfigError("memory.size must be set (at least the batch size) when memory.enabled is true")


def _validate_train(train: Mapping[str, Any]) -> None:
    if any(b <= a for a, b in zip(train["lr_milestones"], train["lr_milestones"][1:])):
        raise ConfigError(f"train.lr_milestones must increase, got {train['lr_milestones']}")
    if train["warmup_epochs"] and train["warmup_epochs"] >= train["epochs"]:
        raise ConfigError(
            f"train.warmup_epochs ({train['warmup_epochs']}) must be below train.epochs ({train['epochs']}): "
            "otherwise no epoch trains the backbone"
        )
    if not DEVICES_PATTERN.match(train["device"]):
        raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps; got {train['device']!r}")


def resolve_config(
    dataset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Build and validate a config: defaults → recipe of the dataset → ``config_file`` → ``overrides``.

    The dataset is ``dataset`` if given, else the file's ``data.dataset``, else the one an override sets, else
    glyphs. When the chosen model (after every layer) has a variant in the recipe or the file
    (``[variants.<model>.<table>]``), the variant is laid over the recipe and the file, under the overrides.
    ``base`` replaces the defaults and the recipe (the resumed run's saved config).
    """
    overrides = list(overrides)
    source = str(config_file)
    file_tables, file_variants = (
        _split_variants(load_toml(config_file), source) if config_file is not None else ({}, {})
    )
    parsed = dict(parse_override(text) for text in overrides)
    if base is not None:
        config = upgrade_config(base)
        variants: dict[str, Any] = {}
    else:
        chosen = dataset
        if chosen is None and isinstance(file_tables.get("data"), Mapping):
            chosen = file_tables["data"].get("dataset")
        chosen = parsed.get("data.dataset", "glyphs") if chosen is None else chosen
        if not isinstance(chosen, str) or chosen not in RECIPES:
            raise ConfigError(f"unknown dataset {chosen!r}; choose one of {', '.join(DATASETS)}")
        config = default_config(chosen)
        variants = copy.deepcopy(RECIPES[chosen].get("variants", {}))
    for model, variant in file_variants.items():
        for table, values in variant.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [variants.{model}.{table}] must be a table of keys, got {values!r}")
            variants.setdefault(model, {}).setdefault(table, {}).update(values)

    def with_overrides(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        config = apply_overrides(config, overrides)
        if dataset is not None:
            config = merge_config(config, {"data": {"dataset": dataset}}, source="--dataset")
        return config

    config = merge_config(config, file_tables, source=source)
    model = with_overrides(config)["model"]["name"]
    if model in variants:
        config = merge_config(config, variants[model], source=f"[variants.{model}]")
    config = _with_presets(with_overrides(config))
    validate_config(config)
    return config


def config_differences(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]], ignore: Iterable[str] = ()
) -> list[str]:
    """``["table.key: a_value != b_value", ...]`` for every key whose values differ, except the ``ignore`` keys
    (e.g. :data:`RUNTIME_KEYS`)."""
    ignore = set(ignore)
    return [
        f"{table}.{key}: {a.get(table, {}).get(key)!r} != {b.get(table, {}).get(key)!r}"
        for table in SCHEMA
        for key in SCHEMA[table]
        if f"{table}.{key}" not in ignore and a.get(table, {}).get(key) != b.get(table, {}).get(key)
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def dumps_toml(config: Mapping[str, Mapping[str, Any]], comments: bool = False) -> str:
    """Write a config as TOML (tables in SCHEMA order); ``comments`` adds each key's meaning.

    Example:
        >>> config = default_config()
        >>> tomllib.loads(dumps_toml(config)) == config
        True
    """
    lines: list[str] = []
    for table, fields in SCHEMA.items():
        if lines:
            lines.append("")
        lines.append(f"[{table}]")
        for key in fields:
            if key in config.get(table, {}):
                line = f"{key} = {_toml_value(config[table][key])}"
                if comments:
                    line = f"{line:<40} # {fields[key].help}"
                lines.append(line)
    return "\n".join(lines) + "\n"

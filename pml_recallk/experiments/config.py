"""Experiment configuration: defaults, per-dataset recipes, TOML files and ``--set key=value`` overrides.

A config is a dict of tables, ``{"data": {...}, "model": {...}, "train": {...}, "loss": {...}, "miner": {...},
"mixup": {...}, "memory": {...}, "eval": {...}}``, the same shape as a TOML file with those tables. :data:`SCHEMA`
lists every key with its type, default and meaning; nothing outside it is accepted, so a typo is an error (with
close matches) rather than a silently ignored setting. ``[data]`` holds the shared keys and those each data set
declares (its class's ``config_fields``). ``[loss]`` and ``[miner]`` are a ``name`` and that class's keyword
arguments: ``loss.name`` is a preset of the registry (``rsk``, ``multi_similarity``, ...; its arguments and miner
are written in) or a loss class by name (``ArcFaceLoss``), and every other key is checked against the class's
signature. Setting ``loss.name`` to another loss starts its table (and the miner's) afresh from that loss's
preset, so within one layer the name is applied first. Values are layered, later ones winning:

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
from .registry import (
    LOSSES,
    MODEL_NAMES,
    build_loss_and_miner,
    check_arguments,
    data_fields,
    dataset_class,
    loss_entry,
    miner_entry,
)
from .registry import (
    MODELS as MODEL_ENTRIES,
)

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
MIXUP_MODES = ("queries_and_database", "database_only")
# The tables whose keys are a class's keyword arguments (checked against its signature, not SCHEMA).
NAMED_TABLES = ("loss", "miner")
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
        "root": Field(
            "str", "", "where the data set is: a benchmark's folder, an image folder, a CSV file (glyph sets: none)"
        ),
        "train_split": Field(
            "str", "train", "split to train on (its classes also give the validation part unless the data has val)"
        ),
        "train_on_test_split": Field(
            "bool", False, "allow data.train_split to be a test split (a test leak: for deliberate experiments only)"
        ),
        "test_splits": Field("list[str]", ["test"], "splits to report, each evaluated on its own (val: validation)"),
        "image_size": Field("int", 32, "side of the (square) network input in pixels", minimum=8),
        "channels": Field(
            "int", 0, "image channels, 1 or 3 (0 = the data set's: generic sets 1 if every image is grayscale)"
        ),
        "check_images": Field("bool", True, "decode every image once before training (cached per data root)"),
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
        # The paper's backbones were pretrained on ImageNet-normalised pixels; other data may want its own statistics.
        "normalize_mean": Field(
            "list[float]",
            [],
            "per-channel mean taken from [0, 1] pixels ([] = ImageNet's on 3 channels, 0.5 on 1)",
        ),
        "normalize_std": Field(
            "list[float]", [], "per-channel std the pixels are divided by ([] = ImageNet's on 3 channels, 0.5 on 1)"
        ),
        # ... and the keys each data set declares (its class's config_fields), added below.
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
        "rank_temperature_end": Field(
            "float",
            0.0,
            "RS@k only: anneal loss.rank_temperature geometrically from its value at the first step to this at the "
            "last (RankTemperatureSchedule; 0 = constant)",
            minimum=0.0,
        ),
        "seed": Field("int", 0, "seed of initialisation, sampling and augmentation", minimum=0),
        "device": Field("str", "auto", "auto, cpu, cuda, cuda:N or mps"),
        # A layout, not a different computation: the same network up to float rounding (a runtime key below).
        "channels_last": Field(
            "bool",
            False,
            "convolution weights in the channels-last layout (a MobileNetV2 step 2x faster on one CPU core; the "
            "rounding differs from the default layout's: docs/cli.md)",
        ),
        "stop_on_nan": Field(
            "bool", True, "stop with an error on NaN/infinite embeddings or loss (false: skip that step and go on)"
        ),
    },
    "loss": {
        "name": Field(
            "str",
            "rsk",
            "a preset (rsk, contrastive, multi_similarity, triplet, proxy_anchor, fastap: pml-recallk benchmark "
            "--list) or a loss class of PML by name (ArcFaceLoss); the other keys are its keyword arguments",
        ),
    },
    "miner": {
        "name": Field(
            "str",
            "",
            'a miner class of PML by name (MultiSimilarityMiner; "" = none); the other keys are its arguments',
        ),
    },
    "mixup": {
        "enabled": Field("bool", False, "wrap the loss in SimilarityMixup (SiMix; needs a dot-product loss)"),
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
    {
        "data.root", "data.glyphs_cache_dir", "data.han_font_dir", "data.num_workers", "data.check_images",
        "train.device", "train.channels_last", "eval.batch_size",
    }
)  # fmt: skip
# A resumed run may also train longer (never shorter than what it has run).
RESUMABLE_KEYS = RUNTIME_KEYS | {"train.epochs"}
for _key, (_kind, _default, _help) in data_fields().items():
    SCHEMA["data"][_key] = Field(_kind, _default, _help)


# ------------------------------------------------------------------------------------------------- legacy

# Keys renamed since 0.1: old name → (new name, how an old value translates).
_RENAMED = {"train.amp": ("train.mixed_precision", lambda v: {False: "off", True: "auto"}.get(v, v))}
_OLD_MIXUP_MODES = {"official": "queries_and_database", "database": "database_only"}
# Before [loss] held a class's arguments, it held RS@k's keys whatever loss.name said (ignored by other losses).
_OLD_RSK_KEYS = ("k_values", "rank_temperature", "k_temperature", "k_margin", "count_query_in_rank", "query_chunk_size")


def upgrade_tables(tables: Mapping[str, Any], source: str, saved: bool = False) -> dict[str, Any]:
    """The one place of every old spelling: ``tables`` (a file, an override, a saved config) in this release's keys.

    * ``train.amp`` → ``train.mixed_precision`` (true → auto, false → off);
    * ``mixup.mode`` ``official`` → ``queries_and_database``, ``database`` → ``database_only``;
    * a saved config (``saved``): RS@k's keys under another ``loss.name`` (ignored then) are dropped, and a config
      without ``[miner]`` gets its loss preset's miner.

    A file or override with an old spelling gets a DeprecationWarning naming ``source``.
    """
    result = {table: dict(values) if isinstance(values, Mapping) else values for table, values in tables.items()}
    for old, (new, translate) in _RENAMED.items():
        table, _, name = old.partition(".")
        if isinstance(result.get(table), Mapping) and name in result[table]:
            if not saved:
                warnings.warn(f"{source}: {old} is now {new}", DeprecationWarning, stacklevel=3)
            new_table, _, new_name = new.partition(".")
            result.setdefault(new_table, {})[new_name] = translate(result[table].pop(name))
    mixup = result.get("mixup")
    if isinstance(mixup, Mapping) and mixup.get("mode") in _OLD_MIXUP_MODES:
        new_mode = _OLD_MIXUP_MODES[mixup["mode"]]
        if not saved:
            warnings.warn(f"{source}: mixup.mode {mixup['mode']!r} is now {new_mode!r}", DeprecationWarning, 3)
        mixup["mode"] = new_mode
    loss = result.get("loss")
    if saved and isinstance(loss, Mapping):
        name = loss.get("name", "rsk")
        if name not in ("rsk", "RecallKSurrogateLoss"):
            result["loss"] = {k: v for k, v in loss.items() if k not in _OLD_RSK_KEYS}
        if "miner" not in result and name in LOSSES:
            result["miner"] = _named_table("miner", LOSSES[name].miner.get("name", ""), LOSSES[name].miner)
    return result


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
    config = {table: {key: copy.deepcopy(f.default) for key, f in fields.items()} for table, fields in SCHEMA.items()}
    config["loss"] = _named_table("loss", config["loss"]["name"])
    return config


def _with_presets(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``config`` with an empty ``eval.k_values`` replaced by the data set's ``recall_k_values``."""
    dataset = config["data"]["dataset"]
    if not config["eval"]["k_values"] and dataset in DATASETS:
        config["eval"]["k_values"] = list(dataset_class(dataset).recall_k_values)
    return config


def upgrade_config(config: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A saved config (a checkpoint's, a result's) in this release's keys (:func:`upgrade_tables`), new keys at
    their default; a named table (``[loss]``, ``[miner]``) is its preset with the saved keys over it."""
    result = _schema_defaults()
    result["eval"]["k_values"] = [1, 2, 4, 8]  # before presets existed every saved config had its own
    upgraded = upgrade_tables(config, "the saved config", saved=True)
    for table, values in upgraded.items():
        if table in NAMED_TABLES:
            name = values.get("name", SCHEMA[table]["name"].default)
            result[table] = {**_named_table(table, name), **copy.deepcopy(dict(values))}
            continue
        for name, value in values.items():
            result.setdefault(table, {})[name] = copy.deepcopy(value)
    return result


def _named_table(table: str, name: str, preset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A fresh ``[loss]``/``[miner]`` table for ``name``: its preset's (or class's) TOML-writable arguments."""
    if table == "miner" and not name:
        return {"name": ""}
    try:
        entry = loss_entry(name) if table == "loss" else miner_entry(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    arguments = dict(entry.arguments) if preset is None else {k: v for k, v in preset.items() if k != "name"}
    writable = {k: copy.deepcopy(v) for k, v in arguments.items() if _is_toml_value(v)}
    return {"name": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in writable.items()}}


def _is_toml_value(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)):
        return not isinstance(value, float) or math.isfinite(value)
    return isinstance(value, (list, tuple)) and all(_is_toml_value(v) for v in value)


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

    if kind == "any":
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return value
    if kind == "list":
        if not isinstance(value, list):
            raise bad("a list")
        return value
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
    update = upgrade_tables(update, source)
    for table, values in update.items():
        if table in NAMED_TABLES:
            _merge_named(merged, table, values, source)
            continue
        for name, value in values.items():
            key = f"{table}.{name}"
            field = SCHEMA[table].get(name)
            if field is None:
                raise ConfigError(f"{source}: " + _unknown_dotted_key_message(key))
            merged[table][name] = _check_type(key, value, field.kind, source)
    return merged


def _merge_named(merged: dict[str, dict[str, Any]], table: str, values: Mapping[str, Any], source: str) -> None:
    """Lay ``values`` over ``[loss]`` or ``[miner]``: a new ``name`` first (a fresh table from its preset; a new
    loss also resets the miner to its preset's), then each key checked against that class's arguments."""
    current = merged.setdefault(table, {"name": SCHEMA[table]["name"].default})
    if "name" in values:
        name = _check_type(f"{table}.name", values["name"], "str", source)
        if name != current.get("name"):
            try:
                merged[table] = _named_table(table, name)
            except ConfigError as error:
                raise ConfigError(f"{source}: {error}") from None
            if table == "loss":
                miner = loss_entry(name).miner
                merged["miner"] = _named_table("miner", miner.get("name", ""), miner)
    name = merged[table]["name"]
    for key, value in values.items():
        if key == "name":
            continue
        entry = (loss_entry(name) if table == "loss" else miner_entry(name)) if name else None
        if entry is None:
            raise ConfigError(f"{source}: {table}.{key} needs a {table}: set {table}.name (e.g. MultiSimilarityMiner)")
        preset = table == "loss" and name in LOSSES and entry.loss_class is not None
        owner = f"{name} ({entry.loss_class.__name__})" if preset else name
        try:
            check_arguments({key: value}, entry.accepted(), table, owner)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        merged[table][key] = _check_type(f"{table}.{key}", value, entry.kind(key), source)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file (a missing, unreadable, non-UTF-8 or malformed file is a ConfigError naming it)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give a .toml file (e.g. RUN/config.toml)")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror or error}") from None


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
    if key not in _RENAMED and key.partition(".")[0] not in NAMED_TABLES:
        _field(key)  # unknown keys fail here, before the value is looked at (a named table's: when merged)
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
    # A loss's or miner's name first: its arguments are checked against that class, whichever order they come in.
    overrides = sorted(overrides, key=lambda text: text.partition("=")[0].strip() not in ("loss.name", "miner.name"))
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
            if table in NAMED_TABLES:
                continue
            if field.choices is not None and value not in field.choices:
                raise ConfigError(f"{key} must be one of {', '.join(field.choices)}; got {value!r}")
            if field.minimum is not None and value < field.minimum:
                raise ConfigError(f"{key} must be at least {field.minimum:g}, got {value!r}")
    _validate_data(config["data"])
    _validate_model(config)
    _validate_loss(config)
    _validate_train(config["train"])
    _validate_schedule(config)
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
    needs_root = dataset_class(data["dataset"]).needs_root
    if needs_root and not data["root"]:
        raise ConfigError(f"the {data['dataset']} dataset needs its data: pass --data-root PATH")
    if not needs_root and data["root"]:
        raise ConfigError(
            f"data.root (--data-root) is {data['root']!r} but the {data['dataset']} dataset reads no data root; choose "
            "the data set it is for with --dataset (image_folder, csv, cub, ...)"
        )
    if data["channels"] not in (0, 1, 3):
        raise ConfigError(f"data.channels must be 0 (the data set's), 1 or 3, got {data['channels']}")
    if not data["test_splits"] or len(set(data["test_splits"])) != len(data["test_splits"]):
        raise ConfigError(f"data.test_splits must be a non-empty list of distinct names, got {data['test_splits']}")
    train_split = data["train_split"]
    if "train" in data["test_splits"]:
        raise ConfigError(
            f"data.test_splits {data['test_splits']} names the training part 'train': it is what the model is "
            "trained on (through the training augmentation); report test splits, or 'val' for the held-out classes"
        )
    if not data["train_on_test_split"] and (
        train_split in data["test_splits"] or train_split == "val" or train_split.startswith("test")
    ):
        raise ConfigError(
            f"data.train_split is {train_split!r}, a split that is evaluated: training on it leaks the test classes "
            "into training and inflates Recall@k. Train on 'train', or set data.train_on_test_split=true to do it "
            "on purpose"
        )
    if data["max_classes"] < 0 or data["max_classes"] == 1:
        raise ConfigError(
            f"data.max_classes must be 0 (every class) or at least 2 (a training and a validation class), "
            f"got {data['max_classes']}"
        )
    if data["split_seed"] < 0:
        raise ConfigError(f"data.split_seed must be at least 0, got {data['split_seed']}")
    mean, std = data["normalize_mean"], data["normalize_std"]
    if len(mean) != len(std) or len(mean) not in (0, 1, 3) or any(value <= 0 for value in std):
        raise ConfigError(
            f"data.normalize_mean {mean} and data.normalize_std {std} must both be empty (the default) or both hold "
            "one value per image channel (1 or 3), every std above 0"
        )
    scale = data["crop_scale"]
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {scale}")
    m, batch = data["samples_per_class"], data["batch_size"]
    if batch != 0 and (batch % m != 0 or batch < 2 * m):
        raise ConfigError(
            f"data.batch_size ({batch}) must be a multiple of data.samples_per_class ({m}) holding at least two classes"
        )


def _validate_model(config: Mapping[str, Mapping[str, Any]]) -> None:
    """The model's fixed input (a ViT's 224 px) must be the data's: refused here, before any folder is made."""
    entry = MODEL_ENTRIES[config["model"]["name"]]
    size = config["data"]["image_size"]
    if entry.input_size is not None and size != entry.input_size:
        raise ConfigError(
            f"model.name {config['model']['name']} takes {entry.input_size}-pixel images but data.image_size is "
            f"{size}; set data.image_size={entry.input_size} or choose small_cnn or resnet50 (any size)"
        )
    if entry.channels is not None and config["data"]["channels"] not in (0, entry.channels):
        raise ConfigError(
            f"model.name {config['model']['name']} takes {entry.channels}-channel images but data.channels is "
            f"{config['data']['channels']}; set data.channels=0 (images are converted to what the model takes)"
        )
    if entry.imagenet_inputs and config["data"]["normalize_mean"]:
        raise ConfigError(
            f"model.name {config['model']['name']} undoes ImageNet's normalisation itself (its weights expect [0, 1] "
            "pixels); leave data.normalize_mean and data.normalize_std empty"
        )


def _validate_loss(config: Mapping[str, Mapping[str, Any]]) -> None:
    loss, mixup, memory = config["loss"], config["mixup"], config["memory"]
    if loss["name"] in ("rsk", "RecallKSurrogateLoss"):
        _validate_rsk(loss)
    alpha = mixup["alpha_range"]
    if len(alpha) != 2 or not 0.0 <= alpha[0] <= alpha[1] <= 1.0:
        raise ConfigError(f"mixup.alpha_range must be [low, high] with 0 <= low <= high <= 1, got {alpha}")
    if memory["enabled"] and memory["size"] < 1:
        raise ConfigError("memory.size must be set (at least the batch size) when memory.enabled is true")
    batch = config["data"]["batch_size"]
    if memory["enabled"] and batch and memory["size"] < batch:
        raise ConfigError(
            f"memory.size ({memory['size']}) is smaller than data.batch_size ({batch}): every step enqueues a whole "
            f"batch; set memory.size to at least {batch}"
        )
    _try_building_the_loss(config)


def _validate_schedule(config: Mapping[str, Mapping[str, Any]]) -> None:
    if config["train"]["rank_temperature_end"] and config["loss"]["name"] not in ("rsk", "RecallKSurrogateLoss"):
        raise ConfigError(
            f"train.rank_temperature_end anneals RS@k's rank temperature, but loss.name is {config['loss']['name']!r}; "
            'set it to 0 or use loss.name = "rsk"'
        )


def _validate_rsk(loss: Mapping[str, Any]) -> None:
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


def _try_building_the_loss(config: Mapping[str, Mapping[str, Any]]) -> None:
    """Build the loss, miner and SiMix wrapper once (two placeholder classes), so that a value the class refuses,
    or SiMix over a loss whose distance is not a dot product, fails here, not after the run folder is made."""
    import torch

    from .. import losses as losses_module

    with torch.random.fork_rng(devices=[]):  # a proxy loss draws its initial proxies: leave the run's seed alone
        try:
            loss, _ = build_loss_and_miner(config, 2)
        except (TypeError, ValueError, AssertionError) as error:
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"loss.name={config['loss']['name']} / [loss] / [miner]: {text}") from None
        if config["mixup"]["enabled"]:
            try:
                losses_module.SimilarityMixup(loss, mode=config["mixup"]["mode"])
            except (TypeError, ValueError) as error:
                raise ConfigError(
                    f"mixup.enabled=true: {str(error).splitlines()[0]} SiMix mixes similarities as dot products of "
                    "L2-normalised embeddings: choose a loss on them (rsk, multi_similarity, or a class with "
                    "distance=DotProductSimilarity) or set mixup.enabled=false"
                ) from None


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
    keys = [(table, key) for table in SCHEMA for key in SCHEMA[table]]
    for table in NAMED_TABLES:  # the arguments of the named loss and miner, from either side
        extra = dict.fromkeys([*a.get(table, {}), *b.get(table, {})])
        keys += [(table, key) for key in extra if key not in SCHEMA[table]]
    return [
        f"{table}.{key}: {a.get(table, {}).get(key)!r} != {b.get(table, {}).get(key)!r}"
        for table, key in keys
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
        keys = list(fields) + [k for k in config.get(table, {}) if table in NAMED_TABLES and k not in fields]
        for key in keys:
            if key in config.get(table, {}):
                line = f"{key} = {_toml_value(config[table][key])}"
                if comments:
                    line = f"{line:<40} # {fields[key].help if key in fields else 'keyword argument of the class'}"
                lines.append(line)
    return "\n".join(lines) + "\n"

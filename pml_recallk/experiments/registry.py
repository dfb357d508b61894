"""The names an experiment config chooses from: data sets, models, losses and miners, one list of each.

* :data:`DATASETS`: config name → class name in :mod:`pml_recallk.datasets` (the library's list). Each class is a
  :class:`~pml_recallk.datasets.ConfigurableDataset`: it says its splits, Recall@k preset, channels, whether it
  needs ``data.root``, its own ``[data]`` keys (:func:`data_fields`) and how it is built from the ``[data]`` table.
* :data:`MODELS`: ``model.name`` → :class:`ModelEntry` (the ``[model]`` keys it reads, its fixed input size and
  channels, if any).
* :data:`LOSSES`: named presets (``loss.name = "multi_similarity"``): a loss class with its paper's keyword
  arguments (and miner), each written once, here, with its source. Any other loss of PML (or
  ``RecallKSurrogateLoss``) is chosen by its class name; its keyword arguments are the ``[loss]`` keys, checked
  against its signature (:func:`loss_entry`). Miners likewise: ``miner.name`` is a PML miner class, its keyword
  arguments the ``[miner]`` keys.

Arguments a loss needs from the run, ``num_classes`` (the training classes) and ``embedding_size``
(``model.embedding_size``), are passed by name to any class whose signature has them, so ProxyAnchor, ArcFace,
SoftTriple, NormalizedSoftmax, ... need no special case.

Example:
    >>> from pml_recallk.experiments.registry import LOSSES, loss_entry
    >>> "multi_similarity" in LOSSES, loss_entry("ArcFaceLoss").arguments["margin"]
    (True, 28.6)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from .. import losses as own_losses
from ..datasets import DATASET_CLASSES, dataset_class
from ..models.registry import MODEL_NAMES

__all__ = [
    "AUTO_ARGUMENTS",
    "DATASETS",
    "LOSSES",
    "MODELS",
    "MODEL_NAMES",
    "LossEntry",
    "MinerEntry",
    "ModelEntry",
    "build_loss_and_miner",
    "data_fields",
    "dataset_class",
    "loss_entry",
    "miner_entry",
    "register_loss",
]

# The one list of data sets is the library's (pml_recallk.datasets.DATASET_CLASSES): name → class.
DATASETS = DATASET_CLASSES


def data_fields() -> dict[str, tuple[str, Any, str]]:
    """The ``[data]`` keys the data sets declare beyond the shared ones (``config_fields``), ``{key: (kind,
    default, help)}``; a key two data sets share must mean the same to both."""
    fields: dict[str, tuple[str, Any, str]] = {}
    for name in DATASETS:
        for key, spec in dataset_class(name).config_fields.items():
            if key in fields and fields[key][:2] != spec[:2]:
                raise TypeError(f"data set {name} declares data.{key} as {spec[:2]}, another as {fields[key][:2]}")
            fields.setdefault(key, spec)
    return fields


# ------------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelEntry:
    """One ``model.name``.

    Attributes:
        arguments: the ``[model]`` keys passed to :func:`pml_recallk.models.build_model` besides
            ``embedding_size`` (as keyword arguments of the same name).
        input_size: the one image size the network takes (a ViT's patch grid), or None for any.
        channels: the one channel count it takes (3 for ImageNet backbones), or None: the data's.
        train_arguments: ``[train]`` keys it also takes (the ResNet's ``freeze_batchnorm``).
        imagenet_inputs: the network undoes the default ImageNet normalisation itself (MobileNetV2's weights
            expect [0, 1] pixels), so ``data.normalize_mean``/``normalize_std`` must stay the default.
    """

    arguments: tuple[str, ...]
    input_size: int | None = None
    channels: int | None = None
    train_arguments: tuple[str, ...] = ()
    imagenet_inputs: bool = False


MODELS: dict[str, ModelEntry] = {
    "small_cnn": ModelEntry(("width", "norm")),
    "resnet50": ModelEntry(("pretrained_path",), channels=3, train_arguments=("freeze_batchnorm",)),
    "vit_b16": ModelEntry(("pretrained_path",), input_size=224, channels=3),
    "vit_b32": ModelEntry(("pretrained_path",), input_size=224, channels=3),
    **{
        name: ModelEntry(("pretrained_path",), channels=3, train_arguments=("freeze_batchnorm",), imagenet_inputs=True)
        for name in ("mobilenet_v2", "mobilenet_v2_block13", "mobilenet_v2_block10")
    },
}
if set(MODELS) != set(MODEL_NAMES):  # pragma: no cover - a model added to the library but not here
    raise ImportError(f"registry.MODELS {sorted(MODELS)} must list the models of pml_recallk.models {MODEL_NAMES}")


# ----------------------------------------------------------------------------------------- losses, miners

LossAndMiner = tuple[Any, Any]  # what a registry entry builds: (the loss module, its miner module or None)

AUTO_ARGUMENTS = ("num_classes", "embedding_size")
"""Constructor arguments filled from the run, never from ``[loss]``: the training classes, model.embedding_size."""

# Constructor arguments that take Python objects (a distance, a reducer, ...), which a TOML value cannot be.
_OBJECT_ARGUMENTS = frozenset(
    {"distance", "reducer", "embedding_regularizer", "weight_regularizer", "weight_init_func", "loss", "miner"}
)


def _keyword_arguments(cls: type) -> dict[str, Any]:
    """``{name: default}`` of every keyword argument of ``cls`` and the base classes its ``**kwargs`` reach
    (``inspect.Parameter.empty`` for a required one)."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in parameters:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                found.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return found


def _kind_of(default: Any) -> str:
    """The config kind a keyword argument takes, from its default: ``any`` where the default says nothing."""
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (int, float)):
        return "number"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)):
        return "list"
    return "any"


@dataclass(frozen=True)
class MinerEntry:
    """A PML miner class chosen by ``miner.name``; ``arguments`` are its keyword arguments and defaults."""

    cls: type
    arguments: Mapping[str, Any]

    def accepted(self) -> dict[str, Any]:
        """``{key: default}`` of every ``[miner]`` key this miner takes (besides ``name``)."""
        return dict(self.arguments)

    def kind(self, key: str) -> str:
        return _kind_of(self.arguments.get(key))

    def build(self, table: Mapping[str, Any]) -> Any:
        return self.cls(**{k: _to_python(v) for k, v in table.items() if k != "name"})


@dataclass(frozen=True)
class LossEntry:
    """One loss: a registered preset (:data:`LOSSES`), or a loss class chosen by name (:func:`loss_entry`).

    Attributes:
        build: ``build(config, num_classes) -> (loss, miner or None)``, called after seeding, so that a loss with
            parameters (proxies) is initialised from the run's seed; ``num_classes`` counts the training classes.
            A preset's build reads the config's ``[loss]`` and ``[miner]`` tables when ``loss.name`` is the preset,
            and uses its own settings otherwise.
        settings: the hyper-parameters in words, with their source (shown in reports and ``--list``).
        loss_lr_factor: a loss with parameters gets its own Adam at ``train.lr`` times this (PML's
            ``metric_loss_optimizer``).
        arguments: the ``[loss]`` keys it takes with their values: the preset's settings, or the class's defaults.
        loss_class: the class the keys are checked against (None: only ``arguments`` are keys).
        miner: ``{"name": <PML miner class>, <its keyword arguments>...}`` the preset uses, or ``{}`` for none.
        kinds: the config kind of arguments whose default does not say it (``"float|list[float]"``).
    """

    build: Callable[[Mapping[str, Any], int], LossAndMiner]
    settings: str
    loss_lr_factor: float = 1.0
    arguments: Mapping[str, Any] = field(default_factory=dict)
    loss_class: type | None = None
    miner: Mapping[str, Any] = field(default_factory=dict)
    kinds: Mapping[str, str] = field(default_factory=dict)

    def accepted(self) -> dict[str, Any]:
        """``{key: default}`` of every ``[loss]`` key this loss takes (besides ``name``)."""
        keys = dict(self.arguments)
        if self.loss_class is not None:
            for name, default in _keyword_arguments(self.loss_class).items():
                if name not in AUTO_ARGUMENTS:
                    keys.setdefault(name, default)
        return keys

    def kind(self, key: str) -> str:
        return self.kinds.get(key) or _kind_of(self.accepted().get(key))


def _to_python(value: Any) -> Any:
    """A TOML value as a constructor argument: lists become tuples (k values, temperatures, ranges)."""
    return tuple(value) if isinstance(value, list) else value


def _construct(cls: type, table: Mapping[str, Any], config: Mapping[str, Any], num_classes: int, convert=None) -> Any:
    """``cls(**auto, **table)``: ``num_classes`` and ``embedding_size`` where its signature has them."""
    accepted = _keyword_arguments(cls)
    auto = {"num_classes": num_classes, "embedding_size": config["model"]["embedding_size"]}
    kwargs = {name: value for name, value in auto.items() if name in accepted}
    for key, value in table.items():
        if key != "name":
            kwargs[key] = convert(key, value) if convert else _to_python(value)
    return cls(**kwargs)


def _miner_of(config: Mapping[str, Any], preset_miner: Mapping[str, Any], own: bool) -> Any:
    table = config.get("miner", {}) if own else preset_miner
    if not table or not table.get("name"):
        return None
    return miner_entry(table["name"]).build(table)


def _class_entry(
    name: str, cls: type, settings: str = "", preset: Mapping[str, Any] | None = None, **entry
) -> LossEntry:
    """A loss class, with the keyword arguments ``preset`` (a named preset) or its defaults (chosen by class)."""
    preset_miner = entry.pop("miner", {})
    convert = entry.pop("convert", None)

    def build(config: Mapping[str, Any], num_classes: int) -> LossAndMiner:
        own = config["loss"].get("name") == name
        table = config["loss"] if own else {"name": name, **(preset or {})}
        return _construct(cls, table, config, num_classes, convert), _miner_of(config, preset_miner, own)

    if preset is None:
        arguments = {k: v for k, v in _keyword_arguments(cls).items() if k not in AUTO_ARGUMENTS}
        arguments = {k: v for k, v in arguments.items() if v is not inspect.Parameter.empty}
        settings = settings or f"{cls.__name__} with the config's [loss] keys (defaults: PML's)"
    else:
        arguments = dict(preset)
    return LossEntry(build, settings, arguments=arguments, loss_class=cls, miner=preset_miner, **entry)


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items() if key != "name")


def _pml_preset(
    name: str, loss: str, kwargs: dict[str, Any], note: str, miner: dict | None = None, **entry
) -> LossEntry:
    """A PML loss (and miner) with its paper's keyword arguments; its settings text is made from them."""
    text = f"{loss}({_kwargs_text(kwargs)})"
    if miner:
        text += f" + {miner['name']}({_kwargs_text(miner)})"
    return _class_entry(name, getattr(pml_losses, loss), f"{text}: {note}", kwargs, miner=miner or {}, **entry)


def _rsk_value(key: str, value: Any) -> Any:
    """RS@k's config spellings: 0 means "not set" (None) for the chunk and tile sizes; lists become tuples."""
    if key in ("query_chunk_size", "tile_size"):
        return value or None
    return _to_python(value)


RSK_ARGUMENTS = {
    "k_values": [1, 2, 4, 8, 16],
    "rank_temperature": 0.01,
    "k_temperature": 1.0,
    "k_margin": 0.0,
    "count_query_in_rank": False,
    "query_chunk_size": 0,
    "path": "auto",
    "tile_size": 0,
    "calibration_weight": 0.0,
    "calibration_margins": [0.9, 0.6],
}
"""RS@k's ``[loss]`` keys with the paper's values (``query_chunk_size`` and ``tile_size`` 0: not set)."""

# PML 2.9's SmoothAPLoss is left out: it groups positives by position (contiguous blocks of batch/classes), not by
# label, which is wrong for MPerClassSampler batches of m = 4 unless there are exactly 4 classes per batch
# (tests/benchmark/test_losses.py checks that this is still so).
LOSSES: dict[str, LossEntry] = {
    "rsk": _class_entry(
        "rsk",
        own_losses.RecallKSurrogateLoss,
        "RecallKSurrogateLoss with the config's [loss] table (defaults: the paper's k = (1, 2, 4, 8, 16), "
        "τ_rank = 0.01, τ_k = 1; the query excluded from its own rank, docs/method.md §2)",
        RSK_ARGUMENTS,
        convert=_rsk_value,
        kinds={
            "k_values": "list[int]",
            "k_temperature": "float|list[float]",
            "query_chunk_size": "int",
            "tile_size": "int",
            "rank_temperature": "float",
            "k_margin": "float",
            "calibration_weight": "float",
            "calibration_margins": "list[float]",
        },  # fmt: skip
    ),
    "contrastive": _pml_preset(
        "contrastive",
        "ContrastiveLoss",
        {"pos_margin": 0.0, "neg_margin": 1.0},
        "Euclidean distance of L2-normalised embeddings (PML's defaults), all pairs of the batch",
    ),
    "multi_similarity": _pml_preset(
        "multi_similarity",
        "MultiSimilarityLoss",
        {"alpha": 2.0, "beta": 50.0, "base": 0.5},
        "cosine similarity; α, β, λ and the miner's ε as the MS paper recommends (Wang et al., CVPR 2019)",
        miner={"name": "MultiSimilarityMiner", "epsilon": 0.1},
    ),
    "triplet": _pml_preset(
        "triplet",
        "TripletMarginLoss",
        {"margin": 0.1},
        "Euclidean distance of L2-normalised embeddings; one margin for loss and miner, so that every mined "
        "triplet is penalised (between PML's loss default 0.05 and miner default 0.2)",
        miner={"name": "TripletMarginMiner", "margin": 0.1, "type_of_triplets": "semihard"},
    ),
    "proxy_anchor": _pml_preset(
        "proxy_anchor",
        "ProxyAnchorLoss",
        {"margin": 0.1, "alpha": 32.0},
        "the paper's margin and α (Kim et al., CVPR 2020; PML's defaults), one proxy per training class, the "
        "proxies trained by their own Adam at 100 × the network's learning rate (the paper's)",
        loss_lr_factor=100.0,
    ),
    "fastap": _pml_preset(
        "fastap",
        "FastAPLoss",
        {"num_bins": 10},
        "squared Euclidean distance of L2-normalised embeddings, the paper's 10 bins (Cakir et al., CVPR 2019)",
    ),
}


def _loss_classes() -> dict[str, type]:
    """Loss classes a config may name: PML's and this package's (wrappers, which take a loss, excluded)."""
    found = {}
    for module in (pml_losses, own_losses):
        for name in dir(module):
            value = getattr(module, name, None)
            if isinstance(value, type) and name.endswith("Loss") and "loss" not in _keyword_arguments(value):
                found[name] = value
    return found


def loss_entry(name: str) -> LossEntry:
    """The :class:`LossEntry` of ``loss.name``: a preset of :data:`LOSSES`, else a loss class by its name
    (``"ArcFaceLoss"``, ``"RecallKSurrogateLoss"``), whose keys are its keyword arguments.

    Raises:
        ValueError: no such preset or class (the message suggests close names).
    """
    if name in LOSSES:
        return LOSSES[name]
    classes = _loss_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, [*LOSSES, *classes], n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown loss {name!r}{hint} (loss.name: a preset, {', '.join(LOSSES)}; or a loss class of "
            f"pytorch_metric_learning.losses by its name)"
        )
    cls = classes[name]
    if cls is own_losses.RecallKSurrogateLoss:
        return _class_entry(name, cls, LOSSES["rsk"].settings, RSK_ARGUMENTS, convert=_rsk_value,
                            kinds=LOSSES["rsk"].kinds)  # fmt: skip
    return _class_entry(name, cls)


def miner_entry(name: str) -> MinerEntry:
    """The PML miner class ``miner.name`` names, with its keyword arguments (ValueError with close names)."""
    classes = {n: getattr(pml_miners, n) for n in dir(pml_miners) if n.endswith("Miner") and n != "BaseMiner"}
    classes = {n: c for n, c in classes.items() if isinstance(c, type)}
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown miner {name!r}{hint} (miner.name: a miner class of pytorch_metric_learning.miners)")
    arguments = {k: v for k, v in _keyword_arguments(classes[name]).items() if v is not inspect.Parameter.empty}
    return MinerEntry(classes[name], arguments)


def check_arguments(table: Mapping[str, Any], accepted: Mapping[str, Any], what: str, owner: str) -> None:
    """Raise ValueError for a key of ``table`` that ``accepted`` lacks (with close matches) or that takes a Python
    object."""
    for key in table:
        if key == "name":
            continue
        if key in AUTO_ARGUMENTS:
            raise ValueError(f"{what}.{key} is set by the run (the training classes, model.embedding_size); remove it")
        if key not in accepted:
            close = difflib.get_close_matches(key, [k for k in accepted if k not in _OBJECT_ARGUMENTS], n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(f'{what}.{c}' for c in close)}?" if close else ""
            raise ValueError(f"unknown config key '{what}.{key}': {owner} takes no {key!r}{hint}")
        if key in _OBJECT_ARGUMENTS:
            raise ValueError(f"{what}.{key} takes a Python object, which a config cannot give; build {owner} in Python")


def build_loss_and_miner(config: Mapping[str, Any], num_classes: int) -> LossAndMiner:
    """``(loss, miner or None)`` of the config's ``[loss]`` and ``[miner]`` tables (no wrappers).

    Raises:
        ValueError, TypeError: an unknown name or key, or a value the class refuses.
    """
    return loss_entry(config["loss"]["name"]).build(config, num_classes)


def register_loss(name: str, entry: LossEntry, overwrite: bool = False) -> None:
    """Add a loss to :data:`LOSSES`, so that configs (``loss.name``) and sweeps can name it.

    Example:
        >>> from pytorch_metric_learning import losses
        >>> register_loss("circle", LossEntry(lambda config, classes: (losses.CircleLoss(), None), "CircleLoss()"))
        >>> "circle" in LOSSES
        True
        >>> del LOSSES["circle"]
    """
    if not isinstance(entry, LossEntry):
        raise TypeError(f"entry must be a LossEntry, got {type(entry).__name__}")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"loss name must be a Python identifier, got {name!r}")
    if name in LOSSES and not overwrite:
        raise ValueError(f"a loss named {name!r} is already registered; pass overwrite=True to replace it")
    LOSSES[name] = entry

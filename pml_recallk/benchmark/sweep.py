"""What a benchmark runs: arms × seeds on one base experiment config, read from a sweep file.

An **arm** is a name, a base loss (``loss.name``: a key of :data:`~pml_recallk.experiments.registry.LOSSES`) and
config overrides (any experiment key: ``data.batch_size``, ``train.epochs``, ``train.lr``, ``train.chunk_size``,
``mixup.*``, ``memory.*``, ``model.init_checkpoint``, ...). ``equal_steps = "<arm>"`` gives an arm the steps per
epoch of another (a larger batch with as many steps as the smaller one takes). The **floors** evaluate without
training: ``untrained`` (the network as each seed initialises it) and ``pretrained`` (the base config's
``model.init_checkpoint``).

A sweep file is a ``[sweep]`` table, the experiment tables of the base config, and one ``[arms.<name>]`` table per
arm whose sub-tables are that arm's overrides::

    [sweep]
    name = "han_scratch"
    seeds = [0, 1, 2]
    floors = ["untrained"]

    [data]
    dataset = "han_glyphs"

    [arms.rsk_b256]
    loss = "rsk"
    [arms.rsk_b256.data]
    batch_size = 256

    [arms.rsk_b4096_equal_steps]
    loss = "rsk"
    equal_steps = "rsk_b256"
    [arms.rsk_b4096_equal_steps.data]
    batch_size = 4096
    [arms.rsk_b4096_equal_steps.train]
    chunk_size = 256

Example:
    >>> from pml_recallk.experiments import resolve_config
    >>> sweep = Sweep(resolve_config(), arms=[Arm("rsk_b64", "rsk", {"data": {"batch_size": 64}})], seeds=[0])
    >>> sweep.arm_config(sweep.arms[0], seed=0)["data"]["batch_size"]
    64
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..experiments.config import (
    SCHEMA,
    ConfigError,
    dumps_toml,
    load_toml,
    merge_config,
    resolve_config,
    validate_config,
)
from ..experiments.registry import LOSSES, loss_entry

__all__ = ["FLOORS", "PRETRAINED", "UNTRAINED", "Arm", "Sweep", "load_sweep", "sweep_toml"]

UNTRAINED = "untrained"
PRETRAINED = "pretrained"
FLOORS = (UNTRAINED, PRETRAINED)
_ARM_KEYS = {"loss", "equal_steps"}
_SWEEP_KEYS = {"name", "seeds", "floors", "budget_images", "losses", "batch_size", "output_dir", "base_config"}
# The first runner's loss configurations that were arms in all but name (deprecated).
_OLD_NAMES = {
    "rsk_large": 'loss = "rsk" with [data] batch_size = large_batch_size and [train] chunk_size = chunk_size',
    "rsk_simix": 'loss = "rsk" with [mixup] enabled = true',
}


@dataclass
class Arm:
    """One configuration of a sweep: ``loss`` with ``overrides`` (``{table: {key: value}}``) on the base config.

    ``equal_steps`` names the arm whose steps per epoch this one takes ("" for none).
    """

    name: str
    loss: str = "rsk"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    equal_steps: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name in FLOORS:
            raise ConfigError(f"arm name must be a Python identifier other than {FLOORS}, got {self.name!r}")
        try:
            loss_entry(self.loss)  # a preset of LOSSES, or a loss class by name (ArcFaceLoss)
        except ValueError as error:
            raise ConfigError(f"arm {self.name}: {error}") from None
        for table, values in self.overrides.items():
            if table not in SCHEMA or not isinstance(values, Mapping):
                raise ConfigError(f"arm {self.name}: [arms.{self.name}.{table}] must be a table of config keys")


@dataclass
class Sweep:
    """Arms × seeds on the data and model of ``config`` (a resolved experiment config).

    Attributes:
        config: the base config of every arm.
        arms: the configurations to train.
        seeds: one run per arm per seed (``train.seed``: initialisation, sampling, augmentation, SiMix draws).
        floors: evaluate-only rows: ``"untrained"``, ``"pretrained"`` (needs ``model.init_checkpoint``).
        budget_images: if > 0, every arm that sets neither ``train.iterations_per_epoch`` nor ``equal_steps``
            takes ``round(budget / (epochs × batch))`` steps per epoch (at least 1): the same images seen.
        name: shown in the report.
        losses: shorthand: one arm per loss, named after it, with ``batch_size`` as its ``data.batch_size`` (0:
            the base config's). The first runner's names ``rsk_large`` (at ``large_batch_size``, 0: every class,
            in chunks of ``chunk_size``) and ``rsk_simix`` still work this release, with a DeprecationWarning.
        references: arms that are not run but that ``equal_steps`` may name (a subset of a sweep file's arms
            keeps the arms its equal-steps arms refer to).
    """

    config: dict[str, dict[str, Any]]
    arms: list[Arm] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    floors: list[str] = field(default_factory=lambda: [UNTRAINED])
    budget_images: int = 0
    name: str = "benchmark"
    references: list[Arm] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    batch_size: int = 0
    large_batch_size: int = 0
    chunk_size: int = 0

    def __post_init__(self) -> None:
        self.arms = list(self.arms) + [self._shorthand_arm(loss) for loss in self.losses if loss not in self.names]
        self.losses = []
        names = self.names
        if not names and not self.floors:
            raise ConfigError("a sweep needs at least one arm or floor")
        if len(set(names)) != len(names):
            raise ConfigError(f"arm names must be distinct, got {names}")
        seeds_are_ints = isinstance(self.seeds, list) and all(type(s) is int and s >= 0 for s in self.seeds)
        if not seeds_are_ints or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of distinct non-negative integers, got {self.seeds}")
        unknown = [f for f in self.floors if f not in FLOORS]
        if unknown:
            raise ConfigError(f"unknown floor {unknown[0]!r}; floors are {', '.join(FLOORS)}")
        if PRETRAINED in self.floors and not self.config["model"]["init_checkpoint"]:
            raise ConfigError("the pretrained floor needs model.init_checkpoint in the sweep's base config")
        if type(self.budget_images) is not int or self.budget_images < 0:
            raise ConfigError(f"sweep.budget_images must be a non-negative integer, got {self.budget_images!r}")
        known = names + [reference.name for reference in self.references]
        for arm in self.arms:
            if arm.equal_steps and (arm.equal_steps not in known or self.arm(arm.equal_steps).equal_steps):
                raise ConfigError(f"arm {arm.name}: equal_steps must name another arm without equal_steps")
            self.arm_config(arm, self.seeds[0])  # every arm's config is checked before anything runs

    def _shorthand_arm(self, loss: str) -> Arm:
        for key in ("batch_size", "large_batch_size", "chunk_size"):
            if type(getattr(self, key)) is not int or getattr(self, key) < 0:
                raise ConfigError(f"sweep.{key} must be a non-negative integer, got {getattr(self, key)!r}")
        batch = {"data": {"batch_size": self.batch_size}} if self.batch_size else {}
        if loss not in _OLD_NAMES:
            return Arm(loss, loss, batch)
        warnings.warn(f"the loss configuration {loss!r} is now an arm: {_OLD_NAMES[loss]}", DeprecationWarning, 3)
        if loss == "rsk_simix":
            return Arm(loss, "rsk", {**batch, "mixup": {"enabled": True}})
        train = {"train": {"chunk_size": self.chunk_size}} if self.chunk_size else {}
        return Arm(loss, "rsk", {"data": {"batch_size": self.large_batch_size}, **train})

    @property
    def names(self) -> list[str]:
        return [arm.name for arm in self.arms]

    def arm(self, name: str) -> Arm:
        """The arm (or the reference arm) called ``name``."""
        for arm in self.arms + self.references:
            if arm.name == name:
                return arm
        raise KeyError(f"the sweep has no arm {name!r}")

    def arm_config(self, arm: Arm, seed: int) -> dict[str, dict[str, Any]]:
        """The validated experiment config of ``arm`` with ``seed`` (MAP@R on: the report shows it)."""
        config = merge_config(self.config, {"loss": {"name": arm.loss}}, source=f"arm {arm.name}")
        config = merge_config(config, arm.overrides, source=f"[arms.{arm.name}]")
        config = merge_config(config, {"train": {"seed": seed}, "eval": {"map_at_r": True}}, source="the sweep")
        validate_config(config)
        return config

    def floor_config(self, floor: str, seed: int) -> dict[str, dict[str, Any]]:
        """The config whose starting model a floor evaluates: no init checkpoint for ``untrained``."""
        update = {"train": {"seed": seed}, "eval": {"map_at_r": True}}
        if floor == UNTRAINED:
            update["model"] = {"init_checkpoint": ""}
        return merge_config(self.config, update, source=f"the {floor} floor")


def _arm_from_table(name: str, table: Any, source: str) -> Arm:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: [arms.{name}] must be a table with loss = ... and override tables")
    overrides = {key: dict(value) for key, value in table.items() if isinstance(value, Mapping)}
    keys = {key: value for key, value in table.items() if not isinstance(value, Mapping)}
    unknown = set(keys) - _ARM_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: unknown key arms.{name}.{sorted(unknown)[0]}; an arm takes loss, equal_steps and tables "
            "of config keys such as [arms.NAME.data]"
        )
    # The loss is named by `loss = "..."`, or, for an arm that also sets loss hyper-parameters (a [arms.NAME.loss]
    # table: TOML cannot hold both), by that table's `name` key.
    loss = keys.get("loss", overrides.get("loss", {}).get("name", "rsk"))
    return Arm(name, loss, overrides, keys.get("equal_steps", ""))


def _file_overrides(tables: Mapping[str, Any], source: str) -> list[str]:
    """A sweep file's experiment tables as ``--set`` overrides (over the data set's recipe and model variant)."""
    overrides = []
    for table, values in tables.items():
        if not isinstance(values, Mapping) or any(isinstance(v, Mapping) for v in values.values()):
            raise ConfigError(f"{source}: [{table}] must be a table of keys such as [train] with epochs = 6")
        # JSON writes strings, numbers, booleans and lists of them as TOML values.
        overrides += [f"{table}.{key}={json.dumps(value)}" for key, value in values.items()]
    return overrides


def load_sweep(
    path: str | Path | None = None, dataset: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Sweep, str | None]:
    """Read a sweep file; return the sweep and its ``sweep.output_dir`` (None if it has none).

    The file's experiment tables and ``overrides`` (``--set``) make the base config, over the data set's recipe and
    ``sweep.base_config`` (a config file, as ``pml-recallk train --config`` takes; a path from the working directory,
    like ``output_dir``), so that a sweep can run a shipped recipe as it is. Without a file: every loss of the
    registry as an arm, seeds 0–2, on the default glyph experiment.
    """
    source = str(path) if path is not None else "the default sweep"
    tables = dict(load_toml(path)) if path is not None else {}
    sweep_table = dict(tables.pop("sweep", {}))
    arm_tables = tables.pop("arms", {})
    unknown = set(sweep_table) - _SWEEP_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: unknown key sweep.{sorted(unknown)[0]}; [sweep] takes {', '.join(sorted(_SWEEP_KEYS))}"
        )
    if not isinstance(arm_tables, Mapping):
        raise ConfigError(f"{source}: [arms] must hold one table per arm, e.g. [arms.rsk_b256]")
    base_config = sweep_table.pop("base_config", None)
    if base_config is not None and (not isinstance(base_config, str) or not base_config):
        raise ConfigError(f"{source}: sweep.base_config must be the path of a config file, got {base_config!r}")
    config = resolve_config(dataset, base_config, [*_file_overrides(tables, source), *overrides])
    output_dir = sweep_table.pop("output_dir", None)
    arms = [_arm_from_table(name, table, source) for name, table in arm_tables.items()]
    if not arms and "losses" not in sweep_table:
        sweep_table["losses"] = list(LOSSES)
    try:
        return Sweep(config=config, arms=arms, **sweep_table), output_dir
    except TypeError as error:
        raise ConfigError(f"{source}: [sweep]: {error}") from None


def sweep_toml(sweep: Sweep) -> str:
    """The resolved sweep as a sweep file (``--sweep`` reads it back)."""
    lines = ["[sweep]", f"name = {json.dumps(sweep.name)}", f"seeds = {json.dumps(sweep.seeds)}"]
    lines += [f"floors = {json.dumps(sweep.floors)}", f"budget_images = {sweep.budget_images}", ""]
    lines.append(dumps_toml(sweep.config))
    for arm in sweep.arms:
        lines += [f"[arms.{arm.name}]", f"loss = {json.dumps(arm.loss)}"]
        if arm.equal_steps:
            lines.append(f"equal_steps = {json.dumps(arm.equal_steps)}")
        for table, values in arm.overrides.items():
            lines += [f"[arms.{arm.name}.{table}]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def arm_overrides_text(arm: Arm) -> str:
    """``data.batch_size=1024, train.chunk_size=256`` (for the report)."""
    pairs = [f"{table}.{key}={value!r}" for table, values in arm.overrides.items() for key, value in values.items()]
    if arm.equal_steps:
        pairs.append(f"steps per epoch of {arm.equal_steps}")
    return ", ".join(pairs) or "the base config"

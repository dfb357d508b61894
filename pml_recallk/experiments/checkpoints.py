"""What a run folder of ``pml-recallk train`` keeps to be resumed, in one place: its checkpoints, how they are
written and read back, and the lock that keeps two live processes out of one folder.

* :class:`RunCheckpoints` is the only code that knows the names ``checkpoints/``, ``last.pt`` and ``best.pt`` and
  what each file holds. ``last.pt`` (written after every epoch) holds everything a resumed run needs to go on as
  if it had not stopped: the epoch, the config, the model, optimiser, scheduler and loss states, the generator
  states and the history of the run. ``best.pt`` (written when validation improves) holds the epoch, the config,
  the model and its validation metrics. Each is a dict with ``"format": CHECKPOINT_FORMAT``. It saves from and
  restores into the run's own types: :class:`Parts` (built by :func:`~pml_recallk.experiments.builders.build_parts`)
  and :class:`History`.
* :func:`seed_everything` seeds every generator from ``(train.seed, epoch)`` at the start of each epoch: with the
  generator states ``last.pt`` holds, this is what makes a resumed run end bitwise equal to an uninterrupted one.
* :func:`output_dir_lock` holds ``<output>/.pml-recallk.lock`` for the life of a run (see :mod:`pml_recallk._io`).
* :func:`load_checkpoint` and :func:`load_init_weights` read a checkpoint for ``evaluate`` and for
  ``model.init_checkpoint``.

Files are written with :func:`pml_recallk._io.save_torch_atomic`: a crash or a full disk leaves the previous file.

Example:
    >>> import tempfile, torch
    >>> checkpoints = RunCheckpoints(tempfile.mkdtemp())
    >>> checkpoints.save_best(epoch=1, config={}, model=torch.nn.Linear(2, 2), val={"recall_at_1": 0.5})
    >>> checkpoints.best.name, load_checkpoint(checkpoints.best)["epoch"]
    ('best.pt', 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import DiskFullError, FolderLockedError, folder_lock, save_torch_atomic
from .config import ConfigError

__all__ = [
    "CHECKPOINT_FORMAT",
    "History",
    "Parts",
    "RunCheckpoints",
    "disk_full_is_one_line",
    "get_rng_state",
    "load_checkpoint",
    "load_init_weights",
    "output_dir_lock",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "pml-recallk-checkpoint-v1"
CHECKPOINTS_FOLDER, LAST, BEST = "checkpoints", "last.pt", "best.pt"
LOCK_FILE = ".pml-recallk.lock"
# What last.pt holds besides the format tag; a file without one of them cannot be resumed.
LAST_ENTRIES = ("epoch", "config", "model", "optimizers", "lr_scheduler", "loss", "rng", "history")
_RNG_ENTRIES = ("python", "numpy", "torch", "cuda")


@dataclass(frozen=True)
class Parts:
    """What trains and what ``last.pt`` saves of it: the model, the loss (and its miner, or None), the optimisers
    by PML's names (``trunk_optimizer``, ``metric_loss_optimizer`` for a loss with parameters) and the lr schedule
    (None without ``train.lr_milestones``)."""

    model: torch.nn.Module
    loss: torch.nn.Module
    miner: torch.nn.Module | None
    optimizers: dict[str, torch.optim.Optimizer]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None


@dataclass
class History:
    """What a run has recorded so far; ``last.pt`` keeps it (as a plain dict) so that a resumed run goes on with it.

    ``loss`` holds ``[iteration, loss]`` pairs, ``val`` one row of validation metrics per validated epoch,
    ``untrained`` the untrained model's metrics by test split and ``untrained_val`` on validation (empty on the ranks
    other than 0 of a torchrun job, which evaluate nothing); ``seconds`` is the run's wall time so far, every process
    that worked on it together, ``train_seconds`` that of the training steps; ``init_checkpoint`` says where the
    weights came from (``model.init_checkpoint``), ``warnings`` what the run must report (a collapse, a loss that
    cannot learn).
    """

    init_checkpoint: dict[str, Any] | None = None
    untrained: dict[str, dict[str, float]] = field(default_factory=dict)
    untrained_val: dict[str, float] = field(default_factory=dict)
    loss: list[list[float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    train_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, dicts and numbers: what ``torch.load(weights_only=True)`` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> History:
        """The history of :meth:`to_dict`; an entry an older ``last.pt`` lacks keeps its default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in saved.items() if name in names})


class RunCheckpoints:
    """The checkpoints of the run in ``output_dir``: ``<output_dir>/checkpoints/{last,best}.pt``."""

    def __init__(self, output_dir: str | Path):
        self.folder = Path(output_dir) / CHECKPOINTS_FOLDER

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def best(self) -> Path:
        return self.folder / BEST

    def prepare(self) -> None:
        """Make the folder and remove the temporary files a crash in the middle of an atomic write left."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink()

    def save_last(self, epoch: int, config: Mapping[str, Any], parts: Parts, history: History) -> None:
        """Write ``last.pt``: everything :meth:`restore` needs to go on after ``epoch``."""
        scheduler = parts.scheduler
        state = {
            "epoch": epoch,
            "config": config,
            "model": parts.model.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in parts.optimizers.items()},
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "loss": parts.loss.state_dict(),
            "rng": get_rng_state(),
            "history": history.to_dict(),
        }
        self._save(state, self.last)

    def save_best(
        self, epoch: int, config: Mapping[str, Any], model: torch.nn.Module, val: Mapping[str, float]
    ) -> None:
        """Write ``best.pt``: the model of ``epoch`` and its validation metrics ``val``."""
        self._save({"epoch": epoch, "config": config, "model": model.state_dict(), "val": dict(val)}, self.best)

    def _save(self, state: Mapping[str, Any], path: Path) -> None:
        with disk_full_is_one_line(path, f"{path.name} keeps its previous checkpoint, intact"):
            save_checkpoint(state, path)

    def read_last(self) -> dict[str, Any] | None:
        """``last.pt``, checked to hold every entry a resumed run needs (None when there is no ``last.pt``)."""
        if not self.last.exists():
            return None
        state = load_checkpoint(self.last)
        missing = [entry for entry in LAST_ENTRIES if entry not in state]
        if not missing and not (isinstance(state["rng"], Mapping) and all(k in state["rng"] for k in _RNG_ENTRIES)):
            missing = ["rng (the generator states " + ", ".join(_RNG_ENTRIES) + ")"]
        if not missing and not isinstance(state["optimizers"], Mapping):
            missing = ["optimizers (a table of optimiser states by name)"]
        if missing:
            raise ConfigError(
                f"{self.last} cannot be resumed: it has no {', '.join(missing)} entry (a checkpoint of another "
                "shape); continue in another --output-dir, or set model.init_checkpoint to start from its weights"
            )
        return state

    def read_best(self) -> dict[str, Any]:
        return load_checkpoint(self.best)

    def restore(self, state: Mapping[str, Any], parts: Parts) -> History:
        """Load :meth:`read_last`'s model, optimiser, scheduler, loss and generator states into ``parts``;
        return the run's history."""
        saved = state["optimizers"]
        unknown = sorted(set(parts.optimizers) - set(saved))
        if unknown:
            raise ConfigError(f"{self.last} cannot be resumed: it holds no state of the optimiser {unknown[0]!r}")
        try:
            parts.model.load_state_dict(state["model"])
            for name, optimizer in parts.optimizers.items():
                optimizer.load_state_dict(saved[name])
            if parts.scheduler is not None:
                parts.scheduler.load_state_dict(state["lr_scheduler"])
            parts.loss.load_state_dict(state["loss"])
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            # The config was checked equal, so a state that does not fit means a file edited or made elsewhere.
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"{self.last} does not fit this run's model, optimiser or loss: {message}") from None
        set_rng_state(state["rng"])
        return History.from_dict(state["history"])


@contextlib.contextmanager
def disk_full_is_one_line(path: Path, kept: str) -> Iterator[None]:
    """A full disk while the block writes ``path`` (atomically) becomes a one-line ConfigError that says so, what
    was kept (``kept``) and to continue with ``--resume``, instead of torch's chained traceback (D01, D03)."""
    try:
        yield
    except DiskFullError:
        raise ConfigError(
            f"the disk is full: {path} could not be written ({kept}); free some space and continue with --resume"
        ) from None


@contextlib.contextmanager
def output_dir_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold ``output_dir``'s lock while the block runs: a second live process that wants the folder is refused at
    once (one line that names the folder and the holder's PID). The kernel releases the lock when the holder
    dies, so a killed run leaves no stale lock. Re-entrant within one process (the benchmark runner holds a run's
    folder around :func:`~pml_recallk.experiments.train.run_experiment`, which takes it again). Under torchrun
    only rank 0 should take it.
    """
    try:
        with folder_lock(Path(output_dir), LOCK_FILE):
            yield
    except FolderLockedError as error:
        raise ConfigError(f"{error}; wait for it to finish or choose another --output-dir") from None


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """Write ``state`` (with the checkpoint format added) to ``path`` atomically: never a truncated file."""
    save_torch_atomic({"format": CHECKPOINT_FORMAT, **state}, path)


def _read_torch_file(path: Path, what: str) -> Any:
    """``torch.load`` of ``path`` on the CPU (weights only); a missing, empty or foreign file is one line."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ConfigError(f"{what} {str(path)!r} is empty, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # text, a truncated file, a pickle of other objects: say so in one line
        # torch's own message is several lines of advice about weights_only, which does not apply here.
        raise ConfigError(
            f"cannot read {what} {str(path)!r}: not a torch file of tensors ({type(error).__name__})"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``pml-recallk train`` (a run folder means its ``checkpoints/best.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = RunCheckpoints(path).best
    state = _read_torch_file(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a pml-recallk checkpoint (no format {CHECKPOINT_FORMAT!r})")
    return state


def load_init_weights(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Load ``model.init_checkpoint`` into ``model``: a ``pml-recallk train`` checkpoint (or its run folder) or a
    plain state_dict file. Keys must match exactly (a clear error lists the first differences).

    Returns what the run's results record: ``{"path", "epoch", "recipe"}``, where ``recipe`` is the config the
    checkpoint was trained with (None for a plain state_dict).
    """
    path = Path(path)
    if path.is_dir():
        path = RunCheckpoints(path).best
    state = _read_torch_file(path, "model.init_checkpoint")
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        weights, recipe, epoch = state["model"], state.get("config"), state.get("epoch")
    elif isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        weights, recipe, epoch = state, None, None
    else:
        raise ConfigError(f"model.init_checkpoint {str(path)!r} is neither a pml-recallk checkpoint nor a state_dict")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [k for k in sorted(set(own) & set(weights)) if tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{name} {keys[:3]}" for name, keys in (("missing", missing), ("unexpected", unexpected),
                                                          ("of another shape", shapes)) if keys]  # fmt: skip
        raise ConfigError(
            f"model.init_checkpoint {str(path)!r} does not fit the config's model: keys "
            + "; ".join(parts)
            + " (check model.name, model.embedding_size, model.width and the data set's channels)"
        )
    model.load_state_dict(weights)
    return {"path": str(path), "epoch": epoch, "recipe": recipe}


def get_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch and CUDA generator states (as lists and tensors: ``weights_only`` loads them)."""
    version, mt_state, gauss = random.getstate()
    numpy_state = np.random.get_state()  # noqa: NPY002 - PML's samplers draw from the legacy global generator
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *map(float, numpy_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, epoch: int) -> None:
    """Seed Python, NumPy (which MPerClassSampler draws from) and torch from ``(seed, epoch)``.

    Epoch 0 seeds the model's initialisation; epoch e ≥ 1 the sampling and augmentation of epoch e, so an epoch
    does not depend on what ran before it in the process.
    """
    derived = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)  # noqa: NPY002 - MPerClassSampler draws from np.random (c_f.NUMPY_RANDOM)
    torch.manual_seed(derived)

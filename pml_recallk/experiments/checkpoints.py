"""Checkpoints of ``pml-recallk train``: writing them atomically, reading them back with one-line errors, the
generator states that make a resumed run exact, and the weights a run starts from (``model.init_checkpoint``).

A checkpoint is a dict with ``"format": CHECKPOINT_FORMAT``, ``"epoch"``, ``"config"`` and ``"model"`` (a
state_dict); ``last.pt`` also holds the optimiser, scheduler and loss states, the generator states and the history
of the run. Files are written with :func:`pml_recallk._io.save_torch_atomic`.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "best.pt"
    >>> save_checkpoint({"epoch": 1, "config": {}, "model": {"w": torch.zeros(2)}}, path)
    >>> load_checkpoint(path)["epoch"]
    1
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import save_torch_atomic
from .config import ConfigError

__all__ = [
    "CHECKPOINT_FORMAT",
    "get_rng_state",
    "load_checkpoint",
    "load_init_weights",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "pml-recallk-checkpoint-v1"


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
        path = path / "checkpoints" / "best.pt"
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
        path = path / "checkpoints" / "best.pt"
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

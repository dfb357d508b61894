"""``pml-recallk train`` under ``torchrun``: the process group, who writes, and what every rank must agree on.

``torchrun`` starts one process per rank and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. With ``WORLD_SIZE`` > 1, :func:`process_group` initialises ``torch.distributed`` (gloo on the CPU,
NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``) and the run becomes one job:

* every global batch of ``data.batch_size`` images (``DistributedMPerClassSampler``) is split over the ranks, each
  pushing its share through the gradient cache in chunks of ``train.chunk_size``; ``cached_backward`` gathers the
  embeddings, so RS@k sees the global batch, and DDP sums the ranks' gradients into one optimiser step;
* rank 0 alone evaluates and writes (logs, checkpoints, plots, ``results.json``); the others wait for its decisions
  (:func:`from_main`), which also carry its errors, so that a refusal on rank 0 stops every rank alike.

Without ``WORLD_SIZE`` (or with 1) nothing here changes a run. docs/distributed.md has the launch lines.

Example:
    >>> world = current_world()  # outside torchrun
    >>> world.world_size, world.is_main
    (1, True)
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .config import ConfigError

__all__ = [
    "JobFailure",
    "World",
    "current_world",
    "data_parallel",
    "from_main",
    "process_group",
    "results_entry",
    "split_batch",
]

TIMEOUT_VARIABLE = "PML_RECALLK_DIST_TIMEOUT"
# Long enough for rank 0 to validate a large split while the others wait at a barrier.
DEFAULT_TIMEOUT_S = 1800

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``world_size``, on its node's GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that evaluates and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def world_from_environment() -> World:
    """``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` as torchrun (or a scheduler) sets them; 1, 0, 0 when unset."""
    world = World(_environment_int("RANK", 0), _environment_int("WORLD_SIZE", 1), _environment_int("LOCAL_RANK", 0))
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise ConfigError(
            f"RANK={world.rank} and WORLD_SIZE={world.world_size} do not make a job (0 <= RANK < WORLD_SIZE is needed)"
        )
    return world


def current_world() -> World:
    """The initialised process group's world, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _environment_int("LOCAL_RANK", 0))
    return World()


def _timeout() -> datetime.timedelta:
    seconds = _environment_int(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S)
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds; got {seconds}")
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[World]:
    """Initialise ``torch.distributed`` for the block when ``WORLD_SIZE`` > 1 (else do nothing).

    ``device_name`` is ``train.device``: ``auto`` or ``cuda`` runs NCCL with each rank on ``cuda:LOCAL_RANK``, ``cpu``
    (or ``auto`` without CUDA) gloo. A collective that waits longer than ``PML_RECALLK_DIST_TIMEOUT`` seconds (default
    1800) fails, so a job whose rank died elsewhere ends instead of hanging.
    """
    world = world_from_environment()
    if not world.distributed:
        yield world
        return
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if device_name not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"train.device is {device_name!r}, but under torchrun every rank takes its own device: use auto, cuda "
            "(rank r on cuda:LOCAL_RANK) or cpu"
        )
    if use_cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {world.local_rank} but torch sees {torch.cuda.device_count()} CUDA devices on this node; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=_timeout())
    try:
        yield world
        # The other ranks wait here while rank 0 evaluates and writes: a rank that tears gloo down while a peer still
        # uses its connections can abort at exit ("terminate called without an active exception", seen in CI).
        dist.barrier()
    except (dist.DistError, RuntimeError) as error:
        if not _is_collective_failure(error):
            raise
        raise JobFailure(
            f"rank {world.rank}: another process of the job stopped or cannot be reached ({_first_sentence(error)}); "
            "continue the run from its last checkpoint by starting the same job with --resume"
        ) from error
    finally:
        with contextlib.suppress(Exception):  # after a failed collective the group may not close cleanly
            dist.destroy_process_group()


class JobFailure(RuntimeError):
    """A collective failed under torchrun: another rank died, or did not answer within the timeout."""


def _first_sentence(error: BaseException) -> str:
    """The cause in a few words: gloo's first line without its source location, up to its first full stop."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:200]


def _is_collective_failure(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    # gloo reports a dead peer as a RuntimeError; NCCL's watchdog as a DistBackendError (a DistError).
    return any(words in text for words in ("Connection closed by peer", "Connection reset by peer", "Timed out"))


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its value (or its ``ConfigError``) on every rank; plain ``compute()`` alone.

    Used for what rank 0 decides from its files (the checkpoint to resume from, whether to stop early), so that the
    ranks never disagree, even when only rank 0 can read the output folder (nodes without shared storage).
    """
    world = current_world()
    if not world.distributed:
        return compute()
    message = [None, None]
    if world.is_main:
        try:
            message = [compute(), None]
        except ConfigError as error:
            message = [None, str(error)]
    dist.broadcast_object_list(message, src=0)
    if message[1] is not None:
        raise ConfigError(message[1])
    return message[0]


def split_batch(batch_size: int) -> int:
    """Each rank's share of the global batch; a global batch that does not split evenly is a ConfigError."""
    world = current_world()
    if batch_size % world.world_size:
        raise ConfigError(
            f"data.batch_size {batch_size} (the global batch) does not split over {world.world_size} processes; "
            f"choose a multiple of {world.world_size}"
        )
    return batch_size // world.world_size


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` inside a process group (else unchanged).

    Buffers are not synchronised at every forward (``forward_sync_buffers=False``): with train-mode BatchNorm
    ``cached_backward`` combines the ranks' running statistics exactly after each step; frozen ones do not change.
    Wrapped anew whenever the trainable parameters change (the warm-up epochs), which DDP fixes at construction.
    """
    if not current_world().distributed:
        return model
    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    keyword = "forward_sync_buffers"
    if keyword not in inspect.signature(DistributedDataParallel).parameters:
        keyword = "broadcast_buffers"  # the name before torch deprecated it
    return DistributedDataParallel(model, device_ids=ids, **{keyword: False})


def results_entry(batch_size: int) -> dict[str, Any]:
    """What ``results.json`` records of the job: ``world_size``, ``batch_per_rank`` (one share per rank) and the
    backend (None for one process)."""
    world = current_world()
    return {
        "world_size": world.world_size,
        "batch_per_rank": [batch_size // world.world_size] * world.world_size,
        "backend": dist.get_backend() if world.distributed else None,
    }

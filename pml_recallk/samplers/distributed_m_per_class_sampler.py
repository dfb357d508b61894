"""M images per class in every global batch, drawn from a seed, each rank taking a contiguous slice of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .._checks import check_bool, check_int, check_positive_int

__all__ = ["DistributedMPerClassSampler", "SeededItems"]


class DistributedMPerClassSampler(Sampler):
    """PML's ``MPerClassSampler`` for a job of ``world_size`` ranks: one global batch per step, split over them.

    Every step draws one *global* batch of ``batch_size`` items: ``batch_size // m`` classes without replacement,
    then ``m`` items of each class without replacement, laid out class by class. Every rank draws the same global
    batches (from ``seed`` and the epoch, never from NumPy's or torch's global state) and yields only its own
    contiguous slice of ``batch_size // world_size`` items, so concatenating the ranks' slices in rank order gives the
    global batch, and the global batches do not depend on ``world_size``. No item appears twice in a global batch,
    except in a class with fewer than ``m`` items, whose ``m`` draws are then with replacement (as PML's sampler does;
    such a class repeats some of its items within the batch).

    With ``item_seeds=True`` each yielded index comes with a seed of its own, ``(index, seed)``, drawn with the batch;
    :class:`SeededItems` around the dataset then runs each item's augmentation from that seed, so an item is
    augmented alike whichever rank loads it and however many data-loader workers there are.

    Args:
        labels: (N,) class of every item of the dataset.
        m: items per class in a global batch.
        batch_size: items in a global batch (all ranks together); a multiple of ``m`` and of ``world_size``.
        iterations: global batches per epoch.
        rank: this process's rank; default ``torch.distributed``'s when initialised, else 0.
        world_size: ranks in the job; default ``torch.distributed``'s when initialised, else 1.
        seed: the seed of the draws; with :meth:`set_epoch`, epoch ``e`` draws from ``(seed, e)``.
        item_seeds: yield ``(index, seed)`` pairs for :class:`SeededItems` instead of plain indices.

    Example:
        >>> labels = np.arange(8).repeat(5)
        >>> ranks = [DistributedMPerClassSampler(labels, 4, 16, 2, rank=r, world_size=2, seed=1) for r in range(2)]
        >>> one = DistributedMPerClassSampler(labels, 4, 16, 2, seed=1)
        >>> [x for step in range(2) for r in ranks for x in list(r)[8 * step : 8 * step + 8]] == list(one)
        True
    """

    def __init__(
        self,
        labels: Any,
        m: int,
        batch_size: int,
        iterations: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        item_seeds: bool = False,
    ):
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence; got shape {labels.shape}")
        self.m = check_positive_int(m, "m")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.iterations = check_positive_int(iterations, "iterations")
        self.world_size, self.rank = _world(rank, world_size)
        self.seed = check_int(seed, "seed", minimum=0)
        self.item_seeds = check_bool(item_seeds, "item_seeds")
        if self.batch_size % self.m:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of m {self.m} (m items per class)")
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {self.batch_size} (the global batch) must be a multiple of the world size "
                f"{self.world_size}, so that every rank holds the same number of items"
            )
        classes, inverse = np.unique(labels, return_inverse=True)
        if self.batch_size // self.m > len(classes):
            raise ValueError(
                f"batch_size {self.batch_size} asks for {self.batch_size // self.m} classes of {self.m} items but "
                f"labels hold {len(classes)} classes; lower batch_size or m"
            )
        order = np.argsort(inverse, kind="stable")
        self.class_items = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the batches of ``epoch`` from now on (as ``torch.utils.data.DistributedSampler.set_epoch``)."""
        self.epoch = check_int(epoch, "epoch", minimum=0)

    @property
    def per_rank(self) -> int:
        """Items each rank yields per step: its share of the global batch."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        return self.iterations * self.per_rank

    def global_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, seeds)``, both (iterations, batch_size): this epoch's global batches and their items' seeds."""
        rng = np.random.default_rng([self.seed, self.epoch])
        classes_per_batch = self.batch_size // self.m
        indices = np.empty((self.iterations, self.batch_size), dtype=np.int64)
        for step in range(self.iterations):
            chosen = rng.choice(len(self.class_items), size=classes_per_batch, replace=False)
            for slot, c in enumerate(chosen):
                items = self.class_items[c]
                # A class with fewer than m items is drawn with replacement (PML's safe_random_choice does the same).
                draw = rng.choice(items, size=self.m, replace=len(items) < self.m)
                indices[step, slot * self.m : (slot + 1) * self.m] = draw
        seeds = rng.integers(0, 2**63 - 1, size=indices.shape, dtype=np.int64)
        return indices, seeds

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        indices, seeds = self.global_batches()
        mine = slice(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)
        indices, seeds = indices[:, mine].reshape(-1).tolist(), seeds[:, mine].reshape(-1).tolist()
        return iter(zip(indices, seeds)) if self.item_seeds else iter(indices)


class SeededItems(Dataset):
    """``dataset`` whose items are fetched by ``(index, seed)``: each one's random augmentation drawn from ``seed``.

    The item is loaded inside ``torch.random.fork_rng`` seeded with ``seed``, so torch's global generator is left as
    it was and the augmentation (torchvision's transforms draw from it) depends only on the item's seed, not on
    which process or data-loader worker loads it. Plain ``int`` indices pass through unchanged. ``labels`` is the
    wrapped dataset's.

    Example:
        >>> import torch
        >>> class Noise(Dataset):
        ...     labels = np.zeros(3)
        ...     def __len__(self): return 3
        ...     def __getitem__(self, i): return torch.rand(1), 0
        >>> data = SeededItems(Noise())
        >>> bool(data[(0, 7)][0] == data[(2, 7)][0])
        True
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.labels = np.asarray(dataset.labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    world_size = check_positive_int(world_size, "world_size")
    rank = check_int(rank, "rank", minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be below world_size {world_size}; got {rank}")
    return world_size, rank

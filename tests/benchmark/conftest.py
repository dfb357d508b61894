"""A small generated data set (noisy copies of one random 16×16 pattern per class), so each benchmark run takes
about a second on a CPU; the glyph and Han sweeps themselves are run by hand (benchmarks/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pml_recallk.experiments import resolve_config


class Patterns(Dataset):
    """``per_class`` noisy copies of one random pattern per class, as (1, 16, 16) tensors."""

    def __init__(self, num_classes: int, per_class: int, seed: int, noise: float = 0.8):
        generator = torch.Generator().manual_seed(seed)
        patterns = torch.randn(num_classes, 1, 16, 16, generator=generator)
        self.labels = np.repeat(np.arange(num_classes), per_class)
        self.images = patterns[self.labels] + noise * torch.randn(len(self.labels), 1, 16, 16, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions: a second thread only adds synchronisation, which costs seconds on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def datasets():
    return {"train": Patterns(10, 8, seed=0), "val": Patterns(4, 6, seed=1), "test": Patterns(6, 6, seed=2)}


@pytest.fixture
def config():
    return resolve_config(
        overrides=[
            "train.epochs=2", "data.image_size=16", "model.width=4", "model.embedding_size=8", "train.device=cpu",
            "data.batch_size=16", "train.iterations_per_epoch=2",
        ]
    )  # fmt: skip

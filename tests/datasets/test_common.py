"""class_disjoint_split and the label remapping shared by the benchmark loaders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from pml_recallk._checks import check_fraction
from pml_recallk.datasets import class_disjoint_split
from pml_recallk.datasets.common import remap_labels


class ToyDataset(Dataset):
    """Item i is ("item", i); labels given."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return ("item", index), int(self.labels[index])


def reference_remap(values):
    ordered = sorted(set(values))
    return [ordered.index(v) for v in values]


@given(st.lists(st.integers(-5, 1000), min_size=1, max_size=60))
def test_remap_labels_ranks_ids_in_increasing_order(values):
    remapped = remap_labels(np.array(values))
    assert remapped.dtype == np.int64
    assert remapped.tolist() == reference_remap(values)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 30), min_size=2, max_size=80).filter(lambda v: len(set(v)) >= 2),
    val_fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_partitions_the_items_by_class(labels, val_fraction, seed):
    dataset = ToyDataset(labels)
    train, val = class_disjoint_split(dataset, val_fraction=val_fraction, seed=seed)

    # every item exactly once, order kept within each part
    assert sorted(train.indices + val.indices) == list(range(len(labels)))
    assert train.indices == sorted(train.indices) and val.indices == sorted(val.indices)
    # whole classes move: no class on both sides
    train_classes = {labels[i] for i in train.indices}
    val_classes = {labels[i] for i in val.indices}
    assert train_classes.isdisjoint(val_classes)
    num_classes = len(set(labels))
    expected_val = min(max(round(val_fraction * num_classes), 1), num_classes - 1)
    assert len(val_classes) == expected_val and len(train_classes) == num_classes - expected_val
    # labels remapped 0..C-1 within each part, consistent with what the items return
    for part in (train, val):
        parent = [labels[i] for i in part.indices]
        assert part.class_ids.tolist() == parent
        assert part.labels.tolist() == reference_remap(parent)
        for position, index in enumerate(part.indices):
            assert part[position] == (("item", index), part.labels[position])


def test_split_is_deterministic_in_the_seed_and_varies_with_it():
    labels = np.repeat(np.arange(40), 3)
    first = class_disjoint_split(ToyDataset(labels), 0.25, seed=7)
    again = class_disjoint_split(ToyDataset(labels), 0.25, seed=7)
    assert first[1].indices == again[1].indices
    others = {tuple(class_disjoint_split(ToyDataset(labels), 0.25, seed=s)[1].indices) for s in range(5)}
    assert len(others) > 1


def test_split_accepts_tensor_labels():
    dataset = ToyDataset([0, 0, 1, 1, 2, 2])
    dataset.labels = torch.tensor(dataset.labels)
    train, val = class_disjoint_split(dataset, 0.5, seed=0)
    assert len(train) + len(val) == 6


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_fraction_outside_open_unit_interval_is_rejected(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        class_disjoint_split(ToyDataset([0, 1, 2]), val_fraction)


@pytest.mark.parametrize(
    "kwargs,error",
    [({"val_fraction": "0.2"}, TypeError), ({"val_fraction": True}, TypeError), ({"seed": -1}, ValueError)]
    + [({"seed": 1.0}, TypeError), ({"seed": None}, TypeError)],
)
def test_wrong_types_and_seeds_are_rejected(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        class_disjoint_split(ToyDataset([0, 1, 2]), **kwargs)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_fraction_accepts_exactly_the_open_unit_interval(value):
    if 0.0 < value < 1.0:
        assert check_fraction(value, "f") == value
    else:
        with pytest.raises(ValueError, match="^f must be (finite|strictly between 0 and 1)"):
            check_fraction(value, "f")


def test_a_single_class_cannot_be_split():
    with pytest.raises(ValueError, match="at least 2 classes"):
        class_disjoint_split(ToyDataset([3, 3, 3]))


def test_dataset_without_labels_is_rejected():
    with pytest.raises(TypeError, match="labels"):
        class_disjoint_split(torch.utils.data.TensorDataset(torch.zeros(4)))


def test_dataloader_batches_carry_the_remapped_labels():
    labels = [5, 5, 9, 9, 2, 2, 7, 7]
    train, val = class_disjoint_split(ToyDataset(labels), 0.5, seed=3)
    for part in (train, val):
        loader = torch.utils.data.DataLoader(part, batch_size=3, collate_fn=list)
        fetched = [label for batch in loader for _, label in batch]
        assert fetched == part.labels.tolist()


def test_the_benchmark_loaders_import_neither_pil_nor_matplotlib():
    # Pillow and matplotlib are optional (the cli extra): they load when an image is read or a glyph rendered.
    code = (
        "import sys\n"
        "import pml_recallk.datasets as d\n"
        "d.CUB200, d.Cars196, d.StanfordOnlineProducts, d.INaturalist2018, d.VehicleID, d.class_disjoint_split\n"
        "d.recall_k_values('sop')\n"
        "print(sorted(m for m in ('PIL', 'matplotlib') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

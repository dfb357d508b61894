"""DistributedMPerClassSampler: the same global batches for any world size, M per class, disjoint rank slices."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pml_recallk.samplers import DistributedMPerClassSampler, SeededItems

# 10 classes of 6 items, and one class (label 10) of 2 items, shuffled so that no class is contiguous.
LABELS = np.random.default_rng(5).permutation(np.concatenate([np.arange(10).repeat(6), [10, 10]]))
BATCH, M, STEPS = 24, 4, 6


def global_batches_from_ranks(world_size: int, seed: int = 3, epoch: int = 0) -> np.ndarray:
    """Concatenate the ranks' slices of each step, in rank order: (steps, batch)."""
    slices = []
    for rank in range(world_size):
        sampler = DistributedMPerClassSampler(LABELS, M, BATCH, STEPS, rank=rank, world_size=world_size, seed=seed)
        sampler.set_epoch(epoch)
        slices.append(np.asarray(list(sampler)).reshape(STEPS, BATCH // world_size))
    return np.concatenate(slices, axis=1)


def test_the_ranks_slices_make_the_same_global_batches_for_world_sizes_1_2_3():
    one, two, three = (global_batches_from_ranks(w) for w in (1, 2, 3))
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)
    assert len(np.unique(one, axis=0)) == STEPS  # the steps differ from each other


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_yields_its_contiguous_slice_and_the_slices_are_disjoint(world_size):
    batches = global_batches_from_ranks(world_size)
    share = BATCH // world_size
    for step in range(STEPS):
        parts = [set(batches[step, r * share : (r + 1) * share].tolist()) for r in range(world_size)]
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not parts[a] & parts[b] or _small_class_only(parts[a] & parts[b])


def _small_class_only(items: set) -> bool:
    return all(LABELS[i] == 10 for i in items)


def test_every_global_batch_holds_m_items_of_each_of_its_classes_and_no_item_twice():
    for batch in global_batches_from_ranks(2, seed=11):
        per_class = Counter(LABELS[batch].tolist())
        assert len(per_class) == BATCH // M and set(per_class.values()) == {M}
        repeated = [i for i, n in Counter(batch.tolist()).items() if n > 1]
        # Only the class of 2 items (fewer than M) is drawn with replacement, so only its items repeat.
        assert all(LABELS[i] == 10 for i in repeated)


def test_a_class_with_fewer_than_m_items_is_drawn_with_replacement_from_its_own_items():
    labels = np.array([0] * 4 + [1] * 2)
    sampler = DistributedMPerClassSampler(labels, 4, 8, 5, seed=0)
    for batch in np.asarray(list(sampler)).reshape(5, 8):
        assert Counter(labels[batch].tolist()) == {0: 4, 1: 4}
        assert set(batch[labels[batch] == 1].tolist()) <= {4, 5}
        assert sorted(batch[labels[batch] == 0].tolist()) == [0, 1, 2, 3]


def test_set_epoch_changes_the_batches_and_the_same_epoch_repeats_them():
    assert not np.array_equal(global_batches_from_ranks(1, epoch=0), global_batches_from_ranks(1, epoch=1))
    np.testing.assert_array_equal(global_batches_from_ranks(2, epoch=4), global_batches_from_ranks(3, epoch=4))


def test_the_draws_come_from_the_seed_not_from_the_global_generators():
    np.random.seed(0)  # noqa: NPY002 - checking that the sampler leaves the legacy global state alone
    torch.manual_seed(0)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()  # noqa: NPY002
    first = global_batches_from_ranks(2)
    np.random.seed(99)  # noqa: NPY002
    torch.manual_seed(99)
    np.testing.assert_array_equal(first, global_batches_from_ranks(2))
    np.random.seed(0)  # noqa: NPY002
    torch.manual_seed(0)
    global_batches_from_ranks(3)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_item_seeds_are_the_same_for_any_world_size():
    def pairs(world_size):
        out = []
        for rank in range(world_size):
            s = DistributedMPerClassSampler(LABELS, M, BATCH, STEPS, rank=rank, world_size=world_size, item_seeds=True)
            out.append(np.asarray(list(s)).reshape(STEPS, BATCH // world_size, 2))
        return np.concatenate(out, axis=1)

    np.testing.assert_array_equal(pairs(1), pairs(3))
    assert len(np.unique(pairs(1)[..., 1])) == STEPS * BATCH  # every draw has its own seed


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"batch_size": 20, "world_size": 3}, ValueError, "multiple of the world size 3"),
        ({"batch_size": 22}, ValueError, "multiple of m 4"),
        ({"batch_size": 48}, ValueError, "asks for 12 classes"),
        ({"rank": 2, "world_size": 2}, ValueError, "rank must be below world_size 2"),
        ({"m": 0}, ValueError, "m must be a positive int"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_a_message_naming_them(kwargs, error, words):
    arguments = {"m": M, "batch_size": BATCH, "iterations": 2} | kwargs
    with pytest.raises(error, match=words):
        DistributedMPerClassSampler(LABELS, **arguments)


class Noise(Dataset):
    labels = np.zeros(4)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(3) + index, 0


def test_seeded_items_augment_from_the_item_seed_and_leave_torchs_generator_alone():
    data = SeededItems(Noise())
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = data[(2, 123)][0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    assert torch.equal(data[(2, 123)][0], first)
    torch.manual_seed(123)
    assert torch.equal(first, torch.rand(3) + 2)  # what the item draws is exactly torch's stream from its seed
    assert not torch.equal(data[(2, 124)][0], first)

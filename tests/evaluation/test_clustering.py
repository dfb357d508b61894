"""SklearnKMeans: PML's kmeans_func contract without faiss."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from pml_recallk.evaluation import SklearnKMeans
from pml_recallk.evaluation import accuracy_calculator as old_module


def test_old_import_path_still_works():
    assert old_module.SklearnKMeans is SklearnKMeans


@pytest.mark.parametrize("seed", [0, 3])
def test_recovers_well_separated_clusters_and_repeats(seed):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(5), 20)
    centres = rng.normal(size=(5, 4)) * 50
    x = torch.tensor(centres[truth] + rng.normal(size=(100, 4)), dtype=torch.float32)
    kmeans = SklearnKMeans(seed=seed)
    ids = kmeans(x, 5)
    assert ids.shape == (100,) and ids.device == x.device
    assert adjusted_rand_score(truth, ids.numpy()) == 1.0  # the partition, up to renaming
    assert torch.equal(ids, kmeans(x, 5))


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"max_iter": 0}, ValueError),
        ({"max_iter": 2.0}, TypeError),
        ({"seed": -1}, ValueError),
        ({"seed": "0"}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        SklearnKMeans(**kwargs)

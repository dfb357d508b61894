"""T01-T03: MemoryEfficientTrainer on a dataset that yields the wrong things names what it must yield."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pml_recallk import MemoryEfficientTrainer, RecallKSurrogateLoss


class Items(Dataset):
    """8 items, 2 classes; ``item(i)`` says what item i is."""

    def __init__(self, item):
        self.item = item
        self.labels = [i % 2 for i in range(8)]

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return self.item(index)


def train_one_step(dataset):
    model = nn.Linear(6, 4)
    trainer = MemoryEfficientTrainer(
        models={"trunk": model},
        optimizers={"trunk_optimizer": torch.optim.SGD(model.parameters(), lr=0.1)},
        batch_size=8,
        loss_funcs={"metric_loss": RecallKSurrogateLoss(k_values=(1,))},
        dataset=dataset,
        data_device=torch.device("cpu"),
        dataloader_num_workers=0,
        chunk_size=4,
    )
    trainer.train(num_epochs=1)


@pytest.mark.parametrize(
    "item,words",
    [
        (lambda i: (torch.randn(6 + i % 2), i % 2), "same shape for every item.*stack expects"),  # T01
        (lambda i: (torch.randn(6), i % 2, i), "its items have 3 parts"),  # T02: (x, label, index)
        (lambda i: (torch.randn(6), "cat" if i % 2 else "dog"), r"its labels are str \(e.g. '(cat|dog)'\)"),  # T03
        (lambda i: (torch.randn(6), float(i % 2)), "its labels are torch.float"),
        (lambda i: (object(), i % 2), "batching them failed"),
        (lambda i: torch.randn(6), "its items have Tensor"),
    ],
)
def test_a_dataset_that_yields_the_wrong_things_is_named(item, words):
    with pytest.raises(ValueError, match="needs a dataset whose items are \\(data, label\\) pairs.*" + words):
        train_one_step(Items(item))


def test_integer_labels_of_any_kind_train():
    train_one_step(Items(lambda i: (torch.randn(6), torch.tensor(i % 2, dtype=torch.int32))))

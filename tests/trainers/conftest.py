"""A small CNN with BatchNorm and dropout, and plain (uncached) references for the gradient-cache tests."""

import types

import pytest
import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv-BN-ReLU-dropout ×2 → global average pool → dropout → linear → L2 normalisation."""

    def __init__(self, embedding_size: int = 8, dropout: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(8, embedding_size))

    def forward(self, x):
        return nn.functional.normalize(self.head(self.features(x)), dim=1)


def set_batchnorm_mode(model: nn.Module, batchnorm_trains: bool) -> nn.Module:
    """Everything in train mode (dropout active); BatchNorm in train or eval (frozen) mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.train(batchnorm_trains)
    return model


def plain_chunked_backward(model, inputs, labels, loss_fn, chunk_size):
    """The reference: an ordinary forward of the chunks in order, one loss, one ordinary backward."""
    embeddings = torch.cat([model(chunk) for chunk in inputs.split(chunk_size)])
    loss = loss_fn(embeddings, labels)
    loss.backward()
    return loss.detach()


def gradients(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def running_statistics(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in model.named_buffers() if "running" in name or "num_batches" in name]


def tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-6, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}


@pytest.fixture
def make_cnn(device):
    def make(dtype=torch.float64, dropout=0.3, batchnorm_trains=False, seed=0):
        torch.manual_seed(seed)
        model = SmallCNN(dropout=dropout).to(device=device, dtype=dtype)
        # Non-trivial running statistics, so that frozen BatchNorm is not the identity.
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
        return set_batchnorm_mode(model, batchnorm_trains)

    return make


@pytest.fixture
def image_batch(device):
    def make(dtype=torch.float64, num_classes=4, per_class=4, seed=1):
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(num_classes * per_class, 3, 8, 8, generator=generator, dtype=dtype)
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        return inputs.to(device), labels.to(device)

    return make


@pytest.fixture
def ref():
    """The plain references and comparison helpers, as one namespace (fixtures import reliably; modules don't)."""
    return types.SimpleNamespace(
        SmallCNN=SmallCNN,
        chunked_backward=plain_chunked_backward,
        gradients=gradients,
        running_statistics=running_statistics,
        tolerance=tolerance,
        set_batchnorm_mode=set_batchnorm_mode,
    )

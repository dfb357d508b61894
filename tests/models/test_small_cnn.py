"""SmallConvNet: shapes, normalisation, the norm options, and that it can learn."""

from __future__ import annotations

import pytest
import torch

from pml_recallk.models import SmallConvNet


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("in_channels, size", [(1, 32), (3, 64), (1, 8)])
def test_outputs_unit_embeddings(norm, in_channels, size):
    model = SmallConvNet(embedding_size=24, in_channels=in_channels, norm=norm)
    out = model(torch.randn(3, in_channels, size, size))
    assert out.shape == (3, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_default_is_light():
    parameters = sum(p.numel() for p in SmallConvNet().parameters())
    assert 50_000 <= parameters <= 300_000


def test_norm_option_picks_the_layers():
    def kinds(model):
        return {type(m).__name__ for m in model.modules()}

    assert "BatchNorm2d" in kinds(SmallConvNet(norm="batch"))
    assert "GroupNorm" in kinds(SmallConvNet(norm="group")) and "BatchNorm2d" not in kinds(SmallConvNet(norm="group"))
    assert not {"BatchNorm2d", "GroupNorm"} & kinds(SmallConvNet(norm="none"))


@pytest.mark.parametrize("norm", ["group", "none"])
def test_per_sample_norms_do_not_mix_samples_in_training_mode(norm):
    # What gradient-cached training needs without freezing: a sample's embedding ignores its batch-mates.
    torch.manual_seed(0)
    model = SmallConvNet(embedding_size=16, norm=norm).train()
    x = torch.randn(6, 1, 32, 32)
    torch.testing.assert_close(model(x)[:2], model(x[:2]))


def test_gradients_reach_every_parameter():
    model = SmallConvNet(embedding_size=16)
    model(torch.randn(4, 1, 32, 32))[:, 0].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_learns_to_separate_two_classes():
    torch.manual_seed(0)
    model = SmallConvNet(embedding_size=8, norm="group")
    class_a = torch.zeros(8, 1, 16, 16)
    class_a[:, :, :, :8] = 1.0  # left half bright
    class_b = class_a.flip(-1)
    x = torch.cat([class_a, class_b]) + 0.1 * torch.randn(16, 1, 16, 16)
    same = torch.block_diag(torch.ones(8, 8), torch.ones(8, 8)).bool()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def gap():
        sim = model(x) @ model(x).T
        return sim[same].mean() - sim[~same].mean()

    before = gap().item()
    for _ in range(30):
        optimizer.zero_grad()
        (-gap()).backward()
        optimizer.step()
    assert gap().item() > max(before, 0.0) + 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"norm": "layer"}, "norm"),
        ({"embedding_size": 0}, "embedding_size"),
        ({"in_channels": 0}, "in_channels"),
        ({"width": 2.5}, "width"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SmallConvNet(**kwargs)


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        SmallConvNet(in_channels=1)(torch.randn(2, 3, 32, 32))

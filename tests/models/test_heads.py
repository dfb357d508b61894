"""GeM pooling and the LayerNorm → Linear → L2 head, against plain float64 references."""

from __future__ import annotations

import pytest
import torch

from pml_recallk.models import GeM
from pml_recallk.models.heads import EmbeddingHead


def gem_reference(x: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    x = x.double()
    n, c, h, w = x.shape
    out = torch.empty(n, c, dtype=torch.float64)
    for i in range(n):
        for j in range(c):
            values = [max(float(v), eps) ** p for v in x[i, j].flatten()]
            out[i, j] = (sum(values) / (h * w)) ** (1.0 / p)
    return out


@pytest.mark.parametrize("p", [1.0, 3.0, 4.5])
def test_gem_matches_the_generalised_mean(p, dtype):
    x = torch.randn(2, 3, 4, 5, dtype=dtype)  # negatives exercise the clamp
    pool = GeM(p=p).to(dtype)
    torch.testing.assert_close(pool(x).double(), gem_reference(x, p, 1e-6), rtol=1e-4, atol=1e-6)


def test_gem_p1_is_average_pooling_of_positive_features():
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64) + 0.1
    torch.testing.assert_close(GeM(p=1.0).double()(x), x.mean(dim=(2, 3)))


def test_gem_large_p_tends_to_max_pooling():
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64) + 0.1
    torch.testing.assert_close(GeM(p=200.0).double()(x), x.amax(dim=(2, 3)), rtol=2e-2, atol=0)


def test_gem_p_is_a_learnable_parameter_starting_at_3():
    pool = GeM()
    assert pool.p.requires_grad and pool.p.item() == 3.0
    assert any(param is pool.p for param in pool.parameters())
    pool(torch.rand(2, 3, 4, 4)).sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad).all()


def test_gem_gradients_are_finite_on_zero_features():
    x = torch.zeros(1, 2, 3, 3, requires_grad=True)
    GeM()(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kwargs", [{"p": 0.0}, {"p": -1.0}, {"eps": 0.0}])
def test_gem_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        GeM(**kwargs)


def test_gem_rejects_non_feature_maps():
    with pytest.raises(ValueError, match="N, C, H, W"):
        GeM()(torch.rand(2, 3))


def test_head_is_layernorm_linear_l2():
    head = EmbeddingHead(6, 4).double()
    with torch.no_grad():
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(5, 6, dtype=torch.float64)
    normed = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-5)
    projected = (normed * head.norm.weight + head.norm.bias) @ head.linear.weight.T + head.linear.bias
    expected = projected / projected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), expected)


def test_head_rejects_empty_embedding():
    with pytest.raises(ValueError, match="embedding_size"):
        EmbeddingHead(8, 0)

"""benchmarks/gradient_share.py's spread measures, against values worked out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gradient_share.py"
spec = importlib.util.spec_from_file_location("gradient_share", PATH)
gradient_share = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gradient_share)


def test_equal_gradients_participate_fully():
    result = gradient_share.spread(np.full(10, 0.3))
    # (10 · 0.3)² / (10 · 10 · 0.09) = 1; 9 of 10 equal squares reach 90 %; none below 1 % of the largest.
    assert result == pytest.approx({"participation": 1.0, "share_for_90": 0.9, "silent": 0.0})


def test_one_item_with_all_the_gradient():
    result = gradient_share.spread(np.array([0.0, 0.0, 2.0, 0.0]))
    assert result == pytest.approx({"participation": 0.25, "share_for_90": 0.25, "silent": 0.75})


def test_uneven_gradients():
    norms = np.array([3.0, 1.0, 1.0, 0.001])
    # Σ g = 5.001, Σ g² = 11.000001; 90 % of it is 9.9: 9 (the 3) is short, 9 + 1 = 10 reaches it.
    expected = {"participation": 5.001**2 / (4 * 11.000001), "share_for_90": 2 / 4, "silent": 1 / 4}
    assert gradient_share.spread(norms) == pytest.approx(expected)


def test_no_gradient_at_all():
    assert gradient_share.spread(np.zeros(5)) == {"participation": 0.0, "share_for_90": 0.0, "silent": 1.0}

"""Collapse guards against brute-force references (plain loops over pairs and ranks)."""

import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_recallk.trainers.collapse import (
    CollapseMonitor,
    CollapseWarning,
    mean_pairwise_cosine,
    out_of_reach_fraction,
    validation_collapse,
)


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 9), d=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_mean_pairwise_cosine_equals_the_loop_over_pairs(n, d, seed):
    e = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    pairs = [_cos(e[i], e[j]) for i, j in itertools.permutations(range(n), 2)]
    assert mean_pairwise_cosine(e) == pytest.approx(sum(pairs) / len(pairs), abs=1e-10)


def test_mean_pairwise_cosine_of_identical_rows_is_one():
    assert mean_pairwise_cosine(torch.ones(5, 3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="B >= 2"):
        mean_pairwise_cosine(torch.ones(1, 3))


def _out_of_reach_loop(e, labels, reach):
    counted = far = 0
    for q in range(len(e)):
        positives = [j for j in range(len(e)) if j != q and labels[j] == labels[q]]
        if not positives:
            continue
        counted += 1
        best = max(_cos(e[q], e[p]) for p in positives)
        rank = 1 + sum(1 for z in range(len(e)) if z != q and _cos(e[q], e[z]) > best)
        far += rank > reach
    return far / counted if counted else 0.0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 12), classes=st.integers(1, 5), reach=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_out_of_reach_fraction_equals_the_loop_over_ranks(n, classes, reach, seed):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 4, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    assert out_of_reach_fraction(e, labels, reach) == pytest.approx(_out_of_reach_loop(e, labels, reach))


@pytest.mark.parametrize(
    ("curve", "floor", "collapsed"),
    [
        ([], None, False),
        ([0.3], None, False),
        ([0.3], 0.7, True),  # below half the untrained network's recall
        ([0.3, 0.4, 0.25], None, False),
        ([0.3, 0.4, 0.19], None, True),
        ([0.3, 0.4, 0.21], 0.5, True),
    ],
)
def test_validation_collapse(curve, floor, collapsed):
    assert (validation_collapse(curve, floor) is not None) == collapsed


def test_monitor_warns_once_per_kind_and_keeps_every_message():
    monitor = CollapseMonitor(max_mean_cosine=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.observe_batch(torch.randn(32, 8))
        assert not monitor.collapsed
        monitor.observe_batch(torch.ones(8, 4) + 1e-3 * torch.randn(8, 4))
        monitor.observe_batch(torch.ones(8, 4))
        monitor.observe_validation([0.5, 0.1])
    kinds = [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert len(kinds) == 2 and monitor.collapsed and len(monitor.messages) == 3
    assert "learning rate" in str(kinds[0].message)


def test_monitor_bad_arguments():
    with pytest.raises(ValueError, match="max_mean_cosine"):
        CollapseMonitor(max_mean_cosine=1.0)
    with pytest.raises(ValueError, match="ratio"):
        validation_collapse([0.1], ratio=1.5)


def test_observe_loss_warns_after_the_stall_and_resets_when_the_loss_moves():
    monitor = CollapseMonitor(stall_steps=3, loss_tolerance=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for value in (1.0, 0.995, 0.9, 1.0, 0.999):  # the 0.9 breaks the run: only two stalled steps after it
            monitor.observe_loss(value)
        assert not monitor.collapsed
        monitor.observe_loss(0.998)  # the third in a row
        monitor.observe_loss(1.0)
    assert len([w for w in caught if issubclass(w.category, CollapseWarning)]) == 1
    assert "3 steps" in monitor.messages[0]
    with pytest.raises(ValueError):
        CollapseMonitor(stall_steps=0)

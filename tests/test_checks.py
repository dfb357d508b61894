"""The argument guards: TypeError for a wrong type, ValueError for a wrong value, canonical values returned."""

import math

import numpy as np
import pytest
import torch

from pml_recallk import _checks


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(2)])
def test_positive_int_accepts_ints_and_returns_python_int(value):
    out = _checks.check_positive_int(value, "n")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [1.0, "3", True, None, [1]])
def test_positive_int_refuses_other_types_with_type_error(value):
    with pytest.raises(TypeError, match="n must be a positive int"):
        _checks.check_positive_int(value, "n")


@pytest.mark.parametrize("value", [0, -1, np.int64(-5)])
def test_positive_int_refuses_non_positive_with_value_error(value):
    with pytest.raises(ValueError, match="n must be a positive int"):
        _checks.check_positive_int(value, "n")


def test_positive_int_none_only_when_allowed():
    assert _checks.check_positive_int(None, "n", allow_none=True) is None
    with pytest.raises(TypeError, match="or None"):
        _checks.check_positive_int("x", "n", allow_none=True)


def test_int_minimum():
    assert _checks.check_int(0, "n", minimum=0) == 0
    with pytest.raises(ValueError, match=">= 2"):
        _checks.check_int(1, "n", minimum=2)
    with pytest.raises(TypeError):
        _checks.check_int(2.0, "n")


@pytest.mark.parametrize("value", [0, 1, "true", None])
def test_bool_refuses_non_bools(value):
    with pytest.raises(TypeError, match="flag must be True or False"):
        _checks.check_bool(value, "flag")


def test_real_and_positive_float():
    assert _checks.check_real(2, "x") == 2.0
    assert _checks.check_positive_float(0.5, "t") == 0.5
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            _checks.check_real(bad, "x")
    for bad in (0, -0.1):
        with pytest.raises(ValueError, match="> 0"):
            _checks.check_positive_float(bad, "t")
    for bad in (True, "1", None):
        with pytest.raises(TypeError):
            _checks.check_real(bad, "x")


def test_k_values_keeps_order_and_refuses_duplicates():
    assert _checks.check_k_values((4, 1, np.int64(2))) == [4, 1, 2]
    with pytest.raises(ValueError, match="duplicates"):
        _checks.check_k_values([1, 2, 2])
    with pytest.raises(ValueError, match="empty"):
        _checks.check_k_values([])
    with pytest.raises(ValueError, match="positive"):
        _checks.check_k_values([1, 0])
    for bad in (1, "12", [1.0], [True]):
        with pytest.raises(TypeError):
            _checks.check_k_values(bad)


def test_embeddings_guard():
    _checks.check_embeddings(torch.zeros(2, 3), "e")
    with pytest.raises(TypeError, match="e must be a 2-D torch tensor"):
        _checks.check_embeddings(np.zeros((2, 3)), "e")
    with pytest.raises(ValueError, match="shape"):
        _checks.check_embeddings(torch.zeros(3), "e")
    with pytest.raises(ValueError, match="empty"):
        _checks.check_embeddings(torch.zeros(0, 3), "e")
    with pytest.raises(TypeError, match="floating-point"):
        _checks.check_embeddings(torch.zeros(2, 3, dtype=torch.long), "e")
    bad = torch.zeros(2, 3)
    bad[1, 2] = math.nan
    _checks.check_embeddings(bad, "e")  # finiteness is opt-in: it costs a host sync
    with pytest.raises(ValueError, match="NaN or inf"):
        _checks.check_embeddings(bad, "e", check_finite=True)


def test_labels_guard():
    _checks.check_labels(torch.tensor([0, 1]), "y", length=2)
    with pytest.raises(TypeError, match="torch.as_tensor"):
        _checks.check_labels(np.array([0, 1]), "y")
    with pytest.raises(ValueError, match="1-D"):
        _checks.check_labels(torch.zeros(2, 1, dtype=torch.long), "y")
    with pytest.raises(TypeError, match="integer class ids"):
        _checks.check_labels(torch.zeros(2), "y")
    with pytest.raises(ValueError, match="y has 2 entries but ref_emb has 3"):
        _checks.check_labels(torch.tensor([0, 1]), "y", length=3, length_of="ref_emb")


def test_choice_returns_a_name_of_the_choices_and_refuses_others_by_type_then_value():
    assert _checks.check_choice("dense", ("dense", "tiled"), "path") == "dense"
    with pytest.raises(ValueError, match=r"path must be one of \('dense', 'tiled'\), got 'fast'"):
        _checks.check_choice("fast", ("dense", "tiled"), "path")
    with pytest.raises(TypeError, match=r"path must be one of .*got 1 \(int\)"):
        _checks.check_choice(1, ("dense", "tiled"), "path")

"""Argument guards shared by the whole package: one guard per kind of argument, one convention.

A value of the wrong *type* raises ``TypeError``; a value of the right type but outside what is allowed raises
``ValueError``. Every message names the argument and says what to pass instead. Guards return the value in its
canonical form (``int`` for numpy integers, ``list`` for sequences) so that callers store what they checked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "check_bool",
    "check_embeddings",
    "check_fraction",
    "check_int",
    "check_k_values",
    "check_labels",
    "check_positive_float",
    "check_positive_int",
    "check_real",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_bool(value: Any, name: str) -> bool:
    """``value`` must be ``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An int (numpy ints accepted, bools refused), optionally ``>= minimum``."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """An int >= 1; ``None`` passes through when ``allow_none`` (meaning "choose automatically")."""
    if value is None and allow_none:
        return None
    if not _is_int(value):
        extra = " or None" if allow_none else ""
        raise TypeError(f"{name} must be a positive int{extra}, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_real(value: Any, name: str) -> float:
    """A finite real number (ints accepted, bools and NaN/inf refused)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_positive_float(value: Any, name: str) -> float:
    """A finite real number > 0 (a temperature, a learning rate ...)."""
    value = check_real(value, name)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_k_values(value: Any, name: str = "k_values") -> list[int]:
    """A non-empty sequence of distinct positive ints, returned as a list in the given order.

    Duplicates are an error, not silently dropped: a repeated k is almost always a typo, and dropping it would
    change which metrics (or which loss terms) the caller gets without saying so. A list, not a tuple, because
    record-keeper (PML's logging hooks) stores lists and fails on tuples.
    """
    if isinstance(value, (numbers.Number, str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of positive ints such as (1, 2, 4, 8), got {value!r}")
    if len(value) == 0:
        raise ValueError(f"{name} is empty; give at least one k, e.g. {name}=(1, 2, 4, 8)")
    for k in value:
        if not _is_int(k):
            raise TypeError(f"{name} must hold ints, got {k!r} in {tuple(value)!r}")
        if k <= 0:
            raise ValueError(f"{name} must be positive, got {k} in {tuple(value)!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} has duplicates: {tuple(value)!r}; give each k once")
    return [int(k) for k in value]


def check_embeddings(embeddings: Any, name: str, *, check_finite: bool = False) -> None:
    """A non-empty 2-D floating-point tensor (batch_size, embedding_size); optionally all finite (a host sync)."""
    if not torch.is_tensor(embeddings):
        raise TypeError(
            f"{name} must be a 2-D torch tensor (batch_size, embedding_size), got {type(embeddings).__name__}"
        )
    if embeddings.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor (batch_size, embedding_size), got shape {tuple(embeddings.shape)}"
        )
    if len(embeddings) == 0:
        raise ValueError(f"{name} is empty; the loss needs at least one query and one database item")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {embeddings.dtype}")
    if check_finite and not bool(torch.isfinite(embeddings).all()):
        raise ValueError(f"{name} contains NaN or inf; check the model's output (learning rate, inputs)")


def check_labels(labels: Any, name: str, *, length: int | None = None, length_of: str = "embeddings") -> None:
    """A 1-D integer torch tensor, optionally of a given length (that of ``length_of``)."""
    if not torch.is_tensor(labels):
        raise TypeError(
            f"{name} must be a 1-D torch tensor of integer class ids, got {type(labels).__name__}; "
            f"convert with torch.as_tensor({name})"
        )
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (batch_size,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {labels.dtype}; convert with .long()")
    if length is not None and len(labels) != length:
        raise ValueError(f"{name} has {len(labels)} entries but {length_of} has {length}; give one label per row")


def check_choice(value: Any, choices: Sequence[str], name: str) -> str:
    """One of the names ``choices`` (a TypeError for what is not a string, a ValueError for another string)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(choices)}, got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_fraction(value: Any, name: str) -> float:
    """A real number strictly between 0 and 1 (the share of classes or families held out for testing)."""
    value = check_real(value, name)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return value


def check_indices_tuple(indices_tuple: Any, num_queries: int, database_size: int) -> None:
    """PML's ``indices_tuple``: None, (anchors, positives, negatives) or (anchors, positives, anchors, negatives) of
    1-D integer tensors, anchors < ``num_queries`` and the others < ``database_size`` (one host sync)."""
    if indices_tuple is None:
        return
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise TypeError(
            "indices_tuple must be a tuple (anchors, positives, negatives) or (anchors, positives, anchors, negatives) "
            f"of index tensors, as PML's miners return, got {type(indices_tuple).__name__}"
        )
    anchor_slots = (0,) if len(indices_tuple) == 3 else (0, 2)
    for slot, index in enumerate(indices_tuple):
        if not torch.is_tensor(index) or index.ndim != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise TypeError(f"indices_tuple[{slot}] must be a 1-D integer tensor of batch indices")
        anchor = slot in anchor_slots
        size = num_queries if anchor else database_size
        if len(index) == 0:
            continue
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= size:
            of = "embeddings" if anchor else "the database (ref_emb, or the batch itself)"
            raise ValueError(
                f"indices_tuple[{slot}] holds index {low if low < 0 else high} outside {of}, which has {size} rows; "
                f"mine the tuple on this batch (indices 0 … {size - 1})"
            )

"""Collapse guards: say loudly when training destroys the embedding instead of improving it.

RS@k trained from random weights can collapse: its gradient for a positive of soft rank r̃ is about
σ'((k − r̃)/τ_k)/τ_k ≤ e^{−(r̃ − k)/τ_k}/τ_k, so a query whose positives all rank far beyond the largest k gets
essentially none (docs/method.md §2). Early in training from scratch, most queries of a large batch are such
queries; the few that get a gradient can pull the embedding into a degenerate shape (every embedding close to
every other), and validation recall ends below the untrained network's. Three cheap signals catch it:

* :func:`mean_pairwise_cosine`: the mean cosine similarity of distinct pairs of a batch, in O(B·d) without the
  B×B matrix, from ``(‖Σ_i ê_i‖² − B) / (B(B − 1))``. Near 1: all embeddings point the same way.
* :func:`out_of_reach_fraction`: the fraction of queries whose best positive ranks beyond ``reach`` (exact ranks,
  B×B; used on a sampled batch): the part of the batch the surrogate cannot move.
* :func:`validation_collapse`: the validation recall fell below a fraction of the best seen (or of the untrained
  network's).

:class:`CollapseMonitor` combines them and emits one :class:`CollapseWarning` per kind of collapse.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from .._checks import check_positive_float, check_positive_int

__all__ = [
    "CollapseMonitor",
    "CollapseWarning",
    "mean_pairwise_cosine",
    "out_of_reach_fraction",
    "validation_collapse",
]

_ADVICE = (
    "lower the learning rate, use a smaller batch or rank_temperature (0.01, the paper's) from scratch, or start "
    "from pretrained weights"
)


class CollapseWarning(UserWarning):
    """Training is destroying the embedding (see :mod:`pml_recallk.trainers.collapse`)."""


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over the B(B−1) ordered pairs of distinct rows, in O(B·d).

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> round(mean_pairwise_cosine(e), 4)  # pairs: 0, 1, 0 (each twice) → 1/3
        0.3333
    """
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ValueError(f"embeddings must be (B, d) with B >= 2, got shape {tuple(embeddings.shape)}")
    with torch.no_grad():
        e = torch.nn.functional.normalize(embeddings.detach().double(), dim=1)
        n = len(e)
        total = e.sum(dim=0)
        return float((total @ total - (e * e).sum()) / (n * (n - 1)))


def out_of_reach_fraction(embeddings: torch.Tensor, labels: torch.Tensor, reach: int) -> float:
    """Fraction of the queries with a positive whose best positive's exact rank (1 = top, query excluded) is > reach.

    Queries without a positive in the batch are not counted. Builds the B×B similarity matrix.

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> out_of_reach_fraction(e, torch.tensor([0, 1, 0, 1]), reach=1)  # every best positive is ranked 2nd
        1.0
    """
    with torch.no_grad():
        e = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
        sim = e @ e.T
        sim.fill_diagonal_(-math.inf)
        same = labels.view(-1, 1) == labels.view(1, -1)
        same.fill_diagonal_(False)
        has_positive = same.any(dim=1)
        if not bool(has_positive.any()):
            return 0.0
        best = sim.masked_fill(~same, -math.inf).max(dim=1).values
        rank = (sim > best.view(-1, 1)).sum(dim=1) + 1
        return float((rank[has_positive] > reach).float().mean())


def validation_collapse(curve: Sequence[float], floor: float | None = None, ratio: float = 0.5) -> str | None:
    """A message if the last value of ``curve`` is below ``ratio`` × the best earlier value (or × ``floor``).

    ``curve`` is the validation recall after each evaluation; ``floor`` that of the untrained (or pretrained)
    network. None when nothing collapsed.

    Example:
        >>> validation_collapse([0.30, 0.42, 0.12])
        'validation recall fell to 0.12, below 0.5 × the best so far (0.42)'
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
    if len(curve) == 0:
        return None
    last, earlier = curve[-1], list(curve[:-1])
    if earlier and last < ratio * max(earlier):
        return f"validation recall fell to {last:.2f}, below {ratio} × the best so far ({max(earlier):.2f})"
    if floor is not None and last < ratio * floor:
        return f"validation recall fell to {last:.2f}, below {ratio} × the untrained network's ({floor:.2f})"
    return None


class CollapseMonitor:
    """Watches batches and validation results; warns once per kind of collapse.

    Args:
        max_mean_cosine: a batch whose mean pairwise cosine exceeds this has collapsed to a point.
        validation_ratio: see :func:`validation_collapse`.
        stall_steps, loss_tolerance: see :meth:`observe_loss`.

    Example:
        >>> monitor = CollapseMonitor()
        >>> monitor.observe_batch(torch.randn(64, 16))
        >>> monitor.observe_validation([0.3, 0.4])
        >>> monitor.collapsed
        False
    """

    def __init__(
        self,
        max_mean_cosine: float = 0.9,
        validation_ratio: float = 0.5,
        stall_steps: int = 10,
        loss_tolerance: float = 0.005,
    ):
        if not -1.0 < max_mean_cosine < 1.0:
            raise ValueError(f"max_mean_cosine must be in (-1, 1), got {max_mean_cosine!r}")
        self.max_mean_cosine = float(max_mean_cosine)
        self.validation_ratio = validation_ratio
        self.stall_steps = check_positive_int(stall_steps, "stall_steps")
        self.loss_tolerance = check_positive_float(loss_tolerance, "loss_tolerance")
        self._stalled = 0
        self.messages: list[str] = []
        self._warned: set[str] = set()

    @property
    def collapsed(self) -> bool:
        return bool(self.messages)

    def _warn(self, kind: str, message: str) -> None:
        self.messages.append(message)
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"training collapse: {message}; {_ADVICE}", CollapseWarning, stacklevel=3)

    def observe_batch(self, embeddings: torch.Tensor) -> None:
        cosine = mean_pairwise_cosine(embeddings)
        if cosine > self.max_mean_cosine:
            self._warn("embedding", f"the batch's embeddings have mean pairwise cosine {cosine:.3f}")

    def observe_loss(self, value: float, ceiling: float = 1.0) -> None:
        """Warn once the loss has stayed within ``loss_tolerance`` of ``ceiling`` for ``stall_steps`` steps.

        RS@k's loss is 1 − the mean surrogate recall: at its ceiling of 1 no query of the batch is within the
        surrogate's reach, so its gradient is about zero and the step changes nothing that matters.
        """
        self._stalled = self._stalled + 1 if value >= ceiling - self.loss_tolerance else 0
        if self._stalled == self.stall_steps:
            self._warn(
                "loss",
                f"the loss has stayed within {self.loss_tolerance} of its ceiling {ceiling} for {self.stall_steps} "
                "steps: the surrogate reaches no query of the batch (its positives rank far beyond the largest k), "
                "so its gradient is about zero",
            )

    def loss_hook(self, loss_name: str = "metric_loss", ceiling: float = 1.0) -> Callable[[Mapping[str, float]], None]:
        """A ``loss_monitor`` for :class:`~pml_recallk.MemoryEfficientTrainer`: :meth:`observe_loss` of the step's
        ``loss_name`` against ``ceiling`` (RS@k's: 1). The trainer knows no loss; whoever builds it passes this."""

        def observe(losses: Mapping[str, float]) -> None:
            self.observe_loss(float(losses[loss_name]), ceiling=ceiling)

        return observe

    def observe_validation(self, curve: Sequence[float], floor: float | None = None) -> None:
        message = validation_collapse(curve, floor, self.validation_ratio)
        if message is not None:
            self._warn("validation", message)

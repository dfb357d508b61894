"""RankTemperatureSchedule: anneal RS@k's rank temperature during training, as an lr schedule does the rate."""

from __future__ import annotations

import torch

from .._checks import check_int, check_positive_float, check_positive_int
from .recall_k_surrogate_loss import find_recall_k_surrogate


class RankTemperatureSchedule:
    r"""Set the ``rank_temperature`` of an RS@k loss from the step number, geometrically from ``start`` to ``end``::

        τ(t) = start · (end / start) ^ (min(t, T − 1) / (T − 1))      t = 0 … T − 1 (T = ``total_steps``)

    A larger τ spreads each soft rank's gradient over more of the database (σ' is non-negligible only within a few
    τ of a positive's similarity); a smaller one brings the soft rank closer to the true rank. Starting wide and
    ending at the paper's 0.01 reaches more of the batch early. Call :meth:`step` after every optimiser step (in
    PML, from the trainer's ``end_of_iteration_hook``), or :meth:`set_step` with the global step, which is all the
    state there is: a resumed run sets it from its iteration count.

    Args:
        loss: a :class:`RecallKSurrogateLoss`, or a wrapper around one (``SimilarityMixup``, ``CrossBatchMemory``:
            anything whose ``loss`` attribute leads to it).
        start: τ at step 0; ``end``: τ at the last step ``total_steps − 1`` and after it.
        total_steps: the optimiser steps of the whole run.
        last_step: the step the loss is set for now (0 for a new run).

    Example:
        >>> from pml_recallk import RecallKSurrogateLoss
        >>> from pml_recallk.losses import RankTemperatureSchedule
        >>> loss_fn = RecallKSurrogateLoss()
        >>> schedule = RankTemperatureSchedule(loss_fn, start=0.04, end=0.01, total_steps=3)
        >>> loss_fn.rank_temperature
        0.04
        >>> schedule.step()
        >>> round(loss_fn.rank_temperature, 6)
        0.02
    """

    def __init__(self, loss: torch.nn.Module, start: float, end: float, total_steps: int, last_step: int = 0):
        self.loss = find_recall_k_surrogate(loss)
        if self.loss is None:
            raise TypeError(
                "RankTemperatureSchedule needs a RecallKSurrogateLoss (or a wrapper around one), got "
                f"{type(loss).__name__}"
            )
        self.start = check_positive_float(start, "start")
        self.end = check_positive_float(end, "end")
        self.total_steps = check_positive_int(total_steps, "total_steps")
        self.set_step(last_step)

    def temperature(self, step: int) -> float:
        """τ at ``step`` (0-based)."""
        step = check_int(step, "step", minimum=0)
        if self.total_steps == 1:
            return self.end
        return self.start * (self.end / self.start) ** (min(step, self.total_steps - 1) / (self.total_steps - 1))

    def set_step(self, step: int) -> None:
        """Set the loss's temperature for ``step`` (the number of optimiser steps taken so far)."""
        self.last_step = check_int(step, "step", minimum=0)
        self.loss.rank_temperature = self.temperature(self.last_step)

    def step(self) -> None:
        """One optimiser step was taken: set the temperature of the next."""
        self.set_step(self.last_step + 1)

"""The plots of a training run: ``loss_curve.png`` and ``recall_curves.png``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file backend
import numpy as np  # noqa: E402

from .metrics import metric_title, sorted_by_k  # noqa: E402

if TYPE_CHECKING:
    from .checkpoints import History

__all__ = ["plot_history", "recall_axis_limits", "sorted_by_k"]


def recall_axis_limits(values: list[float], margin: float = 0.02) -> tuple[float, float]:
    """A y-range that holds every value with a small margin, within [0, 1.02]: the curves are not squashed."""
    low, high = min(values), max(values)
    pad = max(margin, 0.05 * (high - low))
    return max(0.0, low - pad), min(1.02, high + pad)


def plot_history(history: History, output_dir: str | Path) -> None:
    """``loss_curve.png`` (loss per iteration) and ``recall_curves.png`` (validation Recall@k per epoch, epoch 0
    the untrained model, on an axis zoomed to the data)."""
    output_dir = Path(output_dir)
    if history.loss:
        iterations, losses = zip(*history.loss)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(np.asarray(iterations) + 1, losses, lw=1)
        ax.set(xlabel="iteration", ylabel="training loss", title="Training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(output_dir / "loss_curve.png", dpi=120)
        plt.close(fig)

    rows = [{"epoch": 0, **history.untrained_val}, *history.val]
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = []
    for name, _ in sorted_by_k(history.untrained_val):
        values = [r[name] for r in rows]
        plotted += values
        ax.plot([r["epoch"] for r in rows], values, marker="o", label=metric_title(name))
    if history.best_epoch is not None:
        ax.axvline(history.best_epoch, color="grey", ls="--", lw=1, label="best epoch")
    ax.set(xlabel="epoch (0 = untrained)", ylabel="Recall@k", title="Validation Recall@k")
    ax.set_ylim(*recall_axis_limits(plotted))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "recall_curves.png", dpi=120)
    plt.close(fig)

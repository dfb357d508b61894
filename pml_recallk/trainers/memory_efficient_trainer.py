"""PML's MetricLossOnly trainer with very large batches: gradients through the gradient cache."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils import common_functions as c_f
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._checks import check_bool, check_choice, check_positive_int
from .gradient_cache import NonFiniteStepWarning, cached_backward, check_amp_supported

BATCHNORM_POLICIES = ("freeze", "chunk_statistics")


class MemoryEfficientTrainer(MetricLossOnly):
    """``MetricLossOnly`` whose step back-propagates the batch through ``cached_backward``.

    The batch of ``batch_size`` inputs is embedded in chunks of ``chunk_size``, so the peak activation
    memory is that of one chunk while the gradient is exactly that of the whole batch (docs/method.md §4). Each
    step: embed all chunks without grad → mine (``tuple_miner``) on the detached embeddings → weighted
    sum of the losses → ``G = ∂total_loss/∂E`` → re-embed each chunk with grad and back-propagate its rows
    of ``G`` → (AMP: unscale) → gradient clippers → optimizers. The rest of PML's trainer is unchanged:
    ``trunk``/``embedder``, optimizers, lr schedulers, gradient clippers, loss weights, samplers, hooks
    and ``HookContainer``.

    Args:
        *args, **kwargs: those of PML's ``MetricLossOnly`` (``models``, ``optimizers``, ``batch_size``,
            ``loss_funcs``, ``dataset``, ...).
        chunk_size: inputs per forward pass; the peak activation memory is that of this many inputs.
        amp: None, ``torch.float16`` or ``torch.bfloat16``: forwards under ``torch.autocast`` on the
            device of ``data_device``, the loss in float32. ``torch.float16`` also creates
            ``self.grad_scaler`` (a ``torch.amp.GradScaler``, on CUDA or CPU), which scales the cached
            gradient, is unscaled before the gradient clippers and skips steps whose gradients overflow.
            The scaler is not saved by ``HookContainer``.
        batchnorm: ``"freeze"`` (default, as in the paper): every BatchNorm of the trunk and embedder is in
            eval mode during training: running statistics fixed, affine parameters still trained; the
            gradient is then that of the unchunked batch. ``"chunk_statistics"``: BatchNorm trains and normalises
            each chunk by the chunk's own statistics, and its running statistics are updated once per chunk per
            step (not again in the second pass).
        stop_on_nan: NaN or infinite embeddings from the model, or a NaN or infinite total loss, raise
            ``FloatingPointError`` naming the epoch and iteration before any optimizer step (True), or skip that
            step with a warning in PML's logger (False).
        progress_bar: show a progress bar over the chunks of each step.
        loss_monitor: called after every step that was taken (not a skipped non-finite one) with the step's
            losses as floats (``"metric_loss"``, ``"total_loss"``, ...): a hook for whoever knows what the loss's
            values mean, e.g. ``CollapseMonitor().loss_hook()`` (:mod:`pml_recallk.trainers.collapse`), which
            warns when RS@k stays at its ceiling of 1, where it has no gradient.

    Example::

        trainer = MemoryEfficientTrainer(
            models={"trunk": trunk}, optimizers={"trunk_optimizer": optimizer}, batch_size=4000,
            loss_funcs={"metric_loss": RecallKSurrogateLoss()}, dataset=train_set,
            sampler=MPerClassSampler(train_set.labels, m=4, batch_size=4000), chunk_size=200,
            amp=torch.bfloat16, loss_monitor=CollapseMonitor().loss_hook(),
        )
        trainer.train(num_epochs=10)
    """

    def __init__(
        self,
        *args,
        chunk_size: int = 128,
        amp: torch.dtype | None = None,
        batchnorm: str = "freeze",
        stop_on_nan: bool = True,
        progress_bar: bool = False,
        loss_monitor: Callable[[Mapping[str, float]], None] | None = None,
        **kwargs,
    ):
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self.amp = amp
        self.batchnorm = _check_batchnorm(batchnorm)
        self.stop_on_nan = check_bool(stop_on_nan, "stop_on_nan")
        self.progress_bar = check_bool(progress_bar, "progress_bar")
        if loss_monitor is not None and not callable(loss_monitor):
            raise TypeError(f"loss_monitor must be a callable taking the step's losses, got {loss_monitor!r}")
        self.loss_monitor = loss_monitor
        super().__init__(*args, **kwargs)
        device_type = torch.device(self.data_device).type
        self.grad_scaler = None
        if amp is not None:
            check_amp_supported(device_type, amp)
            if amp == torch.float16:
                self.grad_scaler = torch.amp.GradScaler(device_type)

    def forward_and_backward(self):
        self.zero_losses()
        self.zero_grad()
        self.update_loss_weights()
        # Both passes of the gradient cache: fills self.losses (weighted, with total_loss) and every .grad.
        self.calculate_loss(self.get_batch())
        if not torch.isfinite(torch.as_tensor(self.losses["total_loss"])):
            c_f.LOGGER.warning(
                "total_loss is %s at %s (NaN or inf from the model or the loss); skipping this step",
                float(self.losses["total_loss"]),
                self._where(),
            )
            return
        if self.loss_monitor is not None:
            self.loss_monitor({name: float(value) for name, value in self.losses.items()})
        self.clip_gradients()
        self.step_optimizers()

    def get_batch(self):
        """PML's ``get_batch``, with what the dataset yields checked: (data tensor of one shape, integer label)
        items, else a ``ValueError`` that says so instead of a failure deep inside torch, PML or numpy."""
        try:
            self.dataloader_iter, curr_batch = c_f.try_next_on_generator(self.dataloader_iter, self.dataloader)
        except (RuntimeError, TypeError) as error:
            if not any(words in str(error) for words in _COLLATE_FAILURES):
                raise
            raise ValueError(f"{_DATASET_CONTRACT}; batching them failed: {str(error).strip()}") from error
        data, labels = _check_batch(self.data_and_label_getter(curr_batch))
        labels = c_f.process_label(labels, self.label_hierarchy_level, self.label_mapper)
        return self.maybe_do_batch_mining(data, labels)

    def calculate_loss(self, curr_batch):
        data, labels = curr_batch
        # The trainer reports a skipped step itself, with the epoch and iteration.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteStepWarning)
            try:
                loss = cached_backward(
                    _EmbeddingModel(self),
                    data,
                    labels,
                    self.compute_total_loss,
                    self.chunk_size,
                    self.grad_scaler,
                    amp=self.amp,
                    stop_on_nan=self.stop_on_nan,
                    progress_bar=self.progress_bar,
                )
            except FloatingPointError as error:
                raise FloatingPointError(f"{self._where()}: {error}; no optimizer step was taken") from error
        if not torch.isfinite(loss):  # the embeddings were not finite: the loss was not computed
            self.losses["total_loss"] = loss
        # The graph of the loss is spent; keep the values only (they are logged and printed).
        for name, value in self.losses.items():
            if isinstance(value, torch.Tensor):
                self.losses[name] = value.detach()

    def compute_total_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weighted total loss of a whole batch of (leaf) embeddings, recorded in ``self.losses``."""
        indices_tuple = self.maybe_mine_embeddings(embeddings, labels)
        self.losses["metric_loss"] = self.maybe_get_metric_loss(embeddings, labels, indices_tuple)
        self.loss_tracker.update(self.loss_weights)
        return self.losses["total_loss"]

    def clip_gradients(self):
        if self.grad_scaler is not None:
            for optimizer in self._optimizers_to_step():
                self.grad_scaler.unscale_(optimizer)
        super().clip_gradients()

    def step_optimizers(self):
        if self.grad_scaler is None:
            super().step_optimizers()
            return
        for optimizer in self._optimizers_to_step():
            self.grad_scaler.step(optimizer)
        self.grad_scaler.update()

    def set_to_train(self):
        super().set_to_train()
        if self.batchnorm == "freeze":
            for model in self.models.values():
                model.apply(_set_batchnorm_to_eval)

    def _optimizers_to_step(self) -> list[torch.optim.Optimizer]:
        # The same rule as BaseTrainer.step_optimizers: frozen models' optimizers do not step.
        return [
            optimizer
            for name, optimizer in self.optimizers.items()
            if c_f.regex_replace("_optimizer$", "", name) not in self.freeze_these
        ]

    def _where(self) -> str:
        return f"epoch {getattr(self, 'epoch', '?')}, iteration {getattr(self, 'iteration', '?')}"


_DATASET_CONTRACT = (
    "MemoryEfficientTrainer needs a dataset whose items are (data, label) pairs: data a tensor of the same shape for "
    "every item (resize or crop in the dataset's transform), label an integer class id (or pass "
    "data_and_label_getter to pick them from other items)"
)
# What torch's default_collate says when a batch's items cannot be stacked.
_COLLATE_FAILURES = ("stack expects each tensor to be equal size", "default_collate: batch must contain")


def _check_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(data, labels) of a collated batch, or a ValueError naming what the dataset yielded instead."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        parts = f"{len(batch)} parts" if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise ValueError(f"{_DATASET_CONTRACT}; its items have {parts}")
    data, labels = batch
    if not torch.is_tensor(data):
        raise ValueError(f"{_DATASET_CONTRACT}; its data are {type(data).__name__}, not tensors")
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        labels = torch.from_numpy(labels)
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        example = labels[0] if isinstance(labels, (list, tuple)) and labels else labels
        kind = getattr(labels, "dtype", type(example).__name__)
        raise ValueError(
            f"{_DATASET_CONTRACT}; its labels are {kind} (e.g. {example!r}): map each class to an int, e.g. "
            "{name: i for i, name in enumerate(sorted(names))}"
        )
    return data, labels


class _EmbeddingModel(nn.Module):
    """The trainer's ``compute_embeddings`` as a module, so that ``cached_backward`` sees its models
    (their device, BatchNorm layers and DDP wrappers) and subclasses' overrides still apply."""

    def __init__(self, trainer: MemoryEfficientTrainer):
        super().__init__()
        self.models = nn.ModuleDict(trainer.models)
        self.compute_embeddings = trainer.compute_embeddings

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return self.compute_embeddings(data)


def _check_batchnorm(policy) -> str:
    return check_choice(policy, BATCHNORM_POLICIES, "batchnorm")


def _set_batchnorm_to_eval(module: nn.Module) -> None:
    if isinstance(module, _BatchNorm):
        module.eval()

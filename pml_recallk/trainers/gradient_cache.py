"""Exact full-batch gradients with activation memory bounded by one chunk (a gradient cache)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext

import torch
import torch.distributed as dist
import tqdm
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

from .._checks import check_bool, check_positive_int
from ._ddp import (
    check_buffers_not_broadcast,
    check_ranks_hold_different_items,
    check_single_gather,
    combine_running_statistics,
    running_statistics,
)
from ._rng import RngSnapshot, cuda_rng_in_use

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

AMP_DTYPES = (torch.float16, torch.bfloat16)


def cached_backward(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn,
    chunk_size: int,
    grad_scaler: torch.amp.GradScaler | None = None,
    *,
    amp: torch.dtype | None = None,
    stop_on_nan: bool = True,
    progress_bar: bool = False,
) -> torch.Tensor:
    """Back-propagate ``loss_fn(model(inputs), labels)`` holding the activations of one chunk at a time.

    With ``E = model(inputs)`` (B×d) and ``G = ∂L/∂E``, the parameter gradient is
    ``∂L/∂θ = Σ_chunks (∂E_c/∂θ)ᵀ G_c`` (docs/method.md §4), so it is built chunk by chunk:

    1. forward every chunk under ``torch.no_grad()``, saving the random generators (CPU, CUDA) before each;
    2. make the concatenated embeddings a leaf, compute ``L = loss_fn(E, labels)`` (in float32 when ``amp`` is
       set) and back-propagate it to ``G`` (and to any parameters of the loss);
    3. for each chunk again: replay its generator states, forward with grad and ``E_c.backward(G_c)``.

    Afterwards every ``.grad`` holds (accumulates) what ``loss_fn(cat([model(c) for c in chunks]), labels)
    .backward()`` would give: the plain full-batch gradient when the model treats samples independently
    (BatchNorm frozen or absent). Train-mode BatchNorm normalises each chunk by its own statistics and updates its
    running statistics once per chunk (pass 2's updates are undone). Random generators end where a plain chunked
    step leaves them. docs/cached_backward.md has the details, DDP and the whole-training-set recipe.

    Args:
        model: the network; each chunk is moved to the device of its first parameter. With a
            ``DistributedDataParallel`` module inside, the loss sees the embeddings of all ranks (the global batch).
        inputs: (B, ...) batch, augmented once beforehand.
        labels: (B, ...) labels given to ``loss_fn`` unchanged (gathered across ranks under DDP).
        loss_fn: ``loss_fn(embeddings, labels) -> scalar tensor``: any PML loss or wrapper, or any function.
        chunk_size: inputs per forward; the last chunk may be smaller.
        grad_scaler: a ``torch.amp.GradScaler``; ``G`` comes from ``grad_scaler.scale(loss)``.
        amp: None, ``torch.float16`` or ``torch.bfloat16``: the forwards under ``torch.autocast``, the loss in
            float32.
        stop_on_nan: when the model's embeddings or the loss are NaN or infinite, raise ``FloatingPointError``
            (True), or warn (``NonFiniteStepWarning``) and return a non-finite loss (False). Either way no
            gradient is written, so the weights are not corrupted; the embeddings are checked before the loss runs.
        progress_bar: show a tqdm bar over the chunks of both passes.

    Returns:
        The loss, detached (the same on every rank under DDP); NaN when the model's embeddings were not finite.

    Example::

        >>> import torch
        >>> from pytorch_metric_learning.losses import MultiSimilarityLoss
        >>> from pml_recallk import cached_backward
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8))
        >>> images, labels = torch.randn(40, 3, 4, 4), torch.arange(10).repeat_interleave(4)
        >>> loss = cached_backward(model, images, labels, MultiSimilarityLoss(), chunk_size=16)
        >>> model[1].weight.grad.shape
        torch.Size([8, 48])
    """
    check_positive_int(chunk_size, "chunk_size")
    check_bool(stop_on_nan, "stop_on_nan")
    _check_batch(inputs, labels)
    step = _CachedStep(model, inputs, chunk_size, amp, progress_bar)
    if step.group is not None:
        check_single_gather(loss_fn)
    with step.bar:
        embeddings, labels, first = step.embed_without_grad(labels)
        if not bool(torch.isfinite(embeddings).all()):
            nan = torch.tensor(float("nan"), device=embeddings.device)
            return _nonfinite(stop_on_nan, "the model returned NaN or infinite embeddings", nan)
        embeddings = embeddings.detach().requires_grad_()
        # The loss runs outside autocast: similarity differences divided by small temperatures need float32.
        with torch.autocast(step.device.type, enabled=False) if amp is not None else nullcontext():
            loss = loss_fn(embeddings, labels)
        _check_loss(loss)
        if not torch.isfinite(loss):
            return _nonfinite(stop_on_nan, f"the loss is {loss.item()}", loss.detach())
        (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
        if embeddings.grad is not None:  # else the loss does not depend on the embeddings: no gradient to pass on
            step.backpropagate(embeddings.grad[first : first + len(inputs)])
    return loss.detach()


class NonFiniteStepWarning(RuntimeWarning):
    """``cached_backward(..., stop_on_nan=False)`` skipped a step whose embeddings or loss were not finite."""


def _nonfinite(stop_on_nan: bool, what: str, value: torch.Tensor) -> torch.Tensor:
    if stop_on_nan:
        raise FloatingPointError(f"{what}; no gradient was written (pass stop_on_nan=False to skip such a step)")
    warnings.warn(f"{what}; no gradient was written, skip this step", NonFiniteStepWarning, stacklevel=3)
    return value


class _CachedStep:
    """The two passes of one cached step over the chunks of ``inputs``, with their RNG snapshots and DDP state."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, chunk_size: int, amp, progress_bar: bool):
        self.model, self.amp, self.chunk_size = model, amp, chunk_size
        self.device = _model_device(model, inputs)
        if amp is not None:
            check_amp_supported(self.device.type, amp)
        self.ddp_modules = [m for m in model.modules() if isinstance(m, DistributedDataParallel)]
        self.group = self.ddp_modules[0].process_group if self.ddp_modules else None
        if self.group is not None:
            check_buffers_not_broadcast(self.ddp_modules)
            _check_same_length_on_every_rank(len(inputs), self.group, self.device)
        self.chunks = inputs.split(chunk_size)
        self.include_cuda_rng = cuda_rng_in_use(self.device)
        self.bar = tqdm.tqdm(total=2 * len(self.chunks), desc="cached_backward", disable=not progress_bar, leave=False)

    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext():
            return self.model(chunk.to(self.device, non_blocking=True))

    def _first_forward(self, chunk: torch.Tensor) -> torch.Tensor:
        try:
            return self.forward(chunk)
        except ValueError as error:
            # torch's train-mode BatchNorm refuses one sample per channel; the cause here is how the batch was split.
            if "Expected more than 1 value per channel" not in str(error):
                raise
            raise ValueError(
                f"chunk_size={self.chunk_size} leaves a chunk of {len(chunk)} input(s), and a train-mode BatchNorm "
                f"cannot normalise a single sample ({error}); choose a chunk_size that does not leave a last chunk of "
                "1 input, or freeze BatchNorm (eval mode)"
            ) from None

    def embed_without_grad(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Pass 1: the (global, under DDP) embeddings in float32 under amp, their labels, and where ours start."""
        self.rng_snapshots, outputs = [], []
        statistics_before = running_statistics(self.model) if self.group is not None else []
        with torch.no_grad():
            for chunk in self.chunks:
                self.rng_snapshots.append(RngSnapshot.capture(self.include_cuda_rng))
                outputs.append(_checked_embeddings(self._first_forward(chunk), len(chunk)))
                self.bar.update()
        self.norm_statistics, self.running_statistics_before = _running_statistics(self.model), statistics_before
        embeddings = torch.cat(outputs)
        del outputs
        if self.amp is not None and embeddings.dtype in AMP_DTYPES:
            embeddings = embeddings.float()
        if self.group is None:
            return embeddings, labels, 0
        # Gathered before any check, so that every rank takes the same branch (a lone rank returning would hang).
        return _gather_global_batch(embeddings, labels, self.group)

    def backpropagate(self, embedding_grad: torch.Tensor) -> None:
        """Pass 2: replay each chunk with grad and back-propagate its rows of ∂L/∂E."""
        _check_trainable(self.model)
        if self.group is not None:
            # DDP averages gradients over ranks; the full-batch gradient is their sum.
            embedding_grad = embedding_grad * dist.get_world_size(self.group)
        for index, (chunk, chunk_grad, rng) in enumerate(
            zip(self.chunks, embedding_grad.split(self.chunk_size), self.rng_snapshots)
        ):
            is_last = index == len(self.chunks) - 1
            with _no_sync(self.ddp_modules, enabled=not is_last), rng.replayed():
                chunk_embeddings = self.forward(chunk)
                chunk_embeddings.backward(chunk_grad.to(chunk_embeddings.dtype))
            self.bar.update()
        _restore(self.norm_statistics)
        if self.group is not None:
            combine_running_statistics(self.running_statistics_before, len(self.chunks), self.group)


def check_amp_supported(device_type: str, amp: torch.dtype) -> None:
    """Raise ``ValueError`` unless ``torch.autocast(device_type, dtype=amp)`` really runs in ``amp``.

    torch silently disables autocast (with a warning) for a dtype a device cannot do; a large-batch run
    would then train in float32 without anyone noticing.
    """
    if not isinstance(amp, torch.dtype):
        raise TypeError(
            f"amp must be None or a torch dtype, torch.float16 or torch.bfloat16 (e.g. amp=torch.bfloat16); got {amp!r}"
        )
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, torch.float16 or torch.bfloat16 (e.g. amp=torch.bfloat16); got {amp!r}")
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"amp={amp} was requested but torch.autocast is not available on '{device_type}'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=amp):
                works = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == amp
    except RuntimeError as error:
        raise ValueError(f"amp={amp} is not supported on '{device_type}': {error}") from error
    if not works:
        raise ValueError(f"amp={amp} is not supported by torch.autocast on '{device_type}'; use amp=None")


def _check_trainable(model: nn.Module) -> None:
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise ValueError(
            "model has no parameter that requires grad, and cached_backward back-propagates the loss into the model's "
            "parameters: give it a model with trainable parameters, or for a fixed model compute "
            "loss_fn(model(inputs), labels) directly"
        )


def _check_batch(inputs: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"inputs and labels must be tensors; got {type(inputs).__name__} and {type(labels).__name__}")
    if inputs.ndim == 0 or len(inputs) == 0:
        raise ValueError("inputs must hold at least one sample along dimension 0")
    if labels.ndim == 0 or len(labels) != len(inputs):
        raise ValueError(
            f"inputs and labels must have the same length; got {len(inputs)} inputs and labels of shape "
            f"{tuple(labels.shape)}"
        )


def _model_device(model: nn.Module, inputs: torch.Tensor) -> torch.device:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    for tensor in model.parameters():
        return tensor.device
    return inputs.device


def _checked_embeddings(output: object, chunk_length: int) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or len(output) != chunk_length:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"the model must return a 2-D tensor of embeddings (chunk length {chunk_length}, embedding "
            f"size); got {shape}"
        )
    if not output.is_floating_point():
        raise ValueError(
            f"the model must return floating-point embeddings (gradients flow through them); got {output.dtype}"
        )
    return output


def _check_loss(loss: object) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor; got {shape}")
    if torch.isfinite(loss) and not loss.requires_grad:
        raise ValueError("loss_fn returned a tensor that does not require grad; it must depend on the embeddings")


def _check_same_length_on_every_rank(length: int, group: dist.ProcessGroup, device: torch.device) -> None:
    # Checked before any forward: DDP broadcasts buffers at every forward, so ranks with different numbers
    # of chunks would wait on each other forever.
    lengths = [torch.empty(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(lengths, torch.tensor([length], device=device), group=group)
    lengths = [int(x) for x in lengths]
    if len(set(lengths)) != 1:
        raise ValueError(f"with DDP every rank must hold the same number of inputs; got {lengths} per rank")


def _gather_global_batch(
    embeddings: torch.Tensor, labels: torch.Tensor, group: dist.ProcessGroup
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All ranks' embeddings and labels in rank order, and where this rank's rows start."""
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    gathered = []
    for tensor in (embeddings, labels.to(embeddings.device)):
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        gathered.append(parts)
    check_ranks_hold_different_items(*gathered)
    return torch.cat(gathered[0]), torch.cat(gathered[1]), rank * len(embeddings)


@contextmanager
def _no_sync(ddp_modules: list[DistributedDataParallel], enabled: bool) -> Iterator[None]:
    with ExitStack() as stack:
        if enabled:
            for module in ddp_modules:
                stack.enter_context(module.no_sync())
        yield


def _running_statistics(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of the running statistics that a train-mode forward of `model` would update."""
    buffers = []
    for module in model.modules():
        if isinstance(module, _NormBase) and module.training and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    buffers.append((buffer, buffer.clone()))
    return buffers


def _restore(buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buffer, saved in buffers:
            buffer.copy_(saved)

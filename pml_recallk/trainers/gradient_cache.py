"""Exact full-batch gradients with activation memory bounded by one chunk (a gradient cache)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from numbers import Integral

import torch
import torch.distributed as dist
import tqdm
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

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
    ``∂L/∂θ = Σ_chunks (∂E_c/∂θ)ᵀ G_c``, so it can be built chunk by chunk:

    1. forward every chunk of ``chunk_size`` inputs under ``torch.no_grad()``, saving the random number
       generators (CPU and every CUDA device) before each chunk;
    2. make the concatenated embeddings a leaf, compute ``L = loss_fn(E, labels)`` (in float32 when
       ``amp`` is set) and back-propagate it to ``G`` (and to any parameters of the loss);
    3. for each chunk again: replay its generator states, forward with grad and ``E_c.backward(G_c)``.

    Afterwards every ``.grad`` holds (accumulates, like ``backward()``) what
    ``loss_fn(cat([model(c) for c in chunks]), labels).backward()`` would give. That is also the gradient
    of the plain unchunked ``loss_fn(model(inputs), labels)`` when the model treats samples independently:
    BatchNorm in eval mode (frozen) or absent, and no random ops (dropout draws one mask per call).

    The random generators: pass 1 draws exactly what a plain forward of the same chunks in order would,
    the loss draws after it (as a plain step would), and pass 2 replays each chunk's numbers without
    moving the global generators. A seeded cached step therefore reproduces a seeded plain chunked step,
    and the generators end where that step would leave them.

    BatchNorm in train mode normalises each chunk by its own statistics (as a plain chunked forward
    would) and updates its running statistics once per chunk, in pass 1; pass 2's updates are undone.
    With ``DistributedDataParallel``, every rank must hold the same number of inputs.

    Args:
        model: the network; each chunk is moved to the device of its first parameter, so the whole
            batch may stay in host memory. If it is (or contains) a ``DistributedDataParallel`` module,
            the embeddings of all ranks form the global batch the loss sees, every rank back-propagates
            its own chunks (``no_sync()`` for all but the last) and, after DDP averages them, the
            gradients equal those of one process holding the whole global batch. Use a plain loss then,
            not PML's ``DistributedLossWrapper``.
        inputs: (B, ...) batch, augmented once beforehand (augmentation inside the model is replayed
            only if it draws from torch's generators).
        labels: (B, ...) labels given to ``loss_fn`` unchanged (gathered across ranks under DDP).
        loss_fn: ``loss_fn(embeddings, labels) -> scalar tensor``: any PML loss or wrapper
            (e.g. ``SimilarityMixup``), or any function of the embeddings.
        chunk_size: inputs per forward; the last chunk may be smaller.
        grad_scaler: a ``torch.amp.GradScaler``. ``G`` comes from ``grad_scaler.scale(loss)``, so the
            parameter gradients are scaled as after ``grad_scaler.scale(loss).backward()``; call
            ``grad_scaler.step(optimizer)`` and ``grad_scaler.update()`` as usual, which skip the step
            when a gradient overflowed.
        amp: None, ``torch.float16`` or ``torch.bfloat16``: run the forwards under ``torch.autocast``
            with that dtype and compute the loss outside autocast on float32 embeddings.
        stop_on_nan: if the loss is NaN or infinite, raise ``FloatingPointError`` (True) or return it
            (False); in both cases no gradient is written, so the weights are not corrupted.
        progress_bar: show a tqdm bar over the chunks of both passes.

    Returns:
        The loss, detached (the same on every rank under DDP).

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
    check_chunk_size(chunk_size)
    _check_batch(inputs, labels)
    device = _model_device(model, inputs)
    if amp is not None:
        check_amp_supported(device.type, amp)
    ddp_modules = [m for m in model.modules() if isinstance(m, DistributedDataParallel)]
    group = ddp_modules[0].process_group if ddp_modules else None
    if group is not None:
        _check_same_length_on_every_rank(len(inputs), group, device)
    input_chunks = inputs.split(chunk_size)
    include_cuda_rng = cuda_rng_in_use(device)

    def forward(chunk: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
            return model(chunk.to(device, non_blocking=True))

    bar = tqdm.tqdm(total=2 * len(input_chunks), desc="cached_backward", disable=not progress_bar, leave=False)
    with bar:
        rng_snapshots, outputs = [], []
        with torch.no_grad():
            for chunk in input_chunks:
                rng_snapshots.append(RngSnapshot.capture(include_cuda_rng))
                outputs.append(_checked_embeddings(forward(chunk), len(chunk)))
                bar.update()
        norm_statistics = _running_statistics(model)

        embeddings = torch.cat(outputs)
        del outputs
        if amp is not None and embeddings.dtype in AMP_DTYPES:
            embeddings = embeddings.float()
        first = 0
        if group is not None:
            embeddings, labels, first = _gather_global_batch(embeddings, labels, group)
        embeddings = embeddings.detach().requires_grad_()
        # The loss runs outside autocast: similarity differences divided by small temperatures need float32.
        with torch.autocast(device.type, enabled=False) if amp is not None else nullcontext():
            loss = loss_fn(embeddings, labels)
        _check_loss(loss, stop_on_nan)
        if not torch.isfinite(loss):
            return loss.detach()
        (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
        if embeddings.grad is None:  # the loss does not depend on the embeddings: no gradient to pass on
            return loss.detach()

        embedding_grad = embeddings.grad[first : first + len(inputs)]
        if group is not None:
            # DDP averages gradients over ranks; the full-batch gradient is their sum.
            embedding_grad = embedding_grad * dist.get_world_size(group)
        for index, (chunk, chunk_grad, rng) in enumerate(
            zip(input_chunks, embedding_grad.split(chunk_size), rng_snapshots)
        ):
            is_last = index == len(input_chunks) - 1
            with _no_sync(ddp_modules, enabled=not is_last), rng.replayed():
                chunk_embeddings = forward(chunk)
                chunk_embeddings.backward(chunk_grad.to(chunk_embeddings.dtype))
            bar.update()
        _restore(norm_statistics)
    return loss.detach()


def check_amp_supported(device_type: str, amp: torch.dtype) -> None:
    """Raise ``ValueError`` unless ``torch.autocast(device_type, dtype=amp)`` really runs in ``amp``.

    torch silently disables autocast (with a warning) for a dtype a device cannot do; a large-batch run
    would then train in float32 without anyone noticing.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, torch.float16 or torch.bfloat16; got {amp!r}")
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


def check_chunk_size(chunk_size: int) -> None:
    """Raise ``TypeError`` unless `chunk_size` is an int, ``ValueError`` unless it is positive."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral):
        raise TypeError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size}")


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
    return output


def _check_loss(loss: object, stop_on_nan: bool) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor; got {shape}")
    if not torch.isfinite(loss):
        if stop_on_nan:
            raise FloatingPointError(
                f"the loss is {loss.item()}; no gradient was written. Pass stop_on_nan=False to get the "
                "loss back and skip the step instead."
            )
    elif not loss.requires_grad:
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
        gathered.append(torch.cat(parts))
    return gathered[0], gathered[1], rank * len(embeddings)


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

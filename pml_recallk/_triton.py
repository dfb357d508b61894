"""Triton kernels for the sigmoid sums of a tile of soft ranks (the ``path="fused"`` of ``RecallKSurrogateLoss``).

For a tile of T queries with similarities S (T, N), positives' similarities S_p (T, P) and τ, with x = (s_qz − s_qp)/τ:

    forward      Σ_z σ(x)                              (T, P)
    backward     G[q, z] = Σ_p w_qp σ'(x)              (T, N)     and     Σ_z σ'(x)   (T, P)

Each program reduces over one axis in blocks, so the T×P×N terms are never stored (the PyTorch path holds one chunk
of them). The excluded columns' small (T, P, X) correction and the scatter onto the positives' columns stay in
PyTorch (:mod:`pml_recallk._tiled`). On CUDA the kernels are compiled; on CPU tensors they run in Triton's
interpreter, which is slow and only meant for tests (enabled with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os

import torch

from ._tiled import excluded_sigmoids, excluded_similarities, subtract_excluded_grad

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch, not with CPU-only ones
    triton = None

_BLOCK_P, _BLOCK_N = 16, 128


def check_triton_importable() -> None:
    """``ImportError``-free guard for ``path="fused"``: a ``ValueError`` saying what to do when triton is missing."""
    if triton is None:
        raise ValueError("path='fused' needs the triton package (it comes with CUDA builds of torch); use 'tiled'")


def check_triton_usable(device: torch.device) -> None:
    """The fused kernels run on CUDA, or on CPU tensors in Triton's interpreter when ``TRITON_INTERPRET=1``."""
    check_triton_importable()
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return
    raise ValueError(
        f"path='fused' runs Triton kernels on CUDA, but the embeddings are on {device}; use path='tiled' "
        "(or set TRITON_INTERPRET=1 to run the kernels in Triton's slow interpreter, for tests)"
    )


if triton is not None:

    def _sigmoid_sums(
        S,
        SP,
        OUT,
        N,
        P,
        stride_s,
        stride_sp,
        tau,
        DERIVATIVE: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):  # noqa: E501, N803
        q = tl.program_id(0)
        p_offsets = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p_offsets < P
        sp = tl.load(SP + q * stride_sp + p_offsets, mask=p_mask, other=0.0) / tau
        acc = tl.zeros([BLOCK_P], dtype=sp.dtype)
        for start in range(0, N, BLOCK_N):
            n_offsets = start + tl.arange(0, BLOCK_N)
            n_mask = n_offsets < N
            s = tl.load(S + q * stride_s + n_offsets, mask=n_mask, other=0.0) / tau
            sig = tl.sigmoid(s[None, :] - sp[:, None])
            if DERIVATIVE:
                sig = sig * (1.0 - sig)
            acc += tl.sum(tl.where(n_mask[None, :], sig, 0.0), axis=1)
        tl.store(OUT + q * stride_sp + p_offsets, acc, mask=p_mask)

    def _column_gradients(S, SP, W, G, N, P, stride_s, stride_sp, tau, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):  # noqa: E501, N803
        q = tl.program_id(0)
        n_offsets = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = n_offsets < N
        s = tl.load(S + q * stride_s + n_offsets, mask=n_mask, other=0.0) / tau
        acc = tl.zeros([BLOCK_N], dtype=s.dtype)
        for start in range(0, P, BLOCK_P):
            p_offsets = start + tl.arange(0, BLOCK_P)
            p_mask = p_offsets < P
            sp = tl.load(SP + q * stride_sp + p_offsets, mask=p_mask, other=0.0) / tau
            w = tl.load(W + q * stride_sp + p_offsets, mask=p_mask, other=0.0)
            sig = tl.sigmoid(s[None, :] - sp[:, None])
            acc += tl.sum(w[:, None] * sig * (1.0 - sig), axis=0)
        tl.store(G + q * stride_s + n_offsets, acc, mask=n_mask)


@functools.cache
def _kernels(interpreted: bool):
    if interpreted:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_sigmoid_sums), InterpretedFunction(_column_gradients)
    return triton.jit(_sigmoid_sums), triton.jit(_column_gradients)


def _sums(sim: torch.Tensor, positive_sim: torch.Tensor, tau: float, derivative: bool) -> torch.Tensor:
    sums_kernel, _ = _kernels(sim.device.type != "cuda")
    out = torch.empty_like(positive_sim)
    num_queries, num_positives = positive_sim.shape
    grid = (num_queries, triton.cdiv(num_positives, _BLOCK_P))
    sums_kernel[grid](
        sim, positive_sim, out, sim.shape[1], num_positives, sim.stride(0), positive_sim.stride(0), tau,
        DERIVATIVE=derivative, BLOCK_P=_BLOCK_P, BLOCK_N=_BLOCK_N,
    )  # fmt: skip
    return out


def sigmoid_sums(sim: torch.Tensor, positive_sim: torch.Tensor, tau: float, derivative: bool = False) -> torch.Tensor:
    """Σ_z σ((s_qz − s_qp)/τ), or Σ_z σ'(...) with ``derivative``: (T, P) from ``sim`` (T, N), ``positive_sim``
    (T, P)."""
    return _sums(sim.contiguous(), positive_sim.contiguous(), float(tau), derivative)


def column_gradients(sim: torch.Tensor, positive_sim: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """G[q, z] = Σ_p w_qp σ'((s_qz − s_qp)/τ): (T, N)."""
    sim, positive_sim, weight = sim.contiguous(), positive_sim.contiguous(), weight.contiguous()
    _, gradients_kernel = _kernels(sim.device.type != "cuda")
    out = torch.empty_like(sim)
    num_queries, database_size = sim.shape
    grid = (num_queries, triton.cdiv(database_size, _BLOCK_N))
    gradients_kernel[grid](
        sim, positive_sim, weight, out, database_size, positive_sim.shape[1], sim.stride(0), positive_sim.stride(0),
        float(tau), BLOCK_P=_BLOCK_P, BLOCK_N=_BLOCK_N,
    )  # fmt: skip
    return out


def triton_tile_ranks(sim, positive_index, excluded, rank_temperature):
    """:func:`pml_recallk._tiled.tile_ranks` with the sigmoid sums in a kernel."""
    tau = rank_temperature
    positive_sim = sim.gather(1, positive_index)
    total = sigmoid_sums(sim, positive_sim, tau)
    if excluded is not None:
        total -= excluded_sigmoids(excluded_similarities(sim, excluded, tau), positive_sim / tau, excluded).sum(2)
    return total + 0.5


def triton_tile_rank_grad(sim, positive_index, excluded, weight, rank_temperature):
    """:func:`pml_recallk._tiled.tile_rank_grad` with the sigmoid sums in kernels."""
    tau = rank_temperature
    positive_sim = sim.gather(1, positive_index)
    grad = column_gradients(sim, positive_sim, weight, tau)
    grad_positive = -weight * sigmoid_sums(sim, positive_sim, tau, derivative=True)
    if excluded is not None:
        excluded_sim = excluded_similarities(sim, excluded, tau)
        subtract_excluded_grad(grad, grad_positive, excluded_sim, positive_sim / tau, excluded, weight)
    return grad.scatter_add_(1, positive_index, grad_positive)

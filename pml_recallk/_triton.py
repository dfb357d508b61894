"""Triton kernels for the sigmoid sums of a tile of soft ranks (the ``path="fused"`` of ``RecallKSurrogateLoss``).

For a tile of T queries with similarities S (T, N), positives' similarities S_p (T, P) and τ, with x = (s_qz − s_qp)/τ:

    forward      Σ_z σ(x)                              (T, P)
    backward     G[q, z] = Σ_p w_qp σ'(x)              (T, N)     and     Σ_z σ'(x)   (T, P)

One kernel does both: a program takes one query and one block of 256 columns, computes its P × 256 terms in
registers, and writes per-block partial sums (T, P, N/256) that are then summed in a fixed order (deterministic, no
atomics); in backward it also writes the block's column gradients. The T×P×N terms are never stored (the PyTorch
path holds one chunk of them), and backward needs one pass over them, not two. The excluded columns' small
(T, P, X) correction and the scatter onto the positives' columns stay in PyTorch (:mod:`pml_recallk._excluded`). On
CUDA the kernel is compiled; on CPU tensors it runs in Triton's interpreter, which is slow and only meant for tests
(enabled with ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os

import torch

from ._excluded import excluded_sigmoids, excluded_similarities, subtract_excluded_grad

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch, not with CPU-only ones
    triton = None

# Columns per program; positives are taken BLOCK_P at a time (the next power of two of P, at most 16).
_BLOCK_N, _MAX_BLOCK_P = 256, 16


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

    def _tile_sums(
        S,
        SP,
        W,
        PARTIAL,
        G,
        N,
        P,
        NUM_BLOCKS,
        stride_s,
        stride_sp,
        tau,
        BACKWARD: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):  # noqa: E501, N803
        """One program: query q, columns [b·BLOCK_N, (b+1)·BLOCK_N), every positive. x = (s_qz − s_qp)/τ.
        Forward: PARTIAL[q, p, b] = Σ_z σ(x). Backward: PARTIAL[q, p, b] = Σ_z σ'(x), G[q, z] = Σ_p w_qp σ'(x)."""
        q = tl.program_id(0)
        block = tl.program_id(1)
        n_offsets = block * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = n_offsets < N
        s = tl.load(S + q * stride_s + n_offsets, mask=n_mask, other=0.0) / tau
        grad = tl.zeros([BLOCK_N], dtype=s.dtype)
        for start in range(0, P, BLOCK_P):
            p_offsets = start + tl.arange(0, BLOCK_P)
            p_mask = p_offsets < P
            sp = tl.load(SP + q * stride_sp + p_offsets, mask=p_mask, other=0.0) / tau
            sig = tl.sigmoid(s[None, :] - sp[:, None])
            if BACKWARD:
                sig = sig * (1.0 - sig)
                w = tl.load(W + q * stride_sp + p_offsets, mask=p_mask, other=0.0)
                grad += tl.sum(w[:, None] * sig, axis=0)
            sums = tl.sum(tl.where(n_mask[None, :], sig, 0.0), axis=1)
            tl.store(PARTIAL + (q * P + p_offsets) * NUM_BLOCKS + block, sums, mask=p_mask)
        if BACKWARD:
            tl.store(G + q * stride_s + n_offsets, grad, mask=n_mask)


@functools.cache
def _kernel(interpreted: bool):
    if interpreted:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_tile_sums)
    return triton.jit(_tile_sums)


def _launch(sim, positive_sim, weight, tau: float, backward: bool):
    """(Σ_z σ or σ' per (q, p), and G when ``backward``); deterministic: per-block partial sums, summed in order."""
    sim, positive_sim = sim.contiguous(), positive_sim.contiguous()
    num_queries, database_size = sim.shape
    num_positives = positive_sim.shape[1]
    num_blocks = triton.cdiv(database_size, _BLOCK_N)
    partial = sim.new_empty(num_queries, num_positives, num_blocks)
    grad = torch.empty_like(sim) if backward else sim  # ``sim`` stands in for the unused pointers in forward
    weight = weight.contiguous() if backward else positive_sim
    block_p = min(triton.next_power_of_2(num_positives), _MAX_BLOCK_P)
    _kernel(sim.device.type != "cuda")[(num_queries, num_blocks)](
        sim, positive_sim, weight, partial, grad, database_size, num_positives, num_blocks, sim.stride(0),
        positive_sim.stride(0), float(tau), BACKWARD=backward, BLOCK_P=block_p, BLOCK_N=_BLOCK_N,
    )  # fmt: skip
    return partial.sum(2), (grad if backward else None)


def sigmoid_sums(sim: torch.Tensor, positive_sim: torch.Tensor, tau: float, derivative: bool = False) -> torch.Tensor:
    """Σ_z σ((s_qz − s_qp)/τ), or Σ_z σ'(...) with ``derivative``: (T, P) from ``sim`` (T, N), ``positive_sim``
    (T, P)."""
    if derivative:
        return _launch(sim, positive_sim, torch.zeros_like(positive_sim), tau, backward=True)[0]
    return _launch(sim, positive_sim, None, tau, backward=False)[0]


def column_gradients(sim: torch.Tensor, positive_sim: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """G[q, z] = Σ_p w_qp σ'((s_qz − s_qp)/τ): (T, N)."""
    return _launch(sim, positive_sim, weight, tau, backward=True)[1]


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
    derivative_sums, grad = _launch(sim, positive_sim, weight, tau, backward=True)
    grad_positive = -weight * derivative_sums
    if excluded is not None:
        excluded_sim = excluded_similarities(sim, excluded, tau)
        subtract_excluded_grad(grad, grad_positive, excluded_sim, positive_sim / tau, excluded, weight)
    return grad.scatter_add_(1, positive_index, grad_positive)

"""SparseGPT (Frantar & Alistarh, 2023, arXiv 2301.00774).

Columns are processed left to right. Each pruned weight w_q is removed with the OBS update that keeps the
layer output XW closest to dense, spreading its error (w_q / [H⁻¹]_qq) over the columns not yet processed
through the row of the upper Cholesky factor of H⁻¹. Masks are chosen adaptively per block of ``blocksize``
columns by the OBS saliency w² / [H⁻¹]_qq², taken from the weights as already updated. Updates inside a
block are applied column by column; updates to later blocks are batched ("lazy") into one matmul per block.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..patterns import Pattern, lowest_k_mask, lowest_k_per_row_mask, nm_mask
from ..stats import math_dtype
from .base import PruningAlgorithm, one_cpu_thread, register


def damped_inverse_cholesky(hessian: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor U of (H + λI)⁻¹ (UᵀU = (H + λI)⁻¹) with λ = dampening · mean(diag H), in fp64.

    Without forming the inverse: with J the order-reversing permutation, J(H + λI)J = MMᵀ (M lower) gives
    H + λI = RRᵀ with R = JMJ upper, so (H + λI)⁻¹ = R⁻ᵀR⁻¹ and U = R⁻¹ = J M⁻¹ J: one Cholesky and one
    triangular inverse (LAPACK's explicit inverse followed by a second Cholesky cost several times more on CPUs).
    Returns the factor (fp32; fp64 for an fp64 Hessian) and the mask of dead inputs (diag H = 0), whose weights
    carry no signal.
    """
    # About two fp64 n x n matrices live at once (each temporary dropped as soon as it is used): for the width-1536
    # down projection ~45 MB instead of the ~110 MB a chain of expressions held, the solve's memory peak.
    h = hessian.double().flip(0, 1)  # a copy, so the caller's Hessian is never modified
    dead = torch.diagonal(h).flip(0) == 0
    h[dead.flip(0), dead.flip(0)] = 1.0
    h.diagonal().add_(dampening * torch.diagonal(h).mean())
    with one_cpu_thread(h.device):
        lower = torch.linalg.cholesky(h)
        del h
        inverse = torch.zeros_like(lower)
        inverse_lower_triangular(lower, out=inverse)
        del lower
    return inverse.to(math_dtype(hessian.dtype)).flip(0, 1), dead


def inverse_lower_triangular(lower: torch.Tensor, out: torch.Tensor, base: int = 128) -> torch.Tensor:
    """L⁻¹ of a lower-triangular L into ``out`` (zeros above the diagonal on entry), by halves:
    [[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹BA⁻¹, C⁻¹]]. About n³/3 multiply-adds, mostly in matmuls, where a
    triangular solve against the identity does n³: half the time of the width-1536 factor on one CPU thread."""
    n = lower.shape[0]
    if n <= base:
        eye = torch.eye(n, dtype=lower.dtype, device=lower.device)
        return out.copy_(torch.linalg.solve_triangular(lower, eye, upper=False))
    half = n // 2
    inverse_lower_triangular(lower[:half, :half], out[:half, :half], base)
    inverse_lower_triangular(lower[half:, half:], out[half:, half:], base)
    out[half:, :half] = -(out[half:, half:] @ (lower[half:, :half] @ out[:half, :half]))
    return out


_last_factor: dict = {}


def shared_inverse_cholesky(hessian: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``damped_inverse_cholesky``, computed once for layers fed the same Hessian tensor (q/k/v, gate/up share one):
    the last result is reused while it is the same, unmodified tensor with the same dampening, and dropped with the
    tensor (so a large factor never outlives its block's statistics)."""
    key = (hessian._version, dampening, hessian.data_ptr())
    ref = _last_factor.get("hessian")
    if ref is None or ref() is not hessian or _last_factor["key"] != key:
        _last_factor.clear()
        _last_factor.update(hessian=weakref.ref(hessian, lambda _: _last_factor.clear()), key=key,
                            value=damped_inverse_cholesky(hessian, dampening))
    return _last_factor["value"]


def _saliency(w: torch.Tensor, d: torch.Tensor, forced: torch.Tensor | None) -> torch.Tensor:
    """OBS saliency w² / [H⁻¹]_qq²; weights that must be pruned get -inf so every selection takes them first."""
    saliency = w ** 2 / d[None, :] ** 2
    return saliency if forced is None else saliency.masked_fill(forced, float("-inf"))


@register
@dataclass
class SparseGPT(PruningAlgorithm):
    name = "sparsegpt"
    needs = frozenset({"hessian"})
    blocksize: int = 128
    dampening: float = 0.01

    def __post_init__(self):
        if self.blocksize < 1:
            raise ValueError("blocksize must be >= 1")
        if not 0 < self.dampening < 1:
            raise ValueError("dampening must be in (0, 1)")

    def prune(self, weight: torch.Tensor, stats, pattern: Pattern, prior: torch.Tensor | None = None) -> torch.Tensor:
        """``prior``: weights already pruned, kept pruned (their saliency is -inf, so they are chosen first)."""
        hinv, dead = shared_inverse_cholesky(stats.require_hessian(), self.dampening)
        # fp32, or fp64 when the weight or the statistics are (float64 models; float64 forwards of fp32 ones)
        dtype = torch.promote_types(math_dtype(weight.dtype), hinv.dtype)
        hinv = hinv.to(dtype)
        # Work on Wᵀ: each column of W is then one contiguous row, and the per-column rank-1 updates below run
        # about 2x faster than on column slices of W (they dominate the solve).
        wt = weight.to(dtype).t().contiguous()
        wt[dead] = 0.0
        cols = wt.shape[0]
        if pattern.is_nm and self.blocksize % pattern.m:
            raise ValueError(f"blocksize {self.blocksize} must be a multiple of M={pattern.m}")
        for start in range(0, cols, self.blocksize):
            end = min(start + self.blocksize, cols)
            block = wt[start:end]  # a view: updated in place; block.t() is W[:, start:end]
            h_block = hinv[start:end, start:end]
            d = torch.diagonal(h_block)
            forced = None if prior is None else prior[:, start:end]
            if pattern.is_nm:
                pruned = torch.zeros(block.shape[::-1], dtype=torch.bool, device=block.device)  # group by group below
            elif pattern.scope == "row":
                pruned = lowest_k_per_row_mask(_saliency(block.t(), d, forced), int((end - start) * pattern.sparsity))
            else:
                pruned = lowest_k_mask(_saliency(block.t(), d, forced), int(block.numel() * pattern.sparsity))
            if forced is not None:
                pruned |= forced
            errors = torch.empty_like(block)
            # A pruned entry's error is w / d; dividing the kept ones by +inf gives them (signed) zero in the same
            # single op, bit for bit what w·0 / d gave
            divisor = torch.where(pruned.t(), d[:, None], float("inf")).contiguous()
            for i in range(end - start):
                if pattern.is_nm and i % pattern.m == 0:
                    # N:M groups are chosen on the weights as updated so far, like the adaptive block mask.
                    group_forced = None if forced is None else forced[:, i:i + pattern.m]
                    group = _saliency(block[i:i + pattern.m].t(), d[i:i + pattern.m], group_forced)
                    pruned[:, i:i + pattern.m] = nm_mask(group, pattern.n, pattern.m)
                    if group_forced is not None:
                        pruned[:, i:i + pattern.m] |= group_forced
                    divisor[i:i + pattern.m] = torch.where(pruned[:, i:i + pattern.m].t(), d[i:i + pattern.m, None],
                                                           float("inf"))
                err = torch.div(block[i], divisor[i], out=errors[i])
                # Removing column i's pruned entries shifts the later columns of the block along row i of the
                # factor (column i itself is final: its pruned entries are zeroed below, its kept ones unchanged).
                block[i + 1:].addr_(h_block[i, i + 1:], err, alpha=-1.0)
            block.masked_fill_(pruned.t(), 0.0)
            wt[end:].addmm_(hinv[start:end, end:].t(), errors, alpha=-1.0)  # the lazy update of later blocks
        return wt.t().contiguous()

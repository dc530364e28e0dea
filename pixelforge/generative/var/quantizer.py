"""Multi-scale residual vector quantiser of the VAR tokenizer (``VectorQuantizer2`` of FoundationVision/VAR).

A latent ``f`` (B, Cvae, H, W) with H = W = p_K is quantised over K scales ``patch_nums = (p_1, ..., p_K)``: at scale k
the residual is area-downsampled to p_k x p_k, each vector takes its nearest codebook entry, and the code map is
bicubic-upsampled back to H x W, passed through a "Phi" residual conv and added to ``f_hat``. Token maps are flattened
row-major: scale k's tokens are a (B, p_k²) int64 tensor.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Phi", "MultiScaleQuantizer", "phi_indices"]


def phi_indices(num_phis: int, num_scales: int) -> list[int]:
    """Which Phi conv each scale uses: ``argmin_j |tick_j - si/(SN-1)|``, evaluated in float64 as the official code.

    ``ticks = linspace(1/3/K, 1 - 1/3/K, K)`` when K == 4, else ``linspace(1/2/K, 1 - 1/2/K, K)``. The released
    10-scale configuration has exact ties that only float64 rounding resolves ([0,0,1,1,1,2,2,3,3,3] for K = 4).
    """
    if num_phis <= 1:
        return [0] * num_scales
    k = num_phis
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    return [int(np.argmin(np.abs(ticks - si / max(num_scales - 1, 1)))) for si in range(num_scales)]


class Phi(nn.Conv2d):
    """Residual 3x3 conv: ``Phi(h) = (1 - r)·h + r·(conv(h) + b)``; (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, dim: int, resi_ratio: float):
        super().__init__(dim, dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


class MultiScaleQuantizer(nn.Module):
    """Residual quantisation over scales with shared, partially shared or per-scale Phi convs.

    Args:
        vocab_size: V codebook entries. dim: Cvae. patch_nums: side of each scale's token map, coarse to fine.
        using_znorm: nearest code by cosine similarity instead of Euclidean distance.
        beta: commitment weight of the training loss.
        quant_resi: Phi mixing ratio r; |r| <= 1e-6 makes every Phi the identity (no parameters).
        share_quant_resi: 0 = one Phi per scale (or ``default_qresi_counts`` of them), 1 = one shared Phi,
            n >= 2 = n Phis shared across scales by the tick rule (:func:`phi_indices`).
    Shapes: latents (B, dim, p_K, p_K).
    """

    def __init__(self, vocab_size: int, dim: int, patch_nums: Sequence[int], using_znorm: bool = False,
                 beta: float = 0.25, quant_resi: float = 0.5, share_quant_resi: int = 4,
                 default_qresi_counts: int = 0):
        super().__init__()
        self.vocab_size, self.dim = vocab_size, dim
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.using_znorm, self.beta = using_znorm, beta
        self.share_quant_resi = share_quant_resi
        if share_quant_resi == 0:
            num_phis = default_qresi_counts or len(self.patch_nums)
        else:
            num_phis = 1 if share_quant_resi == 1 else share_quant_resi
        self.phis = nn.ModuleList(Phi(dim, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()
                                  for _ in range(num_phis))
        self.phi_index = phi_indices(num_phis, len(self.patch_nums))
        self.embedding = nn.Embedding(vocab_size, dim)
        # per-scale EMA of code hits, updated by training passes (dead-code restarts read it); never used otherwise
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, si: int, h: torch.Tensor) -> torch.Tensor:
        """Apply scale ``si``'s Phi to (B, dim, H, W)."""
        return self.phis[self.phi_index[si]](h)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index of each row of z (N, dim) → (N,) int64 (squared distance computed as the official code)."""
        weight = self.embedding.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(z, dim=-1) @ F.normalize(weight.T, dim=0), dim=1)
        dist = torch.sum(z.square(), dim=1, keepdim=True) + torch.sum(weight.square(), dim=1)
        dist.addmm_(z, weight.T, alpha=-2, beta=1)
        return torch.argmin(dist, dim=1)

    def code_map(self, idx: torch.Tensor) -> torch.Tensor:
        """Token map (B, p²) int64 → code vectors (B, dim, p, p)."""
        b, n = idx.shape
        p = round(n ** 0.5)
        return self.embedding(idx).transpose(1, 2).reshape(b, self.dim, p, p)

    def upsample_and_phi(self, si: int, h: torch.Tensor, size: int) -> torch.Tensor:
        """Scale ``si``'s code map (B, dim, p, p) → its contribution to f_hat (B, dim, size, size).

        Bicubic (align_corners=False, unclamped) for every scale but the last, which is never resampled.
        """
        if si != self.num_scales - 1:
            h = F.interpolate(h, size=(size, size), mode="bicubic")
        return self.phi(si, h.contiguous())

    def _check_latent(self, f: torch.Tensor) -> None:
        if f.shape[-2:] != (self.patch_nums[-1],) * 2:
            raise ValueError(f"latent of size {tuple(f.shape[-2:])} does not match the last scale "
                             f"{self.patch_nums[-1]}x{self.patch_nums[-1]} of patch_nums {self.patch_nums}")

    @torch.no_grad()
    def f_to_idx(self, f: torch.Tensor, to_fhat: bool = False) -> list[torch.Tensor]:
        """Quantise f (B, dim, H, W) scale by scale.

        Returns:
            one (B, p_k²) int64 token map per scale, or with ``to_fhat`` the cumulative f_hat (B, dim, H, W) after
            each scale. Runs in float32 whatever the autocast state (as :meth:`forward`).
        """
        self._check_latent(f)
        b, c, h, w = f.shape
        out = []
        with torch.autocast(f.device.type, enabled=False):
            f_rest = f.detach().float().clone()
            f_hat = torch.zeros_like(f_rest)
            for si, pn in enumerate(self.patch_nums):
                z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != self.num_scales - 1 else f_rest
                idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn * pn)
                contrib = self.upsample_and_phi(si, self.code_map(idx), h)
                f_hat.add_(contrib)
                f_rest.sub_(contrib)
                out.append(f_hat.clone() if to_fhat else idx)
        return out

    def idx_to_fhat(self, idx_list: Sequence[torch.Tensor], cumulative: bool = False
                    ) -> torch.Tensor | list[torch.Tensor]:
        """Token maps (one (B, p_k²) per scale, coarse to fine; a prefix of the scales is allowed) → f_hat.

        Returns:
            (B, dim, p_K, p_K) float32, or with ``cumulative`` the list of f_hat after each given scale.
        """
        size = self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(idx_list[0].shape[0], self.dim, size, size, dtype=torch.float32)
        out = []
        for si, idx in enumerate(idx_list):
            f_hat = f_hat + self.upsample_and_phi(si, self.code_map(idx), size)
            out.append(f_hat)
        return out if cumulative else f_hat

    def idx_to_var_input(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of VAR: for each scale k >= 1, f_hat of scales < k area-downsampled to p_k.

        Returns:
            (B, L - p_1², dim) float32, each map flattened row-major.
        """
        b = idx_list[0].shape[0]
        size = self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(b, self.dim, size, size, dtype=torch.float32)
        next_scales = []
        for si in range(self.num_scales - 1):
            f_hat = f_hat + self.upsample_and_phi(si, self.code_map(idx_list[si]), size)
            pn = self.patch_nums[si + 1]
            next_scales.append(F.interpolate(f_hat, size=(pn, pn), mode="area").view(b, self.dim, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1)

    def next_ar_input(self, si: int, f_hat: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampling step: add scale ``si``'s code map h (B, dim, p, p) to f_hat (B, dim, H, W), in place.

        Returns:
            (f_hat, next input map): the area-downsampled f_hat (B, dim, p_{si+1}, p_{si+1}), or f_hat itself at the
            last scale.
        """
        f_hat.add_(self.upsample_and_phi(si, h, self.patch_nums[-1]))
        if si == self.num_scales - 1:
            return f_hat, f_hat
        pn = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")

    @torch.no_grad()
    def _record_hits(self, si: int, idx: torch.Tensor) -> None:
        hits = torch.bincount(idx.flatten(), minlength=self.vocab_size).float()
        row = self.ema_vocab_hit_SV[si]
        row.copy_(hits) if row.sum() == 0 else row.mul_(0.99).add_(hits, alpha=0.01)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: residual quantisation with the codebook/commitment loss and a straight-through estimator.

        Loss = mean over scales of ``beta·mse(sg[f_hat_k], f) + mse(f_hat_k, sg[f])`` (f_hat_k: cumulative f_hat).
        Runs in float32 whatever the autocast state. In training mode the code hits update ``ema_vocab_hit_SV``.

        Returns:
            f_hat (B, dim, H, W) with gradients passed straight through to f, the scalar loss, the token maps.
        """
        self._check_latent(f)
        with torch.autocast(f.device.type, enabled=False):
            f = f.float()
            b, c, h, w = f.shape
            f_nograd = f.detach()
            f_rest = f_nograd.clone()
            f_hat = torch.zeros_like(f_rest)
            loss = f.new_zeros(())
            idx_list = []
            for si, pn in enumerate(self.patch_nums):
                z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != self.num_scales - 1 else f_rest
                idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn * pn)
                contrib = self.upsample_and_phi(si, self.code_map(idx), h)
                f_hat = f_hat + contrib
                f_rest = f_rest - contrib.detach()
                loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f_nograd)
                idx_list.append(idx)
                if self.training:
                    self._record_hits(si, idx)
            loss = loss / self.num_scales
            f_hat = (f_hat.detach() - f_nograd) + f
        return f_hat, loss, idx_list

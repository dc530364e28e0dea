"""Windowed multi-head attention, the one attention op of pixelforge."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias + mask)·v over windows.

    Args:
        q: (B, W, H, Nq, D); k, v: (B, W, H, Nk, D). W windows (1 for global attention), H heads.
        bias: (H, Nq, Nk) additive, shared over batch and windows.
        mask: (W, Nq, Nk) additive, shared over batch and heads.
        scale: defaults to D ** -0.5.
    Returns:
        (B, W, H, Nq, D)
    """
    attn_mask = None
    if bias is not None:
        attn_mask = bias.to(q.dtype).unsqueeze(0)
    if mask is not None:
        m = mask.to(q.dtype).unsqueeze(1)
        attn_mask = m if attn_mask is None else attn_mask + m
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)

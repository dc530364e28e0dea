"""Windowed multi-head attention, the one attention op of pixelforge: public op, PyTorch paths, dispatch.

PyTorch paths:
- fast path: ``scaled_dot_product_attention`` on 4-D views (batch = windows), where PyTorch's fused kernels run
  (on CPU the flash kernel, which never forms the (N, N) matrix and broadcasts a mask by stride). The bias
  (H, Nq, Nk) and the mask (W, Nq, Nk) are passed as broadcast views; only when both are present over several
  windows are they summed, a bounded group of windows at a time and once for the whole batch.
- explicit path (:func:`attention_reference`): scores, softmax and weighted sum written out in float32; used when
  the bias or the mask needs a gradient, and as the reference in tests and benchmarks.
Rows whose scores are all -inf (a query that may attend to nothing) give a zero output and zero gradients on every
path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import resolve_backend

__all__ = ["attention", "attention_reference"]

# Elements of a summed bias + mask group (windows × H × Nq × Nk) on the fast path.
_MASK_GROUP_ELEMS = 1 << 23


def _check_inputs(q, k, v, bias, mask) -> None:
    if q.dim() != 5:
        raise ValueError(f"attention: q must be (B, W, H, Nq, D), got shape {tuple(q.shape)}")
    B, W, H, Nq, D = q.shape
    if k.dim() != 5 or k.shape[:3] != q.shape[:3] or k.shape[-1] != D:
        raise ValueError(f"attention: k must be ({B}, {W}, {H}, Nk, {D}), got shape {tuple(k.shape)}")
    if v.shape[:4] != k.shape[:4]:
        raise ValueError(f"attention: v must be ({B}, {W}, {H}, {k.shape[3]}, Dv), got shape {tuple(v.shape)}")
    Nk = k.shape[3]
    for name, t in (("q", q), ("k", k), ("v", v), ("bias", bias), ("mask", mask)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"attention: {name} must be a floating-point tensor (masks are additive), got {t.dtype}")
    if bias is not None and (bias.dim() != 3 or bias.shape[0] not in (1, H) or tuple(bias.shape[1:]) != (Nq, Nk)):
        raise ValueError(f"attention: bias must be ({H}, {Nq}, {Nk}), got shape {tuple(bias.shape)}")
    if mask is not None and (mask.dim() != 3 or mask.shape[0] not in (1, W) or tuple(mask.shape[1:]) != (Nq, Nk)):
        raise ValueError(f"attention: mask must be ({W}, {Nq}, {Nk}), got shape {tuple(mask.shape)}")


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias + mask)·v written out in float32 (float64 for float64 inputs).

    Same arguments and result as :func:`attention`; memory B·W·H·Nq·Nk. Fully masked rows give zeros.
    """
    cd = torch.promote_types(q.dtype, torch.float32)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.to(cd) * scale, k.to(cd).transpose(-1, -2))
    if bias is not None:
        s = s + bias.to(cd)
    if mask is not None:
        s = s + mask.to(cd).unsqueeze(1)
    empty = s.amax(-1, keepdim=True) == float("-inf")
    if empty.any():
        p = torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    else:
        p = torch.softmax(s, -1)
    return torch.matmul(p, v.to(cd)).to(q.dtype)


def _sdpa(q, k, v, attn_mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def _attention_fast(q, k, v, bias, mask, scale):
    """The SDPA path on 4-D views; see the module docstring."""
    B, W, H, Nq, D = q.shape
    Nk = k.shape[3]
    md = torch.promote_types(q.dtype, torch.float32)  # additive masks stay float32 for half inputs
    bias = None if bias is None else bias.to(md)
    mask = None if mask is None else mask.to(md)
    if mask is not None and mask.shape[0] == 1:  # one mask for every window: fold it into the bias
        bias = mask if bias is None else bias + mask
        mask = None
    if mask is None:
        am = None if bias is None else bias.unsqueeze(0)
        out = _sdpa(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), am, scale)
        return out.unflatten(0, (B, W))
    # mask over several windows: batch = windows of one sample, the (W, 1 or H, Nq, Nk) mask broadcast by stride
    m = mask.unsqueeze(1)
    if bias is None:
        return torch.stack([_sdpa(q[b], k[b], v[b], m, scale) for b in range(B)])
    group = max(1, _MASK_GROUP_ELEMS // (H * Nq * Nk))
    parts = []
    for w0 in range(0, W, group):
        am = bias.unsqueeze(0) + m[w0:w0 + group]
        parts.append(torch.stack([_sdpa(q[b, w0:w0 + group], k[b, w0:w0 + group], v[b, w0:w0 + group], am, scale)
                                  for b in range(B)]))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias + mask)·v over windows.

    Args:
        q: (B, W, H, Nq, D); k: (B, W, H, Nk, D); v: (B, W, H, Nk, Dv). W windows (1 for global attention),
            H heads; Nq and Nk may differ; float32, float16 or bfloat16 (softmax statistics in float32).
        bias: (H, Nq, Nk) additive, shared over batch and windows (trainable: its gradient is computed).
        mask: (W, Nq, Nk) additive (0 / -inf, or a finite penalty), shared over batch and heads; may hold -inf;
            a (1, Nq, Nk) mask applies to every window.
        scale: defaults to D ** -0.5.
    Returns:
        (B, W, H, Nq, Dv) in q's dtype. A query whose scores are all -inf gets a zero output.
    """
    _check_inputs(q, k, v, bias, mask)
    if resolve_backend(q) == "triton":
        from .triton.attention import attention_triton

        return attention_triton(q, k, v, bias=bias, mask=mask, scale=scale)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (bias, mask))
    if grad:
        return attention_reference(q, k, v, bias=bias, mask=mask, scale=scale)
    return _attention_fast(q, k, v, bias, mask, scale)

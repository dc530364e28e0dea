"""Windowed multi-head attention, the one attention op of pixelforge: public op, PyTorch paths, dispatch.

PyTorch paths:
- fast path: ``scaled_dot_product_attention`` on 4-D views (batch = windows), where PyTorch's fused kernels run
  (on CPU the flash kernel, which never forms the (N, N) matrix and broadcasts a mask by stride). The bias
  (H, Nq, Nk) and the mask (W, Nq, Nk) are passed as broadcast views; only when both are present over several
  windows are they summed, a bounded group of windows at a time and once for the whole batch.
- when the bias or the mask needs a gradient (trainable relative-position bias), the forward is the fast path and
  a custom backward recomputes the probabilities a bounded group of windows at a time (float32) to form dq, dk, dv
  and the bias / mask gradients, so no (B·W, H, Nq, Nk) tensor is kept between forward and backward (problems
  that fit in one group take the explicit path under autograd instead, which is cheaper there).
- explicit path (:func:`attention_reference`): scores, softmax and weighted sum written out in float32, the
  reference in tests and benchmarks.
Rows whose scores are all -inf (a query that may attend to nothing) give a zero output and zero gradients on every
path. Attention-probability dropout (``dropout_p`` > 0, training only) runs in SDPA on the fast path and on the
probabilities of the explicit path when the bias or mask is trainable; the Triton kernels have no dropout, so such
calls take the PyTorch path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import resolve_backend

__all__ = ["attention", "attention_reference"]

# The Triton kernels keep a (block, head dim) tile in registers: larger head dims (channel attention over pixels,
# single-head VQ-VAE attention) take the PyTorch path whatever the backend.
TRITON_MAX_HEAD_DIM = 128
# Elements of a summed bias + mask group (windows × H × Nq × Nk) on the fast path, and of one group of recomputed
# scores in the trainable-bias backward.
_MASK_GROUP_ELEMS = 1 << 21


def _register_flops() -> None:
    """Let ``torch.utils.flop_counter`` count PyTorch's CPU flash attention (the fast path here), which it does not
    know, like its CUDA kernels (2·B·H·Nq·Nk·(D + Dv) flops), so that counted multiply-adds include the attention."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in flop_registry:
        register_flop_formula(op)(lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v))


_register_flops()


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
                        mask: torch.Tensor | None = None, scale: float | None = None,
                        dropout_p: float = 0.0) -> torch.Tensor:
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
    p = _probs(s, _may_mask_rows(bias, mask))
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, v.to(cd)).to(q.dtype)


def _may_mask_rows(bias: torch.Tensor | None, mask: torch.Tensor | None) -> bool:
    """Whether some score row can be all -inf (only if the bias or the mask holds -inf: q·k is finite)."""
    return any(t is not None and bool(torch.isneginf(t).any()) for t in (bias, mask))


def _probs(s: torch.Tensor, may_mask_rows: bool) -> torch.Tensor:
    """Softmax over the last dim; rows of all -inf give zeros."""
    if not may_mask_rows:
        return torch.softmax(s, -1)
    empty = s.amax(-1, keepdim=True) == float("-inf")
    if empty.any():
        return torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return torch.softmax(s, -1)


def _sdpa(q, k, v, attn_mask, scale, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p)


def _attention_fast(q, k, v, bias, mask, scale, dropout_p=0.0):
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
        out = _sdpa(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), am, scale, dropout_p)
        return out.unflatten(0, (B, W))
    # mask over several windows: batch = windows of one sample, the (W, 1 or H, Nq, Nk) mask broadcast by stride
    m = mask.unsqueeze(1)
    if bias is None:
        return torch.stack([_sdpa(q[b], k[b], v[b], m, scale, dropout_p) for b in range(B)])
    group = max(1, _MASK_GROUP_ELEMS // (H * Nq * Nk))
    parts = []
    for w0 in range(0, W, group):
        am = bias.unsqueeze(0) + m[w0:w0 + group]
        parts.append(torch.stack([_sdpa(q[b, w0:w0 + group], k[b, w0:w0 + group], v[b, w0:w0 + group], am, scale,
                                        dropout_p) for b in range(B)]))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


class _AttentionTrainableBias(torch.autograd.Function):
    """Fast-path forward; backward recomputing softmax(q·kᵀ·scale + bias + mask) over groups of windows."""

    @staticmethod
    def forward(ctx, q, k, v, bias, mask, scale):
        ctx.save_for_backward(q, k, v, bias, mask)
        ctx.scale = scale
        # detached: PyTorch's fused kernels refuse a mask that requires grad, even with grad mode off
        return _attention_fast(*(None if t is None else t.detach() for t in (q, k, v, bias, mask)), scale)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, mask = ctx.saved_tensors
        scale = ctx.scale
        B, W, H, Nq, D = q.shape
        Nk = k.shape[3]
        cd = torch.promote_types(q.dtype, torch.float32)
        need_q, need_k, need_v, need_bias, need_mask = ctx.needs_input_grad[:5]
        qf, kf, vf, dof = (t.flatten(0, 1) for t in (q, k, v, dout))  # (B·W, H, N, ·), rows r = b·W + w
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (qf, kf, vf))
        dbias = torch.zeros(bias.shape, dtype=cd, device=q.device) if need_bias else None
        dmask = torch.zeros(mask.shape, dtype=cd, device=q.device) if need_mask else None
        rows = max(1, _MASK_GROUP_ELEMS // (H * Nq * Nk))
        masked_rows = _may_mask_rows(bias, mask)
        for r0 in range(0, B * W, rows):
            r1 = min(r0 + rows, B * W)
            qc, kc, vc, doc = (t[r0:r1].to(cd) for t in (qf, kf, vf, dof))
            s = torch.matmul(qc * scale, kc.transpose(-1, -2))
            if bias is not None:
                s += bias.to(cd)
            win = torch.arange(r0, r1, device=q.device) % W
            if mask is not None:
                s += (mask.to(cd)[win] if mask.shape[0] > 1 else mask.to(cd)).unsqueeze(1)
            p = _probs(s, masked_rows)
            dv[r0:r1] = torch.matmul(p.transpose(-1, -2), doc)
            dp = torch.matmul(doc, vc.transpose(-1, -2))
            ds = torch._softmax_backward_data(dp, p, -1, cd)
            dq[r0:r1] = torch.matmul(ds, kc) * scale
            dk[r0:r1] = torch.matmul(ds.transpose(-1, -2), qc) * scale
            if need_bias:
                dbias += ds.sum(0) if bias.shape[0] > 1 else ds.sum((0, 1)).unsqueeze(0)
            if need_mask:
                dsm = ds.sum(1)
                if mask.shape[0] > 1:
                    dmask.index_add_(0, win, dsm)
                else:
                    dmask += dsm.sum(0, keepdim=True)
        grads = [t.unflatten(0, (B, W)) if need else None for t, need in ((dq, need_q), (dk, need_k), (dv, need_v))]
        return (*grads, None if dbias is None else dbias.to(bias.dtype),
                None if dmask is None else dmask.to(mask.dtype), None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ·scale + bias + mask)·v over windows.

    Args:
        q: (B, W, H, Nq, D); k: (B, W, H, Nk, D); v: (B, W, H, Nk, Dv). W windows (1 for global attention),
            H heads; Nq and Nk may differ; float32, float16 or bfloat16 (softmax statistics in float32).
        bias: (H, Nq, Nk) additive, shared over batch and windows (trainable: its gradient is computed).
        mask: (W, Nq, Nk) additive (0 / -inf, or a finite penalty), shared over batch and heads; may hold -inf;
            a (1, Nq, Nk) mask applies to every window.
        scale: defaults to D ** -0.5.
        dropout_p: dropout on the attention probabilities (pass 0 outside training, as with SDPA).
    Returns:
        (B, W, H, Nq, Dv) in q's dtype. A query whose scores are all -inf gets a zero output.

    Backend: see :mod:`pixelforge.kernels.dispatch`; head dims above ``TRITON_MAX_HEAD_DIM`` always run the
    PyTorch path.
    """
    _check_inputs(q, k, v, bias, mask)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if (resolve_backend(q) == "triton" and max(q.shape[-1], v.shape[-1]) <= TRITON_MAX_HEAD_DIM
            and dropout_p == 0):
        from .triton.attention import attention_triton

        return attention_triton(q, k, v, bias=bias, mask=mask, scale=scale)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (bias, mask)):
        if dropout_p > 0 or q.shape[:4].numel() * k.shape[3] <= _MASK_GROUP_ELEMS:  # one group: autograd is cheaper
            return attention_reference(q, k, v, bias=bias, mask=mask, scale=scale, dropout_p=dropout_p)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return _AttentionTrainableBias.apply(q, k, v, bias, mask, scale)
    return _attention_fast(q, k, v, bias, mask, scale, dropout_p)

"""Windowed attention in Triton: online-softmax forward, recomputing backward (dq, dk, dv, d bias, d mask).

One program handles a block of queries (forward, dq) or of keys (dk, dv) of one (batch, window, head). The bias
(H, Nq, Nk) and the mask (W, Nq, Nk) are read by index inside the kernels (a broadcast bias head or mask window has
stride 0), so no (B·W, H, Nq, Nk) tensor is ever formed. Scores, softmax statistics and accumulators are float32;
q/k/v enter the matrix products in their own dtype (fp16/bf16 tensor cores, fp32 as torch's TF32 setting says).
Queries whose scores are all -inf get a zero output and zero gradients (their log-sum-exp is stored as +inf).
The bias and mask gradients are sums over batch and windows (and heads for the mask), accumulated with float32
atomic adds: their summation order is not deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["attention_triton"]

# Largest query / key block; tests lower it to exercise multi-block loops on small shapes.
_MAX_BLOCK = 64


@triton.jit
def _attn_fwd(Q, K, V, Bias, Mask, Out, Lse,
              sqb, sqw, sqh, sqm, sqd, skb, skw, skh, skn, skd, svb, svw, svh, svn, svd,
              sob, sow, soh, som, sod, sbh, sbm, sbn, smw, smm, smn,
              W, H, Nq, Nk, D, Dv, scale,
              HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bwh = tl.program_id(1)
    h = bwh % H
    w = (bwh // H) % W
    b = bwh // (H * W)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sqb + w * sqw + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D), other=0.0)
    k_base = K + b * skb + w * skw + h * skh
    v_base = V + b * svb + w * svw + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    rn = tl.arange(0, BLOCK_N)
    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + rn
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=(offs_n[None, :] < Nk) & (offs_d[:, None] < D), other=0.0)
        # scores q·kᵀ·scale + bias + mask in float32, -inf past Nk (written out in each kernel: nested jit
        # calls are slow under the interpreter)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        inside = (offs_m[:, None] < Nq) & (offs_n[None, :] < Nk)
        if HAS_BIAS:
            s += tl.load(Bias + h * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn, mask=inside,
                         other=0.0).to(tl.float32)
        if HAS_MASK:
            s += tl.load(Mask + w * smw + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=inside,
                         other=0.0).to(tl.float32)
        s = tl.where(offs_n[None, :] < Nk, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows masked so far: keep every term at exp(-inf)
        p = tl.exp(s - m_ref[:, None])
        alpha = tl.exp(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < Dv), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(Out + b * sob + w * sow + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < Nq) & (offs_dv[None, :] < Dv))
    lse = tl.where(empty, float("inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(Lse + bwh * Nq + offs_m, lse, mask=offs_m < Nq)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, Bias, Mask, dO, Lse, Delta, dK, dV,
                   sqb, sqw, sqh, sqm, sqd, skb, skw, skh, skn, skd, svb, svw, svh, svn, svd,
                   sob, sow, soh, som, sod, sbh, sbm, sbn, smw, smm, smn,
                   W, H, Nq, Nk, D, Dv, scale,
                   HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dK, dV of one key block; dK/dV are contiguous (B, W, H, Nk, D / Dv); dO has the strides of Out."""
    pid_n = tl.program_id(0)
    bwh = tl.program_id(1)
    h = bwh % H
    w = (bwh // H) % W
    b = bwh // (H * W)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    kt = tl.load(K + b * skb + w * skw + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                 mask=(offs_n[None, :] < Nk) & (offs_d[:, None] < D), other=0.0)
    vt = tl.load(V + b * svb + w * svw + h * svh + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                 mask=(offs_n[None, :] < Nk) & (offs_dv[:, None] < Dv), other=0.0)
    q_base = Q + b * sqb + w * sqw + h * sqh
    do_base = dO + b * sob + w * sow + h * soh
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    rm = tl.arange(0, BLOCK_M)
    for start_m in range(0, Nq, BLOCK_M):
        offs_m = start_m + rm
        q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D), other=0.0)
        do = tl.load(do_base + offs_m[:, None] * som + offs_dv[None, :] * sod,
                     mask=(offs_m[:, None] < Nq) & (offs_dv[None, :] < Dv), other=0.0)
        lse = tl.load(Lse + bwh * Nq + offs_m, mask=offs_m < Nq, other=float("inf"))
        delta = tl.load(Delta + bwh * Nq + offs_m, mask=offs_m < Nq, other=0.0)
        # scores q·kᵀ·scale + bias + mask in float32, -inf past Nk (written out in each kernel: nested jit
        # calls are slow under the interpreter)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        inside = (offs_m[:, None] < Nq) & (offs_n[None, :] < Nk)
        if HAS_BIAS:
            s += tl.load(Bias + h * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn, mask=inside,
                         other=0.0).to(tl.float32)
        if HAS_MASK:
            s += tl.load(Mask + w * smw + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=inside,
                         other=0.0).to(tl.float32)
        s = tl.where(offs_n[None, :] < Nk, s, float("-inf"))
        p = tl.exp(s - lse[:, None])
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    out_n = bwh * Nk + offs_n
    tl.store(dK + out_n[:, None] * D + offs_d[None, :], (dk * scale).to(dK.dtype.element_ty),
             mask=(offs_n[:, None] < Nk) & (offs_d[None, :] < D))
    tl.store(dV + out_n[:, None] * Dv + offs_dv[None, :], dv.to(dV.dtype.element_ty),
             mask=(offs_n[:, None] < Nk) & (offs_dv[None, :] < Dv))


@triton.jit
def _attn_bwd_dq(Q, K, V, Bias, Mask, dO, Lse, Delta, dQ, dBias, dMask,
                 sqb, sqw, sqh, sqm, sqd, skb, skw, skh, skn, skd, svb, svw, svh, svn, svd,
                 sob, sow, soh, som, sod, sbh, sbm, sbn, smw, smm, smn,
                 W, H, Nq, Nk, D, Dv, scale,
                 HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                 BIAS_GRAD: tl.constexpr, MASK_GRAD: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dQ of one query block, plus the score gradient summed into dBias / dMask (float32, contiguous, with the
    head / window strides of the bias / mask: 0 where broadcast)."""
    pid_m = tl.program_id(0)
    bwh = tl.program_id(1)
    h = bwh % H
    w = (bwh // H) % W
    b = bwh // (H * W)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sqb + w * sqw + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D), other=0.0)
    do = tl.load(dO + b * sob + w * sow + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
                 mask=(offs_m[:, None] < Nq) & (offs_dv[None, :] < Dv), other=0.0)
    lse = tl.load(Lse + bwh * Nq + offs_m, mask=offs_m < Nq, other=float("inf"))
    delta = tl.load(Delta + bwh * Nq + offs_m, mask=offs_m < Nq, other=0.0)
    k_base = K + b * skb + w * skw + h * skh
    v_base = V + b * svb + w * svw + h * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    rn = tl.arange(0, BLOCK_N)
    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + rn
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=(offs_n[None, :] < Nk) & (offs_d[:, None] < D), other=0.0)
        vt = tl.load(v_base + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                     mask=(offs_n[None, :] < Nk) & (offs_dv[:, None] < Dv), other=0.0)
        # scores q·kᵀ·scale + bias + mask in float32, -inf past Nk (written out in each kernel: nested jit
        # calls are slow under the interpreter)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        inside = (offs_m[:, None] < Nq) & (offs_n[None, :] < Nk)
        if HAS_BIAS:
            s += tl.load(Bias + h * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn, mask=inside,
                         other=0.0).to(tl.float32)
        if HAS_MASK:
            s += tl.load(Mask + w * smw + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=inside,
                         other=0.0).to(tl.float32)
        s = tl.where(offs_n[None, :] < Nk, s, float("-inf"))
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
        grid_mn = offs_m[:, None] * Nk + offs_n[None, :]
        if BIAS_GRAD:
            tl.atomic_add(dBias + h * sbh + grid_mn, ds, mask=inside)
        if MASK_GRAD:
            tl.atomic_add(dMask + w * smw + grid_mn, ds, mask=inside)
    out_m = bwh * Nq + offs_m
    tl.store(dQ + out_m[:, None] * D + offs_d[None, :], (dq * scale).to(dQ.dtype.element_ty),
             mask=(offs_m[:, None] < Nq) & (offs_d[None, :] < D))


def _alloc(shape, dtype: torch.dtype, device: torch.device, zero: bool = False) -> torch.Tensor:
    """A contiguous buffer the kernels write (tests wrap it in guard bands to catch stray stores)."""
    return torch.zeros(shape, dtype=dtype, device=device) if zero else torch.empty(shape, dtype=dtype, device=device)


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def _launch_args(q, k, v, bias, mask, out):
    """Pointers, strides and sizes shared by the three kernels (broadcast bias heads / mask windows: stride 0)."""
    B, W, H, Nq, D = q.shape
    Nk, Dv = k.shape[3], v.shape[4]
    sb = (0, 0, 0) if bias is None else ((bias.stride(0) if bias.shape[0] > 1 else 0), bias.stride(1), bias.stride(2))
    sm = (0, 0, 0) if mask is None else ((mask.stride(0) if mask.shape[0] > 1 else 0), mask.stride(1), mask.stride(2))
    return (*q.stride(), *k.stride(), *v.stride(), *out.stride(), *sb, *sm, W, H, Nq, Nk, D, Dv)


def _config(Nq: int, Nk: int, D: int, Dv: int, dtype: torch.dtype, backward: bool) -> dict:
    """Block sizes and launch options (checked with ptxas for sm_90: no or minor register spills, shared memory
    within 110 KB): 64x64 tiles on 8 warps, 32x32 on 4 warps for head dims above 64 in float32 or in the backward;
    two pipeline stages for float32 and the backward kernels."""
    BD, BDV = _pow2(D), _pow2(Dv)
    wide = max(BD, BDV) > 64 and (backward or dtype == torch.float32)
    limit = min(_MAX_BLOCK, 32 if wide else 64)
    BM, BN = min(limit, _pow2(Nq)), min(limit, _pow2(Nk))
    return dict(BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, BLOCK_DV=BDV, num_warps=8 if BM * BN >= 64 * 64 else 4,
                num_stages=2 if backward or dtype == torch.float32 else 3)


def _precision(q: torch.Tensor) -> str:
    if q.dtype == torch.float32 and q.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, mask, scale):
        B, W, H, Nq, D = q.shape
        Nk, Dv = k.shape[3], v.shape[4]
        out = _alloc((B, W, H, Nq, Dv), q.dtype, q.device)
        lse = _alloc((B, W, H, Nq), torch.float32, q.device)
        cfg = _config(Nq, Nk, D, Dv, q.dtype, backward=False)
        precision = _precision(q)
        dummy = out  # stands in for an absent bias / mask pointer (never read)
        _attn_fwd[(triton.cdiv(Nq, cfg["BLOCK_M"]), B * W * H)](
            q, k, v, dummy if bias is None else bias, dummy if mask is None else mask, out, lse,
            *_launch_args(q, k, v, bias, mask, out), scale,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None, PRECISION=precision, **cfg)
        ctx.save_for_backward(q, k, v, bias, mask, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias, mask, out, lse = ctx.saved_tensors
        B, W, H, Nq, D = q.shape
        Nk, Dv = k.shape[3], v.shape[4]
        delta = (dout.float() * out.float()).sum(-1)
        dq = _alloc(q.shape, q.dtype, q.device)
        dk = _alloc(k.shape, k.dtype, k.device)
        dv = _alloc(v.shape, v.dtype, v.device)
        bias_grad = bias is not None and ctx.needs_input_grad[3]
        mask_grad = mask is not None and ctx.needs_input_grad[4]
        dbias = _alloc(bias.shape, torch.float32, q.device, zero=True) if bias_grad else None
        dmask = _alloc(mask.shape, torch.float32, q.device, zero=True) if mask_grad else None
        meta = dict(HAS_BIAS=bias is not None, HAS_MASK=mask is not None, PRECISION=_precision(q),
                    **_config(Nq, Nk, D, Dv, q.dtype, backward=True))
        dummy = dout
        bias_arg = dummy if bias is None else bias
        mask_arg = dummy if mask is None else mask
        args = _launch_args(q, k, v, bias, mask, dout)
        _attn_bwd_dkdv[(triton.cdiv(Nk, meta["BLOCK_N"]), B * W * H)](
            q, k, v, bias_arg, mask_arg, dout, lse, delta, dk, dv, *args, ctx.scale, **meta)
        # bias and mask are contiguous (see attention_triton), so their gradients share their strides
        _attn_bwd_dq[(triton.cdiv(Nq, meta["BLOCK_M"]), B * W * H)](
            q, k, v, bias_arg, mask_arg, dout, lse, delta, dq,
            dummy if dbias is None else dbias, dummy if dmask is None else dmask, *args, ctx.scale,
            BIAS_GRAD=bias_grad, MASK_GRAD=mask_grad, **meta)
        return (dq, dk, dv, None if dbias is None else dbias.to(bias.dtype),
                None if dmask is None else dmask.to(mask.dtype), None)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """The Triton path of :func:`pixelforge.kernels.attention` (same arguments, shapes checked there)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    k, v = k.to(q.dtype), v.to(q.dtype)  # the matrix products take one operand dtype
    bias = None if bias is None else bias.contiguous()
    mask = None if mask is None else mask.contiguous()
    return _TritonAttention.apply(q, k, v, bias, mask, scale)

"""Selective scan (Mamba-1) in Triton: chunked forward and backward, autograd-wrapped.

Grid (batch, channel blocks). A program keeps a (BLOCK_D, n) float32 state and walks the sequence in chunks of
BLOCK_L positions (right to left for ``reverse``): it loads u, Δ, z and the B/C rows of each channel's group,
forms a = exp(Δ·A) and β = Δ·u·B, runs ``tl.associative_scan`` over the (a, β) pairs of the chunk, seeds it with
the carried state, and writes y = Σ_n C·h + D·u (gated). Positions past L are identity pairs (Δ forced to 0 after
bias and softplus), so the carried state after the last chunk is the last state.

The forward saves the state entering every chunk (b, d, n_chunks, n). The backward walks the chunks in the other
direction: it recomputes the chunk's states from the saved one, runs the adjoint scan g[t] = C[t]·dO[t] +
a[t+1]·g[t+1] (its decays a[t+1] loaded from the neighbouring positions, so nothing is shifted in registers),
seeded by the carried adjoint (the last state's gradient at the start), and forms du, dΔ, dz directly; dA, dD,
d delta_bias and the B/C gradients are written as per-program partial sums that PyTorch reduces afterwards
(deterministic, no atomics). A channel block never straddles two groups of a variable B or C.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_triton"]

# Channels and positions per program; tests lower them to exercise several blocks and chunks on small shapes.
_BLOCK_D = 4
_BLOCK_L = 32


@triton.jit
def _combine(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2): h ↦ a2·(a1·h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_fwd(U, Delta, A, Bm, Cm, Dskip, Z, DBias, Out, States, Last,
              sub, sud, sul, sdb, sdd, sdl, szb, szd, szl, sob, sod, sol, sad, san,
              sbb, sbg, sbn, sbl, scb, scg, scn, scl,
              d, n, L, hd_b, hd_c, n_chunks,
              HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              REVERSE: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, SAVE_STATES: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    s = tl.arange(0, BLOCK_N)
    rl = tl.arange(0, BLOCK_L)
    cm = c < d
    cs = cm[:, None] & (s[None, :] < n)
    A_cs = tl.load(A + c[:, None] * sad + s[None, :] * san, mask=cs, other=0.0).to(tl.float32)
    if HAS_D:
        D_c = tl.load(Dskip + c, mask=cm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias_c = tl.load(DBias + c, mask=cm, other=0.0).to(tl.float32)
    # B/C: variable ones are gathered per channel group (b, g, n, L); fixed ones are (d, n) (sbg/scg = channel
    # stride, sbn/scn = state stride)
    if B_VAR:
        b_base = Bm + pid_b * sbb + (c // hd_b)[:, None, None] * sbg + s[None, :, None] * sbn
    else:
        B_cs = tl.load(Bm + c[:, None] * sbg + s[None, :] * sbn, mask=cs, other=0.0).to(tl.float32)
    if C_VAR:
        c_base = Cm + pid_b * scb + (c // hd_c)[:, None, None] * scg + s[None, :, None] * scn
    else:
        C_cs = tl.load(Cm + c[:, None] * scg + s[None, :] * scn, mask=cs, other=0.0).to(tl.float32)
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for i in range(n_chunks):
        chunk = n_chunks - 1 - i if REVERSE else i
        if SAVE_STATES:
            tl.store(States + ((pid_b * d + c[:, None]) * n_chunks + chunk) * n + s[None, :], h, mask=cs)
        t = chunk * BLOCK_L + rl
        ct = cm[:, None] & (t[None, :] < L)
        u = tl.load(U + pid_b * sub + c[:, None] * sud + t[None, :] * sul, mask=ct, other=0.0).to(tl.float32)
        dt = tl.load(Delta + pid_b * sdb + c[:, None] * sdd + t[None, :] * sdl, mask=ct, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias_c[:, None]
        if SOFTPLUS:  # log1p(exp(x)) with Kahan's correction (no log1p in the interpreter), identity above 20
            ex = tl.exp(tl.minimum(dt, 20.0))
            up = 1.0 + ex
            dt = tl.where(dt > 20.0, dt, tl.where(up == 1.0, ex, tl.log(up) * ex / (up - 1.0)))
        dt = tl.where(ct, dt, 0.0)  # identity pairs past L
        cst = cs[:, :, None] & (t[None, None, :] < L)
        if B_VAR:
            B_t = tl.load(b_base + t[None, None, :] * sbl, mask=cst, other=0.0).to(tl.float32)
        else:
            B_t = B_cs[:, :, None]
        if C_VAR:
            C_t = tl.load(c_base + t[None, None, :] * scl, mask=cst, other=0.0).to(tl.float32)
        else:
            C_t = C_cs[:, :, None]
        a = tl.exp(dt[:, None, :] * A_cs[:, :, None])
        beta = (dt * u)[:, None, :] * B_t
        a_cum, b_cum = tl.associative_scan((a, beta), 2, _combine, reverse=REVERSE)
        hs = a_cum * h[:, :, None] + b_cum
        y = tl.sum(hs * C_t, 1)
        h = tl.sum(tl.where(rl[None, None, :] == (0 if REVERSE else BLOCK_L - 1), hs, 0.0), 2)
        if HAS_D:
            y += D_c[:, None] * u
        if HAS_Z:
            z = tl.load(Z + pid_b * szb + c[:, None] * szd + t[None, :] * szl, mask=ct, other=0.0).to(tl.float32)
            y = y * z / (1.0 + tl.exp(-z))
        tl.store(Out + pid_b * sob + c[:, None] * sod + t[None, :] * sol, y.to(Out.dtype.element_ty), mask=ct)
    tl.store(Last + (pid_b * d + c[:, None]) * n + s[None, :], h, mask=cs)


@triton.jit
def _scan_bwd(U, Delta, A, Bm, Cm, Dskip, Z, DBias, dOut, States, dLast,
              dU, dDelta, dZ, dA_part, dB_part, dC_part, dD_part, dBias_part,
              sub, sud, sul, sdb, sdd, sdl, szb, szd, szl, sgb, sgd, sgl, sad, san,
              sbb, sbg, sbn, sbl, scb, scg, scn, scl,
              d, n, L, hd_b, hd_c, n_chunks,
              HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              REVERSE: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_DLAST: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Gradients; dU, dDelta, dZ are contiguous (b, d, L) float32; partial sums: dA_part (b, d, n), dD_part and
    dBias_part (b, d), dB_part / dC_part (b, d // BLOCK_D, n, L) for variable B / C, (b, d, n) for fixed ones."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    c = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    s = tl.arange(0, BLOCK_N)
    rl = tl.arange(0, BLOCK_L)
    cm = c < d
    sm = s < n
    cs = cm[:, None] & sm[None, :]
    A_cs = tl.load(A + c[:, None] * sad + s[None, :] * san, mask=cs, other=0.0).to(tl.float32)
    if HAS_D:
        D_c = tl.load(Dskip + c, mask=cm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias_c = tl.load(DBias + c, mask=cm, other=0.0).to(tl.float32)
    if B_VAR:
        b_base = Bm + pid_b * sbb + (c // hd_b)[:, None, None] * sbg + s[None, :, None] * sbn
    else:
        B_cs = tl.load(Bm + c[:, None] * sbg + s[None, :] * sbn, mask=cs, other=0.0).to(tl.float32)
        dB_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    if C_VAR:
        c_base = Cm + pid_b * scb + (c // hd_c)[:, None, None] * scg + s[None, :, None] * scn
    else:
        C_cs = tl.load(Cm + c[:, None] * scg + s[None, :] * scn, mask=cs, other=0.0).to(tl.float32)
        dC_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    if HAS_DLAST:
        g = tl.load(dLast + (pid_b * d + c[:, None]) * n + s[None, :], mask=cs, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    step = 1 if REVERSE else -1  # g[t] takes a[t - step] (the position the adjoint comes from)
    for i in range(n_chunks):
        chunk = i if REVERSE else n_chunks - 1 - i
        h0 = tl.load(States + ((pid_b * d + c[:, None]) * n_chunks + chunk) * n + s[None, :], mask=cs, other=0.0)
        t = chunk * BLOCK_L + rl
        inside = t[None, :] < L
        ct = cm[:, None] & inside
        u = tl.load(U + pid_b * sub + c[:, None] * sud + t[None, :] * sul, mask=ct, other=0.0).to(tl.float32)
        dt_raw = tl.load(Delta + pid_b * sdb + c[:, None] * sdd + t[None, :] * sdl, mask=ct,
                         other=0.0).to(tl.float32)
        # steps at the adjoint's source positions t - step (identity outside [0, L))
        tn = t - step
        ctn = cm[:, None] & (tn[None, :] >= 0) & (tn[None, :] < L)
        dtn = tl.load(Delta + pid_b * sdb + c[:, None] * sdd + tn[None, :] * sdl, mask=ctn, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw += bias_c[:, None]
            dtn += bias_c[:, None]
        if SOFTPLUS:
            ex = tl.exp(tl.minimum(dt_raw, 20.0))
            up = 1.0 + ex
            dt = tl.where(dt_raw > 20.0, dt_raw, tl.where(up == 1.0, ex, tl.log(up) * ex / (up - 1.0)))
            exn = tl.exp(tl.minimum(dtn, 20.0))
            upn = 1.0 + exn
            dtn = tl.where(dtn > 20.0, dtn, tl.where(upn == 1.0, exn, tl.log(upn) * exn / (upn - 1.0)))
        else:
            dt = dt_raw
        dt = tl.where(ct, dt, 0.0)
        dtn = tl.where(ctn, dtn, 0.0)
        cst = cs[:, :, None] & (t[None, None, :] < L)
        if B_VAR:
            B_t = tl.load(b_base + t[None, None, :] * sbl, mask=cst, other=0.0).to(tl.float32)
        else:
            B_t = B_cs[:, :, None]
        if C_VAR:
            C_t = tl.load(c_base + t[None, None, :] * scl, mask=cst, other=0.0).to(tl.float32)
        else:
            C_t = C_cs[:, :, None]
        # recompute the chunk's states
        a = tl.exp(dt[:, None, :] * A_cs[:, :, None])
        du_t = dt * u
        beta = du_t[:, None, :] * B_t
        a_cum, b_cum = tl.associative_scan((a, beta), 2, _combine, reverse=REVERSE)
        hs = a_cum * h0[:, :, None] + b_cum
        # output gradient through the gate and the skip
        gout = tl.load(dOut + pid_b * sgb + c[:, None] * sgd + t[None, :] * sgl, mask=ct, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(Z + pid_b * szb + c[:, None] * szd + t[None, :] * szl, mask=ct, other=0.0).to(tl.float32)
            sz = 1.0 / (1.0 + tl.exp(-z))
            o = tl.sum(hs * C_t, 1)
            if HAS_D:
                o += D_c[:, None] * u
            tl.store(dZ + (pid_b * d + c[:, None]) * L + t[None, :], gout * o * sz * (1.0 + z * (1.0 - sz)), mask=ct)
            dO = gout * z * sz
        else:
            dO = gout
        # adjoint scan, seeded by the carried g
        a_src = tl.exp(dtn[:, None, :] * A_cs[:, :, None])
        g_cum, c_cum = tl.associative_scan((a_src, C_t * dO[:, None, :]), 2, _combine, reverse=not REVERSE)
        gs = g_cum * g[:, :, None] + c_cum
        g = tl.sum(tl.where(rl[None, None, :] == (BLOCK_L - 1 if REVERSE else 0), gs, 0.0), 2)
        # parameter gradients
        if C_VAR:  # the block lies in one group: sum its channels
            tl.store(dC_part + ((pid_b * tl.num_programs(1) + pid_d) * n + s[:, None]) * L + t[None, :],
                     tl.sum(dO[:, None, :] * hs, 0), mask=sm[:, None] & inside)
        else:
            dC_acc += tl.sum(dO[:, None, :] * hs, 2)
        if B_VAR:
            tl.store(dB_part + ((pid_b * tl.num_programs(1) + pid_d) * n + s[:, None]) * L + t[None, :],
                     tl.sum(gs * du_t[:, None, :], 0), mask=sm[:, None] & inside)
        else:
            dB_acc += tl.sum(gs * du_t[:, None, :], 2)
        gB = tl.sum(gs * B_t, 1)
        ah = hs - beta  # a[t]·h[t-1]
        ddt = gB * u + tl.sum(gs * ah * A_cs[:, :, None], 1)
        dA_acc += tl.sum(gs * ah * dt[:, None, :], 2)
        du = gB * dt
        if HAS_D:
            du += D_c[:, None] * dO
            dD_acc += tl.sum(dO * u, 1)
        if SOFTPLUS:
            ddt = tl.where(dt_raw <= 20.0, ddt / (1.0 + tl.exp(-dt_raw)), ddt)
        ddt = tl.where(ct, ddt, 0.0)
        dbias_acc += tl.sum(ddt, 1)
        tl.store(dU + (pid_b * d + c[:, None]) * L + t[None, :], du, mask=ct)
        tl.store(dDelta + (pid_b * d + c[:, None]) * L + t[None, :], ddt, mask=ct)
    tl.store(dA_part + (pid_b * d + c[:, None]) * n + s[None, :], dA_acc, mask=cs)
    if not B_VAR:
        tl.store(dB_part + (pid_b * d + c[:, None]) * n + s[None, :], dB_acc, mask=cs)
    if not C_VAR:
        tl.store(dC_part + (pid_b * d + c[:, None]) * n + s[None, :], dC_acc, mask=cs)
    tl.store(dD_part + pid_b * d + c, dD_acc, mask=cm)
    tl.store(dBias_part + pid_b * d + c, dbias_acc, mask=cm)


def _alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A contiguous buffer the kernels write (tests wrap it in guard bands to catch stray stores)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _bc_args(M: torch.Tensor, d: int):
    """(tensor, strides (b, g, n, L), channels per group, variable?) of a B or C input."""
    if M.dim() == 2:  # fixed (d, n): channel stride in the group slot, one channel per "group"
        return M, (0, M.stride(0), M.stride(1), 0), 1, False
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M, M.stride(), d // M.shape[1], True


def _block_d(d: int, hds: list[int]) -> int:
    """Channel block: at most _BLOCK_D, a power of two dividing every variable group size (≥ 1)."""
    bd = triton.next_power_of_2(max(1, min(_BLOCK_D, d)))
    while any(hd % bd for hd in hds):
        bd //= 2
    return bd


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        b, d, L = u.shape
        n = A.shape[1]
        Bt, sb, hd_b, b_var = _bc_args(B, d)
        Ct, sc, hd_c, c_var = _bc_args(C, d)
        BD = _block_d(d, [hd for hd, var in ((hd_b, b_var), (hd_c, c_var)) if var])
        BL = min(_BLOCK_L, max(16, triton.next_power_of_2(L)))
        n_chunks = triton.cdiv(L, BL)
        out = _alloc((b, d, L), u.dtype, u.device)
        last = _alloc((b, d, n), torch.float32, u.device)
        save = any(ctx.needs_input_grad[:8])
        states = _alloc((b, d, n_chunks, n), torch.float32, u.device) if save else last
        zz = z if z is not None else u
        _scan_fwd[(b, triton.cdiv(d, BD))](
            u, delta, A, Bt, Ct, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
            out, states, last, *u.stride(), *delta.stride(), *zz.stride(), *out.stride(), *A.stride(), *sb, *sc,
            d, n, L, hd_b, hd_c, n_chunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            REVERSE=reverse, B_VAR=b_var, C_VAR=c_var, SAVE_STATES=save,
            BLOCK_D=BD, BLOCK_N=triton.next_power_of_2(n), BLOCK_L=BL)
        if save:
            ctx.set_materialize_grads(False)  # an unused out / last state arrives as None
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
            ctx.meta = (delta_softplus, reverse, BD, BL)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        delta_softplus, reverse, BD, BL = ctx.meta
        b, d, L = u.shape
        n = A.shape[1]
        n_chunks = states.shape[2]
        Bt, sb, hd_b, b_var = _bc_args(B, d)
        Ct, sc, hd_c, c_var = _bc_args(C, d)
        if dout is None:
            dout = torch.zeros_like(u)

        def f32(*shape):
            return _alloc(shape, torch.float32, u.device)

        du = f32(b, d, L)
        ddelta = f32(b, d, L)
        dz = f32(b, d, L) if z is not None else du
        dA_part = f32(b, d, n)
        dB_part = f32(b, d // BD, n, L) if b_var else f32(b, d, n)
        dC_part = f32(b, d // BD, n, L) if c_var else f32(b, d, n)
        dD_part = f32(b, d)
        dbias_part = f32(b, d)
        zz = z if z is not None else u
        _scan_bwd[(b, triton.cdiv(d, BD))](
            u, delta, A, Bt, Ct, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
            dout, states, dlast.contiguous() if dlast is not None else states,
            du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part,
            *u.stride(), *delta.stride(), *zz.stride(), *dout.stride(), *A.stride(), *sb, *sc,
            d, n, L, hd_b, hd_c, n_chunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            REVERSE=reverse, B_VAR=b_var, C_VAR=c_var, HAS_DLAST=dlast is not None,
            BLOCK_D=BD, BLOCK_N=triton.next_power_of_2(n), BLOCK_L=BL)

        def bc_grad(part, M, var, hd):
            if not var:
                return part.sum(0)
            g = part.unflatten(1, (d // hd, hd // BD)).sum(2)  # (b, g, n, L)
            return g.reshape(M.shape)

        grads = (du, ddelta, dA_part.sum(0), bc_grad(dB_part, B, b_var, hd_b), bc_grad(dC_part, C, c_var, hd_c),
                 dD_part.sum(0) if D is not None else None, dz if z is not None else None,
                 dbias_part.sum(0) if delta_bias is not None else None)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        return (*[None if (gr is None or not need) else gr.to(x.dtype)
                  for gr, x, need in zip(grads, inputs, ctx.needs_input_grad)], None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """The Triton path of :func:`pixelforge.kernels.selective_scan` (shapes checked there): (out, last_state)."""
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse))

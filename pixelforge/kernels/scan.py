"""Selective scan (Mamba-1 S6), the one state-space scan of pixelforge: public op, PyTorch path, autograd glue.

Semantics: specs/selective-scan.md (those of the official ``selective_scan_fn``, plus ``reverse``). The PyTorch
path works in time-major buffers (time block, b, d, n) in float32 (float64 for float64 inputs):

- the sequence is cut into time blocks of bounded size (``_BLOCK_ELEMS``), walked in scan order while the state is
  carried from block to block, so no (b, d, L, n) tensor is ever allocated;
- inside a block the recurrence h[t] = a[t]·h[t-1] + β[t] runs either step by step over wide rows or, when rows are
  narrow (small b·d·n, where per-step overhead would dominate), as a two-level scan: a step loop inside chunks of
  about √T positions, vectorised over the chunks, then a short carry loop over chunk ends (each chunk's total
  decay exp((Σ Δ)·A), the sum over that chunk only) and a second step loop decaying the carried state into the
  chunks. No cumulative sum over the sequence, no division and no exp of -(Σ Δ·A) is ever formed, so long
  sequences (Σ Δ·A ≪ -88) stay finite and accurate (spec § 2.5).
- ``reverse`` runs the same loops right to left (index arithmetic, no flipped copies).
- the backward (spec § 2.2) recomputes each block's states from the state saved at the block boundary, runs the
  adjoint scan in the opposite direction, and reduces dA, dB, dC, dD, d delta_bias in float32. Nothing of size
  b·d·L·n is saved between forward and backward.

Unlike the official CUDA backward, a gradient flowing into ``last_state`` is propagated.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dispatch import Race, resolve_backend
from .native import NATIVE_MAX_DSTATE, selective_scan_native, selective_scan_native_backward

__all__ = ["selective_scan"]

# The Triton kernels hold (channels, dstate, positions) tiles in registers: larger states take the PyTorch path.
TRITON_MAX_DSTATE = 64
# Elements (positions × b × n × d) of one work buffer; a time block holds at most this many.
_BLOCK_ELEMS = 1 << 20
# Rows (b × n × d) at least this wide are scanned position by position; narrower ones use the two-level scan.
_STEP_ROW = 1 << 14
# auto's first call in a shape class times native against the PyTorch path on the call's first positions, about
# this many state updates (b·d·n·positions, at least 64 positions): a few milliseconds.
_RACE_ELEMS = 1 << 22


def _scan_(x: torch.Tensor, m: torch.Tensor, w: torch.Tensor, A: torch.Tensor, carry: torch.Tensor | None,
           reverse: bool) -> None:
    """In-place first-order linear recurrence along dim 0 of x, m: (T, b, n, d), where m = exp(w ⊗ A).

    Left to right: x[t] ← m[t]·x[t-1] + x[t] with x[-1] = carry; right to left: x[t] ← m[t]·x[t+1] + x[t] with
    x[T] = carry (carry (b, n, d) or None for zero). w: (T, b, d) and A: (n, d) give each chunk's total decay
    Π m = exp((Σ w) ⊗ A) from a sum over that chunk only (never from long cumulative sums, spec § 2.5).
    """
    T = x.shape[0]
    if carry is not None:
        first = T - 1 if reverse else 0
        x[first].addcmul_(m[first], carry)
    chunk = T if x[0].numel() >= _STEP_ROW else max(2, math.isqrt(T))
    K = T // chunk
    if K < 2:
        chunk, K = T, 1
    # the chunked region sits where the scan starts; the remaining tail (< chunk positions) is stepped after it
    lo = T - K * chunk if reverse else 0
    xm = x[lo:lo + K * chunk].unflatten(0, (K, chunk))
    mm = m[lo:lo + K * chunk].unflatten(0, (K, chunk))
    if reverse:
        for t in range(chunk - 2, -1, -1):
            xm[:, t].addcmul_(mm[:, t], xm[:, t + 1])
        if K > 1:
            # chunk ends (heads) become true states right to left, with each chunk's total decay
            total = torch.mul(w[lo:lo + (K - 1) * chunk].unflatten(0, (K - 1, chunk)).sum(1).unsqueeze(-2), A).exp_()
            heads = xm[:, 0]
            for k in range(K - 2, -1, -1):
                heads[k].addcmul_(total[k], heads[k + 1])
            # then the carried state decays through the rest of each chunk
            carried = xm[1:, 0].clone()
            for t in range(chunk - 1, 0, -1):
                xm[:-1, t].add_(carried.mul_(mm[:-1, t]))
        for t in range(lo - 1, -1, -1):
            x[t].addcmul_(m[t], x[t + 1])
    else:
        for t in range(1, chunk):
            xm[:, t].addcmul_(mm[:, t], xm[:, t - 1])
        if K > 1:
            total = torch.mul(w[chunk:K * chunk].unflatten(0, (K - 1, chunk)).sum(1).unsqueeze(-2), A).exp_()
            tails = xm[:, chunk - 1]
            for k in range(1, K):
                tails[k].addcmul_(total[k - 1], tails[k - 1])
            carried = xm[:-1, chunk - 1].clone()
            for t in range(chunk - 1):
                xm[1:, t].add_(carried.mul_(mm[1:, t]))
        for t in range(K * chunk, T):
            x[t].addcmul_(m[t], x[t - 1])


def _blocks(L: int, row: int, reverse: bool) -> list[tuple[int, int]]:
    """Time blocks [t0, t1) covering [0, L), in scan order."""
    size = max(1, min(L, _BLOCK_ELEMS // max(row, 1)))
    blocks = [(t0, min(t0 + size, L)) for t0 in range(0, L, size)]
    return blocks[::-1] if reverse else blocks


class _Layout:
    """One call's inputs in time-major (L, b, d) / (L, b, g, n) / (n, d) form, in the compute dtype (float32, or
    float64 for float64 u). Work buffers are (T, b, n, d): d innermost, so every elementwise op runs along d."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        self.dtype = cd = torch.promote_types(u.dtype, torch.float32)
        self.b, self.d, self.L = u.shape
        self.n = A.shape[1]
        self.u = u.to(cd)
        self.A_nd = A.to(cd).t().contiguous()
        self.D = None if D is None else D.to(cd)
        self.z = None if z is None else z.to(cd)
        dt = delta.to(cd)
        if delta_bias is not None:
            dt = dt + delta_bias.to(cd)[:, None]
        self.dt = dt
        self.softplus = delta_softplus
        delta = F.softplus(dt) if delta_softplus else dt  # softplus threshold 20, β = 1 (torch's default)
        self.delta_t = delta.permute(2, 0, 1).contiguous()
        self.u_t = self.u.permute(2, 0, 1).contiguous()
        self.du_t = self.delta_t * self.u_t
        self.B = self._bc(B)
        self.C = self._bc(C)

    def _bc(self, M: torch.Tensor) -> torch.Tensor:
        """Fixed (d, n) becomes (n, d); variable (b, n, L) / (b, g, n, L) becomes (L, b, g, n)."""
        M = M.to(self.dtype)
        if M.dim() == 2:
            return M.t().contiguous()
        if M.dim() == 3:
            M = M.unsqueeze(1)
        return M.permute(3, 0, 1, 2).contiguous()

    def _empty(self, T: int) -> torch.Tensor:
        return torch.empty(T, self.b, self.n, self.d, dtype=self.dtype, device=self.u.device)

    def steps(self, t0: int, t1: int) -> torch.Tensor:
        """Δ at positions [t0, t1), zero outside [0, L) (identity steps): (T, b, d)."""
        if 0 <= t0 and t1 <= self.L:
            return self.delta_t[t0:t1]
        w = self.delta_t.new_zeros(t1 - t0, self.b, self.d)
        w[max(t0, 0) - t0:min(t1, self.L) - t0] = self.delta_t[max(t0, 0):min(t1, self.L)]
        return w

    def decay(self, w: torch.Tensor) -> torch.Tensor:
        """a = exp(w ⊗ A): (T, b, n, d) from steps w (T, b, d)."""
        return torch.mul(w.unsqueeze(-2), self.A_nd, out=self._empty(w.shape[0])).exp_()

    def expand(self, w: torch.Tensor, M: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """w[t, b, c]·M[.., g(c), n] for positions [t0, t1): (T, b, n, d) from w (T, b, d)."""
        out = self._empty(t1 - t0)
        if M.dim() == 2:
            return torch.mul(w.unsqueeze(-2), M, out=out)
        g = M.shape[2]
        torch.mul(w.unflatten(2, (g, self.d // g)).unsqueeze(2), M[t0:t1].transpose(2, 3).unsqueeze(-1),
                  out=out.unflatten(3, (g, self.d // g)))
        return out

    def contract(self, h: torch.Tensor, M: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Σ_n h[t, b, n, c]·M[.., g(c), n] for positions [t0, t1): (T, b, d) from h (T, b, n, d)."""
        if M.dim() == 2:
            return torch.linalg.vecdot(h, M, dim=2)
        g = M.shape[2]
        if g == 1:
            return torch.matmul(M[t0:t1], h).squeeze(2)
        hg = h.unflatten(3, (g, self.d // g))
        return torch.linalg.vecdot(hg, M[t0:t1].transpose(2, 3).unsqueeze(-1), dim=2).flatten(2)

    def reduce_bc(self, h: torch.Tensor, w: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """Gradient of M from Σ_n h·M weighted by w (T, b, d): (T, b, g, n) for variable M, (n, d) for fixed M."""
        if M.dim() == 2:
            return (h * w.unsqueeze(2)).sum((0, 1))
        g = M.shape[2]
        if g == 1:
            return torch.matmul(h, w.unsqueeze(-1)).transpose(2, 3)
        hg = h.unflatten(3, (g, self.d // g))
        return torch.linalg.vecdot(hg, w.unflatten(2, (g, self.d // g)).unsqueeze(2), dim=-1).transpose(2, 3)


def _forward(lay: _Layout, reverse: bool, keep_states: bool):
    """Ungated output o = y + D·u (b, d, L), last state (b, n, d), and the states entering each block (b, n, d)."""
    b, d, L, n = lay.b, lay.d, lay.L, lay.n
    y_t = torch.empty(L, b, d, dtype=lay.dtype, device=lay.u.device)
    carry = None
    states = []
    for t0, t1 in _blocks(L, b * d * n, reverse):
        if keep_states:
            states.append(carry)
        w = lay.steps(t0, t1)
        h = lay.expand(lay.du_t[t0:t1], lay.B, t0, t1)
        _scan_(h, lay.decay(w), w, lay.A_nd, carry, reverse)
        carry = h[0 if reverse else -1].clone()
        y_t[t0:t1] = lay.contract(h, lay.C, t0, t1)
    o = y_t.permute(1, 2, 0)
    o = o + lay.u * lay.D[:, None] if lay.D is not None else o.contiguous()
    return o, carry, states


def _gate(o: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    return o if z is None else o * F.silu(z)


def _backward(lay: _Layout, reverse: bool, states, o: torch.Tensor, grad_out: torch.Tensor,
              grad_last: torch.Tensor | None):
    """Gradients (u, delta, A, B, C, D, z, delta_bias) in the compute dtype (spec § 2.2)."""
    b, d, L, n = lay.b, lay.d, lay.L, lay.n
    cd, dev = lay.dtype, lay.u.device
    G = grad_out.to(cd)
    if lay.z is not None:
        sz = torch.sigmoid(lay.z)
        dz = G * o * sz * (1 + lay.z * (1 - sz))
        dO = G * lay.z * sz
    else:
        dz = None
        dO = G
    dO_t = dO.permute(2, 0, 1).contiguous()
    du_t = torch.empty(L, b, d, dtype=cd, device=dev)
    ddelta_t = torch.empty(L, b, d, dtype=cd, device=dev)
    dA = torch.zeros_like(lay.A_nd)
    dB = torch.zeros_like(lay.B) if lay.B.dim() == 2 else torch.empty_like(lay.B)
    dC = torch.zeros_like(lay.C) if lay.C.dim() == 2 else torch.empty_like(lay.C)
    # adjoint carry: g at the position just past the block in adjoint order (the block's neighbour processed
    # before it); the last state's gradient enters at the last scanned position
    carry = None
    edge = -1 if reverse else 0  # where the adjoint leaves a block (and the state enters it)
    blocks = _blocks(L, b * d * n, reverse)
    for (t0, t1), h_in in zip(blocks[::-1], states[::-1]):
        # steps over the block plus one position on the side the adjoint comes from
        w_ext = lay.steps(t0 - 1, t1) if reverse else lay.steps(t0, t1 + 1)
        a_ext = lay.decay(w_ext)
        w, w_next = (w_ext[1:], w_ext[:-1]) if reverse else (w_ext[:-1], w_ext[1:])
        a, a_next = (a_ext[1:], a_ext[:-1]) if reverse else (a_ext[:-1], a_ext[1:])
        h = lay.expand(lay.du_t[t0:t1], lay.B, t0, t1)
        _scan_(h, a, w, lay.A_nd, h_in, reverse)
        g = lay.expand(dO_t[t0:t1], lay.C, t0, t1)
        if carry is None and grad_last is not None:
            g[0 if reverse else -1] += grad_last.to(cd).transpose(1, 2)
        _scan_(g, a_next, w_next, lay.A_nd, carry, not reverse)
        carry = g[edge].clone()
        if lay.C.dim() == 2:
            dC += lay.reduce_bc(h, dO_t[t0:t1], lay.C)
        else:
            dC[t0:t1] = lay.reduce_bc(h, dO_t[t0:t1], lay.C)
        if lay.B.dim() == 2:
            dB += lay.reduce_bc(g, lay.du_t[t0:t1], lay.B)
        else:
            dB[t0:t1] = lay.reduce_bc(g, lay.du_t[t0:t1], lay.B)
        gB = lay.contract(g, lay.B, t0, t1)  # Σ_n g·B  (T, b, d)
        # q = g·a·h[t-1] (h[t+1] when reverse), in a's memory
        if reverse:
            a[:-1].mul_(h[1:])
        else:
            a[1:].mul_(h[:-1])
        if h_in is None:
            a[edge].zero_()
        else:
            a[edge].mul_(h_in)
        q = a.mul_(g)
        dA += (q * w.unsqueeze(2)).sum((0, 1))
        torch.addcmul(torch.linalg.vecdot(q, lay.A_nd, dim=2), gB, lay.u_t[t0:t1], out=ddelta_t[t0:t1])
        torch.mul(gB, w, out=du_t[t0:t1])
    du = du_t.permute(1, 2, 0)
    if lay.D is not None:
        du = du + dO * lay.D[:, None]
        dD = (dO * lay.u).sum((0, 2))
    else:
        du = du.contiguous()
        dD = None
    ddt = ddelta_t.permute(1, 2, 0)
    if lay.softplus:
        ddt = ddt * torch.where(lay.dt <= 20, torch.sigmoid(lay.dt), torch.ones_like(lay.dt))
    else:
        ddt = ddt.contiguous()
    ddb = ddt.sum((0, 2))
    dB = dB.t() if lay.B.dim() == 2 else dB.permute(1, 2, 3, 0)
    dC = dC.t() if lay.C.dim() == 2 else dC.permute(1, 2, 3, 0)
    return du, ddt, dA.t(), dB, dC, dD, dz, ddb


class _SelectiveScanTorch(torch.autograd.Function):
    """Autograd glue of the PyTorch path (inputs: see :func:`selective_scan`)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        lay = _Layout(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        needs_grad = any(ctx.needs_input_grad[:8])
        o, last, states = _forward(lay, reverse, keep_states=needs_grad)
        out = _gate(o, lay.z).to(u.dtype)
        last = last.transpose(1, 2).contiguous()
        if needs_grad:
            ctx.set_materialize_grads(False)  # an unused out / last state arrives as None
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, o, *[s for s in states if s is not None])
            ctx.flags = (delta_softplus, reverse, [s is None for s in states])
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, o, *saved = ctx.saved_tensors
        delta_softplus, reverse, empty = ctx.flags
        it = iter(saved)
        states = [None if e else next(it) for e in empty]
        lay = _Layout(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        if grad_out is None:
            grad_out = torch.zeros_like(o)
        grads = _backward(lay, reverse, states, o, grad_out, grad_last)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        return (*[None if (gr is None or x is None or not need) else gr.reshape(x.shape).to(x.dtype)
                  for gr, x, need in zip(grads, inputs, ctx.needs_input_grad)], None, None)


class _SelectiveScanNative(torch.autograd.Function):
    """Autograd glue of the native CPU kernels: the fused forward, and a backward that recomputes the states from
    checkpoints in C (B and C time-variant; inputs: see :func:`selective_scan`)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        out, last = selective_scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
        ctx.set_materialize_grads(False)  # an unused out / last state arrives as None
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.flags = (delta_softplus, reverse)
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        inputs = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros(inputs[0].shape)
        grads = selective_scan_native_backward(*inputs, *ctx.flags, grad_out, grad_last)
        return (*[None if (gr is None or x is None or not need) else gr.to(x.dtype)
                  for gr, x, need in zip(grads, inputs, ctx.needs_input_grad)], None, None)


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, seqlen), got shape {tuple(u.shape)}")
    b, d, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if A.is_complex():
        raise NotImplementedError("selective_scan: complex A is not supported (real A only)")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (dim={d}, dstate), got shape {tuple(A.shape)}")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = (M.dim() == 2 and tuple(M.shape) == (d, n)) or (M.dim() == 3 and tuple(M.shape) == (b, n, L)) or (
            M.dim() == 4 and M.shape[0] == b and M.shape[1] > 0 and d % M.shape[1] == 0
            and tuple(M.shape[2:]) == (n, L))
        if not ok:
            raise ValueError(f"selective_scan: {name} must be ({d}, {n}), ({b}, {n}, {L}) or ({b}, groups dividing "
                             f"{d}, {n}, {L}); got shape {tuple(M.shape)}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (d,):
            raise ValueError(f"selective_scan: {name} must be ({d},), got shape {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z shape {tuple(z.shape)} != u shape {tuple(u.shape)}")


def _race(inputs: tuple, delta_softplus: bool, reverse: bool, grad: bool) -> Race:
    """auto's choice for this call: keyed by b·d and L (next powers of two), n, dtype and whether gradients are
    needed (then forward and backward are timed together); timed on a prefix of the call's positions."""
    u, A = inputs[0], inputs[2]
    b, d, L = u.shape
    n = A.shape[1]

    def candidates():
        T = min(L, max(64, _RACE_ELEMS // (b * d * n)))
        # positions are the last dim of u, delta, z and variable B / C; A, D, delta_bias and fixed B / C have none
        cut = [x[..., :T].detach() if x is not None and x.dim() >= 3 else x for x in inputs]
        if not grad:
            return {"native": lambda: selective_scan_native(*cut, delta_softplus, reverse),
                    "torch": lambda: _SelectiveScanTorch.apply(*cut, delta_softplus, reverse)}

        def train_step(fn):
            def run():
                leaves = [None if x is None else x.detach().requires_grad_(orig.requires_grad)
                          for x, orig in zip(cut, inputs)]
                with torch.enable_grad():
                    out = fn.apply(*leaves, delta_softplus, reverse)[0]
                    torch.autograd.grad(out, [x for x in leaves if x is not None and x.requires_grad],
                                        torch.ones_like(out))
            return run

        return {"native": train_step(_SelectiveScanNative), "torch": train_step(_SelectiveScanTorch)}

    bd, ln = (1 << (x - 1).bit_length() for x in (b * d, L))
    key = (f"bd<={bd}", f"L<={ln}", f"n={n}", str(u.dtype)) + (("forward+backward",) if grad else ())
    return Race("selective_scan", key, candidates)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, reverse: bool = False):
    """Mamba-1 selective scan (specs/selective-scan.md).

    Δ = softplus(delta + delta_bias) (or without softplus), h[t] = exp(Δ[t]·A)·h[t-1] + Δ[t]·B[t]·u[t],
    y[t] = C[t]·h[t] + D·u[t], out = y·silu(z). ``reverse=True`` scans right to left (h[t] from h[t+1]).

    Args:
        u, delta: (b, d, L), float32/float16/bfloat16 (float64 computes in float64).
        A: (d, n) real.
        B, C: (d, n) time-invariant, (b, n, L), or (b, g, n, L) with channel c using group c // (d / g).
        D, delta_bias: (d,); z: (b, d, L); all optional.
        delta_softplus: apply softplus (threshold 20) to delta + delta_bias.
        return_last_state: also return the state after the last scanned position.
        reverse: scan from position L-1 down to 0.
    Returns:
        out (b, d, L) in u's dtype, and with ``return_last_state`` the last state (b, d, n) in float32
        (float64 for float64 u). States and sums are computed in float32 whatever the input dtype.

    Backend: see :mod:`pixelforge.kernels.dispatch`. On CPU, ``auto`` runs the native kernels
    (:mod:`pixelforge.kernels.native`: fused forward; for calls that need gradients also the native backward, which
    recomputes the states from checkpoints) when they measure faster than the PyTorch path on this CPU and shape
    class (inference and training timed separately). Float64 calls, and calls needing gradients with a
    time-invariant B or C, take the PyTorch path. A state size above ``TRITON_MAX_DSTATE`` never runs Triton, one
    above ``NATIVE_MAX_DSTATE`` never runs native.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    # the native CPU kernels: float32/16/bf16 (float64 takes the PyTorch path); their backward needs B and C
    # time-variant (the Mamba layout), so training calls with a fixed B or C take the PyTorch path too
    native_ok = (A.shape[1] <= NATIVE_MAX_DSTATE and u.dtype != torch.float64
                 and (not grad or (B.dim() >= 3 and C.dim() >= 3)))
    backend = resolve_backend(u, has_native=native_ok,
                              race=_race(inputs, delta_softplus, reverse, grad) if native_ok else None)
    if backend == "native":
        if grad:
            out, last = _SelectiveScanNative.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
        else:
            out, last = selective_scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    elif backend == "triton" and A.shape[1] <= TRITON_MAX_DSTATE:
        from .triton.scan import selective_scan_triton

        out, last = selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    else:
        out, last = _SelectiveScanTorch.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return (out, last) if return_last_state else out

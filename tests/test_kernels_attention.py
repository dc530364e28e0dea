"""Attention op (PyTorch paths) against written-out float64 math: shapes, biases, masks, gradients, dtypes, errors."""
import importlib

import pytest
import torch

from pixelforge.kernels import attention, attention_reference

attn_mod = importlib.import_module("pixelforge.kernels.attention")
NEG = float("-inf")


def naive(q, k, v, bias=None, mask=None, scale=None):
    """Per-window loops in float64; fully masked rows → 0."""
    B, W, H, Nq, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    out = torch.zeros(B, W, H, Nq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for w in range(W):
            for h in range(H):
                s = q[b, w, h].double() @ k[b, w, h].double().T * scale
                if bias is not None:
                    s = s + bias[h if bias.shape[0] > 1 else 0].double()
                if mask is not None:
                    s = s + mask[w if mask.shape[0] > 1 else 0].double()
                rows = torch.isfinite(s).any(-1)
                p = torch.zeros_like(s)
                p[rows] = torch.softmax(s[rows], -1)
                out[b, w, h] = p @ v[b, w, h].double()
    return out


def make(B, W, H, Nq, Nk, D, bias=True, mask="inf", seed=0, dtype=torch.float32, mask_windows=None, Dv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, W, H, Nq, D, generator=g)
    k = torch.randn(B, W, H, Nk, D, generator=g)
    v = torch.randn(B, W, H, Nk, Dv or D, generator=g)
    b = torch.randn(H, Nq, Nk, generator=g) if bias else None
    m = None
    Wm = W if mask_windows is None else mask_windows
    if mask == "inf":  # partly -inf rows, some fully masked rows
        m = torch.where(torch.rand(Wm, Nq, Nk, generator=g) < 0.4, NEG, 0.0)
        m[:, : max(1, Nq // 7)] = NEG
    elif mask == "finite":  # HAT-style -100 penalties
        m = torch.where(torch.rand(Wm, Nq, Nk, generator=g) < 0.4, -100.0, 0.0)
    elif mask == "causal":  # VAR-style block-causal
        m = torch.zeros(Wm, Nq, Nk)
        m[:, torch.arange(Nq)[:, None] // 4 < torch.arange(Nk)[None] // 4] = NEG
    return q.to(dtype), k.to(dtype), v.to(dtype), b, m


SHAPES = [  # B, W, H, Nq, Nk, D
    (2, 4, 3, 49, 49, 32),  # Swin-like 7x7
    (1, 3, 2, 64, 144, 16),  # HAT-like overlapping keys (8x8 queries, 12x12 keys)
    (2, 2, 2, 32, 32, 24),  # CRAFT-like rectangular 4x8 windows
    (2, 1, 4, 37, 37, 64),  # global, odd N
    (1, 1, 2, 21, 30, 128),  # D = 128, Nq != Nk
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias,mask", [(True, "inf"), (True, None), (False, "inf"), (False, None), (True, "finite"),
                                       (False, "causal")])
def test_forward_matches_naive(shape, bias, mask):
    q, k, v, b, m = make(*shape, bias=bias, mask=mask, seed=sum(shape))
    exp = naive(q, k, v, b, m)
    for fn in (attention, attention_reference):
        out = fn(q, k, v, bias=b, mask=m)
        assert out.shape == exp.shape and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), exp, atol=2e-5, rtol=1e-4)


def test_fully_masked_rows_are_zero_with_zero_grads():
    q, k, v, b, m = make(2, 3, 2, 16, 20, 16, mask="inf")
    m[1, 5] = NEG
    b = b.requires_grad_(True)
    for bias in (b, b.detach()):  # explicit path (bias needs grad) and fast path
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = attention(qq, kk, vv, bias=bias, mask=m)
        assert torch.isfinite(out).all()
        assert out[:, 1, :, 5].abs().max() == 0 and out[:, :, :, 0].abs().max() == 0
        out.square().sum().backward()
        for t in (qq, kk, vv):
            assert torch.isfinite(t.grad).all()
        assert qq.grad[:, 1, :, 5].abs().max() == 0


def test_single_mask_broadcasts_over_windows():
    q, k, v, b, m = make(2, 5, 2, 9, 9, 16, mask="causal", mask_windows=1)
    torch.testing.assert_close(attention(q, k, v, bias=b, mask=m).double(), naive(q, k, v, b, m), atol=2e-5,
                               rtol=1e-4)
    torch.testing.assert_close(attention(q, k, v, bias=b, mask=m), attention(q, k, v, bias=b, mask=m.expand(5, 9, 9)))


def test_mask_groups(monkeypatch):
    monkeypatch.setattr(attn_mod, "_MASK_GROUP_ELEMS", 2 * 16 * 25 * 2)  # two windows per summed group
    q, k, v, b, m = make(3, 5, 2, 16, 25, 16, mask="finite")
    torch.testing.assert_close(attention(q, k, v, bias=b, mask=m).double(), naive(q, k, v, b, m), atol=2e-5,
                               rtol=1e-4)


def test_scale_and_value_dim():
    q, k, v, b, m = make(1, 2, 2, 8, 12, 16, mask="inf", Dv=24)
    out = attention(q, k, v, bias=b, mask=m, scale=0.3)
    assert out.shape == (1, 2, 2, 8, 24)
    torch.testing.assert_close(out.double(), naive(q, k, v, b, m, scale=0.3), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("bias_grad", [True, False])
@pytest.mark.parametrize("mask", ["inf", "finite", None])
def test_gradients_match_naive(bias_grad, mask):
    q, k, v, b, m = make(2, 3, 2, 12, 20, 16, mask=mask, seed=7)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    leaves_ref = [t.double().requires_grad_(True) for t in (q, k, v)]
    bb = b.clone().requires_grad_(bias_grad)
    bb_ref = b.double().requires_grad_(bias_grad)
    gout = torch.randn(2, 3, 2, 12, 16, generator=torch.Generator().manual_seed(1))
    (attention(*leaves, bias=bb, mask=m) * gout).sum().backward()
    (naive(*leaves_ref, bias=bb_ref, mask=m) * gout.double()).sum().backward()
    for got, exp in zip(leaves + ([bb] if bias_grad else []), leaves_ref + ([bb_ref] if bias_grad else [])):
        torch.testing.assert_close(got.grad.double(), exp.grad, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("mask_windows", [None, 1])
def test_trainable_bias_and_mask_in_window_groups(monkeypatch, mask_windows):
    monkeypatch.setattr(attn_mod, "_MASK_GROUP_ELEMS", 2 * 6 * 7 * 3)  # backward in groups of 3 (b, w) rows
    q, k, v, b, m = make(2, 4, 2, 6, 7, 8, mask="inf", mask_windows=mask_windows, seed=4)
    m = torch.where(torch.isinf(m), -4.0, m) + torch.randn(m.shape, generator=torch.Generator().manual_seed(0))
    m[0, 2] = NEG  # a fully masked row among trainable finite entries
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, b, m)]
    refs = [t.double().requires_grad_(True) for t in (q, k, v, b, m)]
    gout = torch.randn(2, 4, 2, 6, 8, generator=torch.Generator().manual_seed(1))
    (attention(*leaves[:3], bias=leaves[3], mask=leaves[4]) * gout).sum().backward()
    (naive(*refs[:3], bias=refs[3], mask=refs[4]) * gout.double()).sum().backward()
    for name, got, exp in zip(["q", "k", "v", "bias", "mask"], leaves, refs):
        torch.testing.assert_close(got.grad.double(), exp.grad, atol=5e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("bias_grad", [True, False])
def test_gradcheck_float64(bias_grad):
    q, k, v, b, m = make(1, 2, 2, 5, 7, 4, mask="inf", dtype=torch.float64, seed=3)
    m[0, 1] = NEG
    b = b.double().requires_grad_(bias_grad)
    inputs = [t.requires_grad_(True) for t in (q, k, v)] + ([b] if bias_grad else [])

    def fn(q, k, v, *bias):
        return attention(q, k, v, bias=bias[0] if bias else b, mask=m.double())

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias_grad", [False, True])
def test_half_inputs(dtype, bias_grad):
    q, k, v, b, m = make(2, 2, 2, 49, 49, 32, mask="inf", dtype=dtype)
    b = (b * 3).requires_grad_(bias_grad)  # large logits: the softmax must stay in float32
    out = attention(q * 3, k, v, bias=b, mask=m)
    assert out.dtype == dtype and torch.isfinite(out).all()
    exp = naive(q * 3, k, v, b.detach(), m)
    torch.testing.assert_close(out.double(), exp, atol=3e-2, rtol=3e-2)


def test_bias_per_head_broadcast():
    q, k, v, b, m = make(1, 2, 3, 6, 6, 8, mask="inf")
    one = b[:1]
    torch.testing.assert_close(attention(q, k, v, bias=one, mask=m), attention(q, k, v, bias=one.expand(3, 6, 6),
                                                                               mask=m))


@pytest.mark.parametrize("kw,msg", [
    (dict(q=torch.zeros(2, 3, 4, 8)), "q must be"),
    (dict(k=torch.zeros(1, 2, 2, 6, 4)), "k must be"),
    (dict(v=torch.zeros(1, 2, 2, 5, 8)), "v must be"),
    (dict(bias=torch.zeros(3, 6, 6)), "bias must be"),
    (dict(mask=torch.zeros(3, 6, 6)), "mask must be"),
    (dict(mask=torch.zeros(2, 6, 6, dtype=torch.bool)), "floating-point"),
])
def test_input_errors(kw, msg):
    args = dict(q=torch.zeros(1, 2, 2, 6, 8), k=torch.zeros(1, 2, 2, 6, 8), v=torch.zeros(1, 2, 2, 6, 8), bias=None,
                mask=None)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=msg):
        attention(args["q"], args["k"], args["v"], bias=args["bias"], mask=args["mask"])


def test_large_head_dims_stay_on_the_torch_path(monkeypatch):
    """Channel attention (features = pixels) must not reach the Triton kernels, whatever the backend says."""
    monkeypatch.setattr(attn_mod, "resolve_backend", lambda *tensors: "triton")
    q, k, v, b, m = make(1, 1, 2, 8, 8, attn_mod.TRITON_MAX_HEAD_DIM + 16, mask=None)
    torch.testing.assert_close(attention(q, k, v, bias=b).double(), naive(q, k, v, b), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("bias_grad", [False, True])
def test_dropout_on_probabilities(bias_grad):
    """dropout_p drops attention probabilities and rescales the rest: with v = 1 every output is
    (sum of kept probabilities) / (1 - p), 1 on average; p = 0 is the plain op; gradients flow to a trainable bias."""
    q, k, _, b, m = make(2, 3, 2, 16, 16, 8, mask="finite")
    v = torch.ones(2, 3, 2, 16, 8)
    b.requires_grad_(bias_grad)
    torch.testing.assert_close(attention(q, k, v, bias=b, mask=m, dropout_p=0.0), torch.ones_like(v))
    torch.manual_seed(0)
    out = attention(q, k, v, bias=b, mask=m, dropout_p=0.5)
    assert (out - 1).abs().amax() > 0.2 and abs(out.mean().item() - 1) < 0.1
    torch.manual_seed(0)
    assert torch.equal(out, attention(q, k, v, bias=b, mask=m, dropout_p=0.5))  # seeded: reproducible
    if bias_grad:
        out.square().sum().backward()
        assert b.grad is not None and b.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=1.0)

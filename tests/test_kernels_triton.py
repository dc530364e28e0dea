"""Triton kernels against the PyTorch paths, forward and backward.

On a CUDA machine the kernel tests run compiled (fp32/fp16/bf16). Elsewhere ``test_interpreter_subprocess`` runs
them in a child process under ``TRITON_INTERPRET=1`` (set before triton is imported; the interpreter can kill its
process on a stray store) on tiny grids, fp32 and fp16 (the interpreter mishandles bf16 arithmetic). Inputs live
in NaN-filled guard bands with padded rows (strided views), so an out-of-bounds read poisons the result; outputs
are allocated inside sentinel-filled guard bands checked after every call.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixelforge.kernels import attention_reference, selective_scan, use_backend

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
SENTINEL = -7777.0
PAD = 37

kernels = pytest.mark.skipif(not (INTERPRET or CUDA),
                             reason="needs CUDA or TRITON_INTERPRET=1 (run by test_interpreter_subprocess)")


def test_interpreter_subprocess():
    if INTERPRET:
        pytest.skip("already running under the interpreter")
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-x", "-p", "no:cacheprovider",
                           "-k", "not subprocess and not compile_for_sm80"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"interpreter run failed (rc {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def _compile_cases():
    """(kernel name, pointer dtypes, constexprs): one variant per kernel, mixing the branches the other tests take."""
    f16, bf16, f32 = "*fp16", "*bf16", "*fp32"
    attn = dict(HAS_BIAS=True, HAS_MASK=True, PRECISION="ieee", BLOCK_M=64, BLOCK_N=32, BLOCK_D=32, BLOCK_DV=16)
    scan = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_D=4, BLOCK_N=16, BLOCK_L=32)
    qkv = dict(Q=f16, K=f16, V=f16, Out=f16, dO=f16, dQ=f16, dK=f16, dV=f16)
    return [
        ("attention._attn_fwd", dict(qkv, Bias=f32, Mask=f32, Lse=f32), attn),
        ("attention._attn_bwd_dkdv", dict(qkv, Bias=f32, Mask=f32, Lse=f32, Delta=f32),
         dict(attn, HAS_MASK=False)),
        ("attention._attn_bwd_dq", dict(qkv, Bias=f32, Mask=f32, Lse=f32, Delta=f32, dBias=f32, dMask=f32),
         dict(attn, BIAS_GRAD=True, MASK_GRAD=True)),
        ("scan._scan_fwd", dict(U=bf16, Delta=bf16, Z=bf16, Out=bf16, Cm=bf16),
         dict(scan, REVERSE=True, B_VAR=False, C_VAR=True, SAVE_STATES=True)),
        ("scan._scan_bwd", dict(U=f16, Delta=f16, Z=f16, dOut=f16, Bm=f16),
         dict(scan, REVERSE=False, B_VAR=True, C_VAR=False, HAS_DLAST=True)),
    ]


@pytest.mark.skipif(INTERPRET, reason="compiles the real kernels")
@pytest.mark.parametrize("name,ptrs,consts", _compile_cases(), ids=[c[0] for c in _compile_cases()])
def test_kernels_compile_for_sm80(name, ptrs, consts):
    """Lower each kernel to a cubin for sm_80 (no GPU needed): catches what the interpreter cannot (types, layouts)."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this Triton has no ahead-of-time compile API")
    import importlib

    module, kernel = name.split(".")
    fn = getattr(importlib.import_module(f"pixelforge.kernels.triton.{module}"), kernel)
    pointers = {"Q", "K", "V", "Bias", "Mask", "Out", "Lse", "dO", "Delta", "dQ", "dK", "dV", "dBias", "dMask", "U",
                "A", "Bm", "Cm", "Dskip", "Z", "DBias", "States", "Last", "dOut", "dLast", "dU", "dDelta", "dZ",
                "dA_part", "dB_part", "dC_part", "dD_part", "dBias_part"}  # the rest: int32 sizes/strides, scale
    signature = {a: "constexpr" if a in consts else ptrs.get(a, "*fp32") if a in pointers else
                 "fp32" if a == "scale" else "i32" for a in fn.arg_names}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                              target=GPUTarget("cuda", 80, 32))
    assert compiled.asm["cubin"]


def guarded(t: torch.Tensor, pad_last: int = 3) -> torch.Tensor:
    """A copy of t on DEVICE inside a NaN-filled buffer: rows padded by pad_last NaN columns, NaN before and after."""
    shape = tuple(t.shape[:-1]) + (t.shape[-1] + pad_last,)
    big = torch.full((math.prod(shape) + 2 * PAD,), float("nan"), dtype=t.dtype, device=DEVICE)
    view = big[PAD:PAD + math.prod(shape)].view(shape)[..., :t.shape[-1]]
    view.copy_(t)
    return view


@pytest.fixture
def guard_outputs(monkeypatch):
    """Every kernel output buffer sits between sentinel-filled guard bands, checked at teardown."""
    ta = pytest.importorskip("pixelforge.kernels.triton.attention")
    ts = pytest.importorskip("pixelforge.kernels.triton.scan")
    bands = []

    def alloc(shape, dtype, device, zero=False):
        numel = math.prod(shape)
        big = torch.full((numel + 2 * PAD,), SENTINEL, dtype=dtype, device=device)
        view = big[PAD:PAD + numel]
        if zero:
            view.zero_()
        bands.append(big)
        return view.view(tuple(shape))

    monkeypatch.setattr(ta, "_alloc", alloc)
    monkeypatch.setattr(ts, "_alloc", alloc)
    if INTERPRET:  # several blocks and chunks on tiny shapes
        monkeypatch.setattr(ta, "_MAX_BLOCK", 16)
        monkeypatch.setattr(ts, "_BLOCK_D", 2)
        monkeypatch.setattr(ts, "_BLOCK_L", 16)
    yield
    assert bands, "no kernel output was allocated"
    for big in bands:
        expected = torch.full((PAD,), SENTINEL, dtype=big.dtype, device=big.device)
        assert torch.equal(big[:PAD], expected) and torch.equal(big[-PAD:], expected), "store outside an output"


def _close(got, exp, dtype, what):
    scale = max(1.0, exp.abs().max().item())
    err = (got.double().cpu() - exp).abs().max().item()
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g} > {TOL[dtype] * scale:.3g}"


# ---------------------------------------------------------------------------------------------------- attention

ATTN_CASES = [  # B, W, H, Nq, Nk, D, Dv, bias, mask kind
    (1, 2, 2, 20, 37, 16, 16, True, "inf"),  # overlapping keys, partly and fully masked rows
    (2, 1, 1, 17, 17, 24, 8, False, "causal"),  # global, block-causal, Dv != D
    (1, 2, 1, 9, 18, 16, 16, True, "grad"),  # trainable mask and bias
]
if CUDA:
    ATTN_CASES += [(2, 4, 6, 256, 576, 32, 32, True, None), (2, 8, 3, 49, 49, 32, 32, True, "inf"),
                   (1, 1, 16, 680, 680, 64, 64, False, "causal"), (1, 2, 2, 144, 144, 128, 128, True, "finite")]


def _attn_inputs(B, W, H, Nq, Nk, D, Dv, bias, mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, W, H, Nq, D, generator=g), torch.randn(B, W, H, Nk, D, generator=g)
    v = torch.randn(B, W, H, Nk, Dv, generator=g)
    b = torch.randn(H, Nq, Nk, generator=g) if bias else None
    m = None
    if mask in ("inf", "grad", "finite"):
        m = torch.where(torch.rand(W, Nq, Nk, generator=g) < 0.3, float("-inf") if mask == "inf" else -5.0, 0.0)
        if mask == "inf":
            m[:, 1] = float("-inf")
    elif mask == "causal":
        m = torch.zeros(1, Nq, Nk)
        m[:, torch.arange(Nq)[:, None] // 3 < torch.arange(Nk)[None] // 3] = float("-inf")
    return q, k, v, b, m


@kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES)
def test_attention_kernel(guard_outputs, case, dtype):
    from pixelforge.kernels.triton.attention import attention_triton

    q, k, v, b, m = _attn_inputs(*case)
    mask_grad = case[-1] == "grad"
    leaves = [guarded(t.to(dtype)).requires_grad_(True) for t in (q, k, v)]
    bias = None if b is None else guarded(b).requires_grad_(True)
    mask = None if m is None else guarded(m).requires_grad_(mask_grad)
    out = attention_triton(*leaves, bias=bias, mask=mask)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * gout.to(DEVICE)).sum().backward()

    ref_leaves = [t.to(dtype).double().requires_grad_(True) for t in (q, k, v)]
    ref_bias = None if b is None else b.double().requires_grad_(True)
    ref_mask = None if m is None else m.double().requires_grad_(mask_grad)
    ref = attention_reference(*ref_leaves, bias=ref_bias, mask=ref_mask)
    (ref * gout.double()).sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    _close(out, ref, dtype, "out")
    for name, got, exp in zip("qkv", leaves, ref_leaves):
        _close(got.grad, exp.grad, dtype, f"d{name}")
    if bias is not None:
        _close(bias.grad, ref_bias.grad, dtype, "dbias")
    if mask_grad:
        _close(mask.grad, ref_mask.grad, dtype, "dmask")
    if case[-1] == "inf":  # fully masked query rows: zero output, zero gradient
        assert out[:, :, :, 1].abs().max() == 0 and leaves[0].grad[:, :, :, 1].abs().max() == 0


@kernels
def test_attention_dispatch_uses_triton(guard_outputs):
    q, k, v, b, m = _attn_inputs(1, 1, 1, 8, 8, 16, 16, True, None)
    from pixelforge.kernels import attention

    with use_backend("triton"):
        out = attention(*(guarded(t) for t in (q, k, v)), bias=guarded(b))
    _close(out, attention_reference(q.double(), k.double(), v.double(), bias=b.double()), torch.float32, "out")


# ---------------------------------------------------------------------------------------------------- scan

SCAN_CASES = [  # b, d, n, L, B layout, C layout, reverse, D/z/bias
    (1, 4, 3, 20, "g1", "g1", False, True),
    (2, 4, 4, 17, "grouped", "fixed", True, True),
    (1, 4, 2, 33, "fixed", "var3", False, False),
]
if CUDA:
    SCAN_CASES += [(2, 64, 16, 197, "g1", "g1", False, True), (2, 64, 16, 197, "g1", "g1", True, True),
                   (1, 48, 16, 2048, "grouped", "grouped", False, True), (3, 40, 5, 70, "fixed", "fixed", True, False)]


def _scan_inputs(b, d, n, L, lb, lc, rev, extras, seed=0):
    g = torch.Generator().manual_seed(seed)

    def bc(layout):
        return {"fixed": (d, n), "var3": (b, n, L), "g1": (b, 1, n, L), "grouped": (b, 2, n, L)}[layout]

    delta = torch.randn(b, d, L, generator=g) * 1.5
    delta[..., ::9] += 22.0  # threshold branch of the softplus
    return dict(u=torch.randn(b, d, L, generator=g), delta=delta,
                A=-torch.exp(torch.log(torch.arange(1.0, n + 1)) + 0.1 * torch.randn(d, n, generator=g)),
                B=torch.randn(*bc(lb), generator=g), C=torch.randn(*bc(lc), generator=g),
                D=torch.randn(d, generator=g) if extras else None,
                z=torch.randn(b, d, L, generator=g) if extras else None,
                delta_bias=torch.randn(d, generator=g) - 2 if extras else None)


@kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SCAN_CASES)
def test_scan_kernel(guard_outputs, case, dtype):
    from pixelforge.kernels.triton.scan import selective_scan_triton

    inp = _scan_inputs(*case)
    rev = case[6]
    low = ("u", "delta", "z") + (("B",) if inp["B"].dim() > 2 else ()) + (("C",) if inp["C"].dim() > 2 else ())
    names = [k for k, v in inp.items() if v is not None]
    leaves = {k: guarded(inp[k].to(dtype) if k in low else inp[k]).requires_grad_(True) for k in names}
    out, last = selective_scan_triton(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                      leaves.get("D"), leaves.get("z"), leaves.get("delta_bias"), True, rev)
    gen = torch.Generator().manual_seed(2)
    gout, glast = torch.randn(out.shape, generator=gen), torch.randn(last.shape, generator=gen)
    ((out.float() * gout.to(DEVICE)).sum() + (last * glast.to(DEVICE)).sum()).backward()

    ref_leaves = {k: (inp[k].to(dtype) if k in low else inp[k]).double().requires_grad_(True) for k in names}
    with use_backend("torch"):
        ref, ref_last = selective_scan(ref_leaves["u"], ref_leaves["delta"], ref_leaves["A"], ref_leaves["B"],
                                       ref_leaves["C"], ref_leaves.get("D"), ref_leaves.get("z"),
                                       ref_leaves.get("delta_bias"), delta_softplus=True, return_last_state=True,
                                       reverse=rev)
    ((ref * gout.double()).sum() + (ref_last * glast.double()).sum()).backward()
    assert out.dtype == dtype and last.dtype == torch.float32
    _close(out, ref, dtype, "out")
    _close(last, ref_last, dtype if dtype == torch.float32 else torch.float16, "last_state")
    for k in names:
        _close(leaves[k].grad, ref_leaves[k].grad, dtype, f"d{k}")


@kernels
def test_scan_dispatch_uses_triton(guard_outputs):
    inp = _scan_inputs(1, 2, 2, 5, "g1", "g1", False, False)
    with use_backend("triton"):
        out = selective_scan(*(guarded(inp[k]) for k in ("u", "delta", "A", "B", "C")))
    with use_backend("torch"):
        ref = selective_scan(*(inp[k] for k in ("u", "delta", "A", "B", "C")))
    _close(out, ref.double(), torch.float32, "out")

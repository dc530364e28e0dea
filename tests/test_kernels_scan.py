"""Selective scan (PyTorch path): official fixtures, a sequential reference, gradcheck, layouts, dtypes, errors.

Every test here pins the PyTorch path (``PIXELFORGE_KERNELS=torch``) unless it is about backend selection; the
native CPU kernel has its own tests (test_kernels_native.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import parity_case
from pixelforge.kernels import scan as scan_mod
from pixelforge.kernels import selective_scan, use_backend

FIXTURES = ["selective_scan", "selective_scan_long"]


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    monkeypatch.setenv("PIXELFORGE_KERNELS", "torch")


def _cases():
    out = []
    for folder in FIXTURES:
        case, _, _ = parity_case(folder)
        out += [(folder, c["name"]) for c in case["cases"]]
    return out


def sequential_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """Step-by-step scan in float64 (the math of spec § 2.1, one position per step). Returns (out, last_state)."""
    u, delta, A = u.double(), delta.double(), A.double()
    b, d, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def per_channel(M):  # -> (b, d, n, L) or (d, n)
        M = M.double()
        if M.dim() == 2:
            return M
        if M.dim() == 3:
            M = M.unsqueeze(1)
        return M.repeat_interleave(d // M.shape[1], dim=1)

    B, C = per_channel(B), per_channel(C)
    h = u.new_zeros(b, d, A.shape[1])
    ys = [None] * L
    for t in (range(L - 1, -1, -1) if reverse else range(L)):
        Bt = B if B.dim() == 2 else B[..., t]
        Ct = C if C.dim() == 2 else C[..., t]
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bt
        ys[t] = (h * Ct).sum(-1)
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def random_inputs(b, d, n, L, layout_b="g1", layout_c="g1", groups=1, D=True, z=True, bias=True, dtype=torch.float32,
                  seed=0, wide=False):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def bc(layout):
        return {"fixed": lambda: rnd(d, n), "var3": lambda: rnd(b, n, L), "g1": lambda: rnd(b, 1, n, L),
                "grouped": lambda: rnd(b, groups, n, L)}[layout]()

    delta = rnd(b, d, L) * (3.0 if wide else 0.5)
    if wide:  # some values past the softplus threshold
        delta[..., ::7] = 20 + 10 * torch.rand(b, d, len(range(0, L, 7)), generator=g, dtype=torch.float64)
    inp = dict(u=rnd(b, d, L), delta=delta,
               A=-torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float64)) + 0.1 * rnd(d, n)),
               B=bc(layout_b), C=bc(layout_c), D=rnd(d) if D else None, z=rnd(b, d, L) if z else None,
               delta_bias=(rnd(d) * 0.5 - 3) if bias else None)
    return {k: (v.to(dtype) if v is not None and k not in ("A", "D", "delta_bias") else v) for k, v in inp.items()}


def _call(inp, **kw):
    return selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["delta_bias"],
                          **kw)


def run_fixture_forward(case: dict, c: dict, io: dict, inp: dict) -> torch.Tensor:
    """Run one fixture case through the op (current backend) and check out and last state against the official
    float32 outputs and the float64 reference, at the fixture's tolerance. Returns out."""
    out, last = selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp.get("D"), inp.get("z"),
                               inp.get("delta_bias"), delta_softplus=c["delta_softplus"], return_last_state=True,
                               reverse=c["reverse"])
    ref = c["reference_f64"]
    for got, official, exact in ((out, c["outputs"]["out"], ref["out"]),
                                 (last, c["outputs"]["last_state"], ref["last_state"])):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, io[official], atol=case["atol"], rtol=case["rtol"])
        torch.testing.assert_close(got.double(), io[exact], atol=case["atol"], rtol=case["rtol"])
    return out


@pytest.mark.parametrize("folder,name", _cases())
def test_official_fixture(folder, name):
    case, io, _ = parity_case(folder)
    c = next(c for c in case["cases"] if c["name"] == name)
    inp = {k: io[v].clone().requires_grad_(True) for k, v in c["inputs"].items()}
    out = run_fixture_forward(case, c, io, inp)
    ref = c["reference_f64"]
    (out * io[c["grad_out"]]).sum().backward()
    for key, gname in ref["grads"].items():
        exact = io[gname]
        atol = case["grad_atol"] * max(1.0, exact.abs().max().item())
        torch.testing.assert_close(inp[key].grad.double(), exact, atol=atol, rtol=case["grad_rtol"], msg=key)


@pytest.fixture
def small_blocks(monkeypatch):
    """Force several time blocks and the two-level in-block scan on small shapes."""
    monkeypatch.setattr(scan_mod, "_BLOCK_ELEMS", 2 * 8 * 4 * 23)  # 23 positions per block at b·d·n = 64
    monkeypatch.setattr(scan_mod, "_STEP_ROW", 1 << 30)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layouts", [("g1", "g1"), ("fixed", "fixed"), ("var3", "grouped"), ("grouped", "fixed")])
@pytest.mark.parametrize("L", [1, 5, 50, 97])
def test_matches_sequential(small_blocks, reverse, layouts, L):
    inp = random_inputs(2, 8, 4, L, *layouts, groups=2, seed=L, wide=True)
    out, last = _call(inp, delta_softplus=True, return_last_state=True, reverse=reverse)
    ref_out, ref_last = sequential_scan(**inp, delta_softplus=True, reverse=reverse)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last.double(), ref_last, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("L", [64, 300])
def test_step_path_matches_two_level(monkeypatch, L):
    inp = random_inputs(1, 16, 4, L, seed=3)
    ref = _call(inp, delta_softplus=True, return_last_state=True)
    monkeypatch.setattr(scan_mod, "_STEP_ROW", 1)  # position-by-position
    monkeypatch.setattr(scan_mod, "_BLOCK_ELEMS", 64 * 37)
    for got, exp in zip(_call(inp, delta_softplus=True, return_last_state=True), ref):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)


def test_reverse_is_flipped_scan():
    inp = random_inputs(2, 8, 4, 33, "var3", "grouped", groups=4, seed=1)
    rev, rev_last = _call(inp, delta_softplus=True, return_last_state=True, reverse=True)
    flip = {k: (v.flip(-1) if k in ("u", "delta", "z", "B", "C") else v) for k, v in inp.items()}
    fwd, fwd_last = _call(flip, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(rev, fwd.flip(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rev_last, fwd_last, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layouts,opts", [
    (("var3", "grouped"), dict(D=True, z=True, bias=True)),
    (("fixed", "g1"), dict(D=False, z=False, bias=False)),
    (("grouped", "fixed"), dict(D=True, z=False, bias=True)),
])
def test_gradcheck_float64(monkeypatch, reverse, layouts, opts):
    monkeypatch.setattr(scan_mod, "_BLOCK_ELEMS", 2 * 4 * 3 * 7)  # blocks of 7 positions, two-level inside
    monkeypatch.setattr(scan_mod, "_STEP_ROW", 1 << 30)
    inp = random_inputs(2, 4, 3, 17, *layouts, groups=2, seed=5, wide=True, dtype=torch.float64, **opts)
    names = [k for k, v in inp.items() if v is not None]
    tensors = [inp[k].clone().requires_grad_(True) for k in names]

    def fn(*ts):
        kw = dict(zip(names, ts))
        out, last = selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw.get("D"), kw.get("z"),
                                   kw.get("delta_bias"), delta_softplus=True, return_last_state=True,
                                   reverse=reverse)
        return out, last  # the last state's gradient is propagated too

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_through_last_state_only(reverse):
    inp = random_inputs(2, 4, 3, 11, "var3", "fixed", seed=6, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items() if v is not None}
    refs = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    _, last = _call({**inp, **leaves}, delta_softplus=True, return_last_state=True, reverse=reverse)
    last.square().sum().backward()  # the output itself takes no part in the loss
    sequential_scan(**{**inp, **refs}, delta_softplus=True, reverse=reverse)[1].square().sum().backward()
    for k in leaves:
        exp = refs[k].grad if refs[k].grad is not None else torch.zeros_like(refs[k])
        torch.testing.assert_close(leaves[k].grad, exp, atol=1e-10, rtol=1e-8, msg=k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    inp = random_inputs(2, 8, 4, 40, dtype=dtype, seed=2)
    out, last = _call(inp, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    ref_out, ref_last = sequential_scan(**inp, delta_softplus=True)
    torch.testing.assert_close(last.double(), ref_last, atol=1e-5, rtol=1e-4)  # float32 state from half inputs
    torch.testing.assert_close(out.double(), ref_out, atol=1e-2, rtol=1e-2)  # rounded to the half output
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items() if v is not None and v.dtype == dtype}
    _call({**inp, **leaves}, delta_softplus=True).float().sum().backward()
    assert all(v.grad.dtype == dtype and torch.isfinite(v.grad).all() for v in leaves.values())


def test_no_grad_skips_saving_and_inputs_untouched():
    inp = random_inputs(1, 4, 4, 9, seed=4)
    before = {k: v.clone() for k, v in inp.items() if v is not None}
    with torch.no_grad():
        _call(inp, delta_softplus=True)
    assert all(torch.equal(before[k], inp[k]) for k in before)


@pytest.mark.parametrize("bad,msg", [
    (dict(u=torch.zeros(2, 8)), "u must be"),
    (dict(delta=torch.zeros(2, 8, 6)), "delta shape"),
    (dict(A=torch.zeros(7, 4)), "A must be"),
    (dict(B=torch.zeros(2, 3, 4, 5)), "B must be"),
    (dict(C=torch.zeros(8, 5)), "C must be"),
    (dict(D=torch.zeros(3)), "D must be"),
    (dict(A=torch.zeros(8, 4, dtype=torch.complex64)), "complex A"),
])
def test_input_errors(bad, msg):
    inp = dict(random_inputs(2, 8, 4, 5, seed=0), **bad)
    with pytest.raises((ValueError, NotImplementedError), match=msg):
        _call(inp)


def test_backend_selection(monkeypatch):
    inp = random_inputs(1, 4, 4, 6, seed=0)
    with use_backend("torch"):
        ref = _call(inp)
    monkeypatch.setenv("PIXELFORGE_KERNELS", "bogus")
    with pytest.raises(ValueError, match="unknown kernel backend 'bogus'"):
        _call(inp)
    monkeypatch.setenv("PIXELFORGE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="backend 'triton' requested"):
        _call(inp)
    with use_backend("torch"):  # the context manager wins over the environment
        torch.testing.assert_close(_call(inp), ref, rtol=0, atol=0)


def test_import_is_quiet_and_lazy():
    code = ("import sys, warnings; warnings.simplefilter('error'); import pixelforge.kernels as k; "
            "assert not [m for m in sys.modules if m.startswith('pixelforge.kernels.triton')], 'kernels imported'; "
            "print(k.get_backend())")
    env = {key: val for key, val in os.environ.items() if key != "PIXELFORGE_KERNELS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "auto" and not proc.stderr, proc.stderr


def test_large_states_stay_on_the_torch_path(monkeypatch):
    monkeypatch.setattr(scan_mod, "resolve_backend", lambda *tensors, **kw: "triton")
    inp = random_inputs(1, 2, scan_mod.TRITON_MAX_DSTATE + 1, 4, seed=0)
    out = _call(inp, delta_softplus=True)
    torch.testing.assert_close(out.double(), sequential_scan(**inp, delta_softplus=True)[0], atol=1e-5, rtol=1e-4)

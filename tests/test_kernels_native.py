"""The native CPU selective scan, forward and backward: against the float64 sequential reference, the float64
PyTorch-path gradients and the official fixtures; dispatch (measured; a fixed B or C in training and float64 take the
PyTorch path), the build cache, and the fallback without a compiler."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import parity_case
from pixelforge.kernels import dispatch, native, use_backend
from pixelforge.kernels.dispatch import native_available
from test_kernels_scan import _call, _cases, random_inputs, run_fixture_forward, sequential_scan

pytestmark = pytest.mark.skipif(not native_available(), reason="no working C compiler for the native kernels")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("b,d,n,L,layouts,groups", [
    (1, 384, 16, 197, ("g1", "g1"), 1),        # Vim-tiny
    (2, 40, 5, 33, ("grouped", "grouped"), 2),  # 20 channels per group: a full 16-lane block and a 4-lane tail
    (3, 24, 7, 50, ("var3", "grouped"), 3),     # B without groups, C with 3 (B is repeated to match)
    (2, 12, 3, 9, ("fixed", "fixed"), 1),       # time-invariant B and C
    (1, 8, 4, 1, ("grouped", "fixed"), 4),      # L = 1, 2 channels per group
    (2, 20, 17, 40, ("g1", "var3"), 1),         # a state size that is not a power of two
])
def test_matches_sequential(b, d, n, L, layouts, groups, reverse):
    inp = random_inputs(b, d, n, L, layouts[0], layouts[1], groups=groups, seed=b * 1000 + d + n + L)
    with use_backend("native"), torch.no_grad():
        out, last = _call(inp, delta_softplus=True, reverse=reverse, return_last_state=True)
    ref_out, ref_last = sequential_scan(**inp, delta_softplus=True, reverse=reverse)
    assert out.dtype == torch.float32 and last.shape == (b, d, n)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(last.double(), ref_last, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("opts", [dict(D=False, z=False, bias=False), dict(wide=True)])
def test_optional_inputs_and_softplus_threshold(opts):
    inp = random_inputs(2, 32, 8, 30, seed=3, **opts)
    for softplus in ([True] if opts.get("wide") else [False, True]):
        if not softplus:  # raw Δ must be positive for a decaying (well-conditioned) recurrence
            inp = dict(inp, delta=inp["delta"].abs())
        with use_backend("native"):
            out = _call(inp, delta_softplus=softplus)
        torch.testing.assert_close(out.double(), sequential_scan(**inp, delta_softplus=softplus)[0],
                                   atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("threads", [1, 3, 64])
def test_threads_give_identical_results(threads):
    inp = random_inputs(3, 80, 16, 45, "grouped", "grouped", groups=5, seed=1)
    with use_backend("native"), torch.no_grad():
        ref = _call(inp, delta_softplus=True)
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = _call(inp, delta_softplus=True)
        finally:
            torch.set_num_threads(prev)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    inp = random_inputs(1, 32, 16, 40, dtype=dtype, seed=2)
    with use_backend("native"):
        out, last = _call(inp, delta_softplus=True, return_last_state=True)
    with use_backend("torch"):
        ref, ref_last = _call(inp, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(last, ref_last, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("folder,name", _cases())
def test_official_fixture_forward(folder, name):
    case, io, _ = parity_case(folder)
    c = next(c for c in case["cases"] if c["name"] == name)
    inp = {k: io[v] for k, v in c["inputs"].items()}
    with use_backend("native"), torch.no_grad():
        run_fixture_forward(case, c, io, inp)


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _grads(inp: dict, backend: str, softplus: bool, reverse: bool, grad_out, grad_last=None) -> dict:
    """Gradients of every input given (float64 inputs stay float64) through ``backend``."""
    leaves = {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inp.items()}
    with use_backend(backend):
        out, last = _call(leaves, delta_softplus=softplus, reverse=reverse, return_last_state=True)
    outs, grads = [out], [grad_out.to(out.dtype)]
    if grad_last is not None:
        outs, grads = [out, last], [grads[0], grad_last.to(last.dtype)]
    torch.autograd.backward(outs, grads)
    return {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("b,d,n,L,layouts,groups,opts", [
    (2, 40, 5, 150, ("grouped", "grouped"), 2, {}),            # 3 checkpoint chunks (64 positions), 4-lane tails
    (1, 16, 16, 64, ("g1", "g1"), 1, {}),                      # exactly one chunk, one full block
    (3, 24, 7, 50, ("var3", "grouped"), 3, dict(D=False)),     # B without groups, C with 3
    (2, 20, 17, 1, ("g1", "var3"), 1, dict(z=False)),          # L = 1, a state size that is not a power of two
    (1, 12, 4, 70, ("grouped", "grouped"), 6, dict(bias=False)),  # 2 channels per group
])
@pytest.mark.parametrize("softplus", [True, False])
def test_backward_matches_float64_pytorch_path(b, d, n, L, layouts, groups, opts, reverse, softplus):
    """Every gradient (u, delta, A, B, C, D, z, delta_bias), also through the last state, against the PyTorch
    path's float64 gradients (themselves checked by gradcheck in test_kernels_scan.py)."""
    inp = random_inputs(b, d, n, L, layouts[0], layouts[1], groups=groups, seed=b * 100 + d + L, **opts)
    if not softplus:  # raw Δ must be positive for a decaying recurrence
        inp = dict(inp, delta=inp["delta"].abs(), delta_bias=None if inp["delta_bias"] is None
                   else inp["delta_bias"].abs())
    g = torch.Generator().manual_seed(7)
    grad_out, grad_last = torch.randn(b, d, L, generator=g), torch.randn(b, d, n, generator=g)
    ref = _grads({k: None if v is None else v.double() for k, v in inp.items()}, "torch", softplus, reverse,
                 grad_out.double(), grad_last.double())
    got = _grads(inp, "native", softplus, reverse, grad_out, grad_last)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == inp[k].dtype and got[k].shape == inp[k].shape, k
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(got[k].double(), ref[k], atol=2e-5 * max(1.0, scale), rtol=1e-4, msg=k)


@pytest.mark.parametrize("folder,name", _cases())
def test_official_fixture_gradients(folder, name):
    """The official fixtures' float64 reference gradients, through the native backward where B and C vary in time
    (a fixed B or C in training takes the PyTorch path: checked to be the case)."""
    case, io, _ = parity_case(folder)
    c = next(c for c in case["cases"] if c["name"] == name)
    inp = {k: io[v].clone().requires_grad_(True) for k, v in c["inputs"].items()}
    calls = []
    real = native.selective_scan_native_backward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pixelforge.kernels.scan.selective_scan_native_backward",
                   lambda *a: calls.append(1) or real(*a))
        with use_backend("native"):
            out = run_fixture_forward(case, c, io, inp)
        (out * io[c["grad_out"]]).sum().backward()
    assert calls == ([1] if inp["B"].dim() >= 3 and inp["C"].dim() >= 3 else [])
    for key, gname in c["reference_f64"]["grads"].items():
        exact = io[gname]
        atol = case["grad_atol"] * max(1.0, exact.abs().max().item())
        torch.testing.assert_close(inp[key].grad.double(), exact, atol=atol, rtol=case["grad_rtol"], msg=key)


@pytest.mark.parametrize("threads", [1, 3])
def test_backward_threads_give_identical_results(threads):
    inp = random_inputs(2, 80, 16, 45, "grouped", "grouped", groups=5, seed=4)
    grad_out = torch.randn(2, 80, 45, generator=torch.Generator().manual_seed(1))
    ref = _grads(inp, "native", True, False, grad_out)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = _grads(inp, "native", True, False, grad_out)
    finally:
        torch.set_num_threads(prev)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backward_half_inputs(dtype):
    inp = random_inputs(1, 32, 16, 40, "g1", "g1", dtype=dtype, seed=2)
    grad_out = torch.randn(1, 32, 40, generator=torch.Generator().manual_seed(3))
    got = _grads(inp, "native", True, True, grad_out)
    ref = _grads(inp, "torch", True, True, grad_out)
    for k in ref:
        assert got[k].dtype == ref[k].dtype, k
        torch.testing.assert_close(got[k].float(), ref[k].float(), atol=2e-2, rtol=2e-2, msg=k)


def test_auto_measures_native_for_inference_and_training(monkeypatch, tmp_path):
    """auto on CPU, native measured faster: inference and training calls (time-variant B/C) run the native kernels,
    each after its own measurement; a training call with a fixed B, and float64, take the PyTorch path."""
    fwd, bwd, raced = [], [], []
    real_fwd, real_bwd = native.selective_scan_native, native.selective_scan_native_backward
    monkeypatch.setattr("pixelforge.kernels.scan.selective_scan_native", lambda *a: fwd.append(1) or real_fwd(*a))
    monkeypatch.setattr("pixelforge.kernels.scan.selective_scan_native_backward",
                        lambda *a: bwd.append(1) or real_bwd(*a))
    monkeypatch.delenv("PIXELFORGE_KERNELS", raising=False)
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path))
    monkeypatch.setattr(dispatch, "_choices", {})
    monkeypatch.setattr(dispatch, "measure_candidates",
                        lambda cands: raced.append(sorted(cands)) or {"native": 1.0, "torch": 2.0})
    inp = random_inputs(1, 16, 4, 12, seed=0)
    with torch.no_grad():
        out = _call(inp, delta_softplus=True)
    assert (fwd, bwd, len(raced)) == ([1], [], 1)
    leaf = {k: (v.clone().requires_grad_(True) if k == "u" else v) for k, v in inp.items()}
    out_grad = _call(leaf, delta_softplus=True)
    out_grad.sum().backward()
    assert (fwd, bwd, len(raced)) == ([1, 1], [1], 2), "training calls are measured separately, then run native"
    torch.testing.assert_close(out_grad.detach(), out, atol=1e-5, rtol=1e-5)
    ref = _grads(inp, "torch", True, False, torch.ones(1, 16, 12))["u"]
    torch.testing.assert_close(leaf["u"].grad, ref, atol=1e-5, rtol=1e-5)
    fixed = random_inputs(1, 16, 4, 12, "fixed", "g1", seed=0)
    _call({**fixed, "u": fixed["u"].requires_grad_(True)}, delta_softplus=True).sum().backward()
    assert (fwd, bwd) == ([1, 1], [1]), "a fixed B in training takes the PyTorch path"
    with use_backend("torch"), torch.no_grad():
        _call(inp, delta_softplus=True)
    inp64 = {k: (v.double() if v is not None else None) for k, v in inp.items()}
    with use_backend("native"), torch.no_grad():
        assert _call(inp64, delta_softplus=True).dtype == torch.float64  # float64 stays on the PyTorch path
    assert (fwd, bwd) == ([1, 1], [1])


def test_backward_rejects_fixed_b():
    inp = random_inputs(1, 8, 4, 6, "fixed", "g1", seed=0)
    with pytest.raises(ValueError, match="B and C must be time-variant"):
        native.selective_scan_native_backward(*[inp[k] for k in NAMES], True, False, torch.ones(1, 8, 6), None)


def test_native_library_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path))
    first = native._build(native._compiler(), ["-O3"])
    stamp = first.stat().st_mtime_ns
    again = native._build(native._compiler(), ["-O3"])
    assert again == first and again.stat().st_mtime_ns == stamp and first.parent == tmp_path / "kernels"
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary files left behind


def test_a_killed_build_leaves_no_orphan(tmp_path, monkeypatch):
    """A build killed mid-compile leaves its temporary library behind; the next build (even a cache hit) removes
    it, and keeps the temporaries of builds still running."""
    home = tmp_path / "home"
    cc = tmp_path / "slowcc"  # a compiler that writes its output and then hangs
    cc.write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\n: > "$2"\nexec sleep 60\n')
    cc.chmod(0o755)
    code = "from pixelforge.kernels import native; native._build(native._compiler(), ['-O3'])"
    env = dict(os.environ, PIXELFORGE_HOME=str(home), CC=str(cc))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1],
                            start_new_session=True)
    try:
        for _ in range(600):
            orphans = list((home / "kernels").glob(".pf_scan_*.tmp")) if (home / "kernels").is_dir() else []
            if orphans or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the build and its compiler
        proc.wait()
    assert len(orphans) == 1 and str(proc.pid) in orphans[0].name
    live = home / "kernels" / f".pf_scan_x.so.{os.getpid()}-0123abcd.tmp"  # a build of this (live) process
    live.touch()
    old = home / "kernels" / ".pf_scan_abcd1234.so"  # an earlier version's temporary, without PID, an hour old
    old.touch()
    os.utime(old, (time.time() - 3600,) * 2)
    monkeypatch.setenv("PIXELFORGE_HOME", str(home))
    lib = native._build(native._compiler(), ["-O3"])
    (home / "kernels" / f".{lib.name}.{proc.pid}-89abcdef.tmp").touch()  # another orphan of the killed build
    assert native._build(native._compiler(), ["-O3"]) == lib  # a cache hit cleans too
    assert sorted(p.name for p in (home / "kernels").iterdir()) == sorted([lib.name, live.name])


def test_bad_compiler_reports_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="-fno-such-flag"):
        native._build(native._compiler(), ["-fno-such-flag"])
    assert not list((tmp_path / "kernels").iterdir())


def test_without_compiler_falls_back_quietly(tmp_path):
    """No C compiler: auto runs the PyTorch path without a warning; an explicit 'native' request is an error."""
    code = ("import warnings; warnings.simplefilter('error'); import torch\n"
            "from pixelforge.kernels import selective_scan, use_backend\n"
            "from pixelforge.kernels.dispatch import native_available\n"
            "u = torch.randn(1, 4, 6); A = -torch.ones(4, 3); B = torch.randn(1, 3, 6)\n"
            "with torch.no_grad():\n"
            "    out = selective_scan(u, u, A, B, B)\n"
            "assert not native_available() and out.shape == (1, 4, 6)\n"
            "try:\n"
            "    with use_backend('native'):\n"
            "        selective_scan(u, u, A, B, B)\n"
            "except RuntimeError as exc:\n"
            "    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PIXELFORGE_KERNELS", "CC")}
    env.update(PATH=str(tmp_path), PIXELFORGE_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "backend 'native' requested but the native kernels could not be built" in proc.stdout
    assert not proc.stderr

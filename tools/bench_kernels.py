"""Benchmark the shared kernels against naive PyTorch baselines: time, peak memory, speed ratio, max error.

    python tools/bench_kernels.py                 # CPU (PyTorch paths, native scan), plus CUDA (Triton) with a GPU
    python tools/bench_kernels.py --only scan --threads 1 --reps 5

Attention (HAT window / overlapping-key shapes, CRAFT rectangular windows, Swin 7x7, VAR global block-causal): the op
vs partition + matmul + bias + mask + softmax + matmul, inference and training (forward + backward, bias trainable).
Selective scan (Vim-tiny shapes, batch 1 and 8, d 384, n 16, L 197; MambaIR's one call per block, 4 directions of
d 360 in 4 groups at 64x64; long sequences L 2048 and 8192), forward and reverse: the op (on CPU its PyTorch path,
its native kernel as built here and as built with each ``--native-cflags``, and ``auto``, timed in turn in one
process) vs a sequential per-token loop written like the official ``selective_scan_ref`` (precomputed exp(Δ·A) and
Δ·B·u, one step and one einsum per position); the last column is the speed-up over the op's PyTorch path. Then
auto's measured choices. Peak memory: on CPU the growth of the resident set (VmHWM after a malloc_trim and a reset of
the high-water mark), on CUDA ``max_memory_allocated`` above the inputs.

    python tools/bench_kernels.py --only scan --threads 1 --cpu-time --native-cflags="-O3 -march=x86-64-v3"
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pixelforge.kernels import attention, native, selective_scan, use_backend  # noqa: E402
from pixelforge.kernels.dispatch import native_available  # noqa: E402
from bench_common import alternating_medians, cpu_model  # noqa: E402


# ------------------------------------------------------------------------------------------- measurement

def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
CPU_TIME = False


def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _clock(device: str):
    return time.process_time if CPU_TIME and device == "cpu" else time.perf_counter


def measure(fn, device: str, reps: int) -> tuple[float, float]:
    """(median seconds, peak extra memory in MiB) of fn() after one warm-up call.

    Seconds are wall-clock, or with ``--cpu-time`` CPU time of this process (steadier on a shared machine).
    """
    fn()
    _sync(device)
    times = []
    clock = _clock(device)
    for _ in range(reps):
        t0 = clock()
        fn()
        _sync(device)
        times.append(clock() - t0)
    return statistics.median(times), peak_mib(fn, device)


def peak_mib(fn, device: str) -> float:
    """Peak extra memory (MiB) of one call of fn()."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated() - base
    elif os.path.exists("/proc/self/clear_refs"):
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _rss()["VmRSS"]
            fn()
            peak = _rss()["VmHWM"] - base
        except OSError:
            peak = float("nan")
    else:
        peak = float("nan")
    return peak / 2 ** 20


def row(case: str, impl: str, t: float, mem: float, ref_t: float | None = None, err: float | None = None,
        base_t: float | None = None) -> None:
    ratio = "" if ref_t is None else f"{ref_t / t:8.1f}x"
    e = "" if err is None else f"{err:10.2e}"
    vs = "" if base_t is None else f"{base_t / t:8.2f}x"
    print(f"{case:40s} {impl:34s} {t * 1e3:10.2f} {mem:10.1f} {ratio:>9s} {e:>10s} {vs:>9s}", flush=True)


def header(title: str, base: str = "") -> None:
    print(f"\n== {title}")
    print(f"{'case':40s} {'implementation':34s} {'time ms':>10s} {'peak MiB':>10s} {'speed-up':>9s} "
          f"{'max err':>10s} {base:>9s}")


# ------------------------------------------------------------------------------------------- attention

def naive_attention(q, k, v, bias, mask, scale):
    """timm-style windowed attention: windows as batch, matmul, + bias + mask, softmax, matmul."""
    B, W, H, Nq, D = q.shape
    qw, kw, vw = (t.reshape(B * W, H, t.shape[3], t.shape[4]) for t in (q, k, v))  # partition
    s = (qw * scale) @ kw.transpose(-1, -2)
    if bias is not None:
        s = s + bias.unsqueeze(0)
    if mask is not None:
        s = s.view(B, W, H, Nq, -1) + mask.unsqueeze(1)
        s = s.view(B * W, H, Nq, -1)
    return (s.softmax(-1) @ vw).view(B, W, H, Nq, -1)


def attention_cases(device: str):
    """(name, B, W, H, Nq, Nk, D, bias?, mask kind)."""
    big = device == "cuda"
    return [
        ("HAT window 16 (shift mask)", 4 if big else 1, 16, 6, 256, 256, 30, True, "shift"),
        ("HAT OCA 16 -> keys 24x24", 4 if big else 1, 16, 6, 256, 576, 30, True, None),
        ("CRAFT rect 4x16", 4 if big else 1, 64, 3, 64, 64, 16, True, None),
        ("Swin 7x7 (shift mask)", 16 if big else 4, 64, 3, 49, 49, 32, True, "shift"),
        ("VAR global N=680 block-causal", 8 if big else 2, 1, 16, 680, 680, 64, False, "causal"),
    ]


def attention_inputs(B, W, H, Nq, Nk, D, has_bias, mask_kind, device, dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, W, H, n, D, generator=g).to(device, dtype) for n in (Nq, Nk, Nk))
    bias = torch.randn(H, Nq, Nk, generator=g).to(device) if has_bias else None
    mask = None
    if mask_kind == "shift":  # regions of a shifted window: -100 between regions, on half of the windows
        region = torch.randint(0, 4, (W, Nq), generator=g)
        mask = torch.where(region[:, :, None] == region[:, None, :], 0.0, -100.0)
        mask[: W // 2] = 0.0
        mask = mask.to(device)
    elif mask_kind == "causal":  # VAR: scales 1..16 (680 tokens), tokens see their own and coarser scales
        level = torch.cat([torch.full((s * s,), i) for i, s in enumerate((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))])
        mask = torch.where(level[:, None] >= level[None, :], 0.0, float("-inf"))[None].to(device)
    return q, k, v, bias, mask


def bench_attention(device: str, reps: int, dtype: torch.dtype) -> None:
    backend = "triton" if device == "cuda" else "torch"
    header(f"attention on {device} ({dtype}), op backend {backend}")
    for name, B, W, H, Nq, Nk, D, has_bias, mask_kind in attention_cases(device):
        q, k, v, bias, mask = attention_inputs(B, W, H, Nq, Nk, D, has_bias, mask_kind, device, dtype)
        scale = D ** -0.5
        with torch.no_grad():
            with use_backend(backend):
                out = attention(q, k, v, bias=bias, mask=mask)
            ref = naive_attention(q.double(), k.double(), v.double(), None if bias is None else bias.double(),
                                  None if mask is None else mask.double(), scale)
            err = (out.double() - ref).abs().max().item()
            t_n, m_n = measure(lambda: naive_attention(q, k, v, bias, mask, scale), device, reps)
            with use_backend(backend):
                t_o, m_o = measure(lambda: attention(q, k, v, bias=bias, mask=mask), device, reps)
        row(f"{name} fwd", "naive", t_n, m_n)
        row(f"{name} fwd", f"op ({backend})", t_o, m_o, t_n, err)
        # training step: q, k, v and the bias need gradients
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        bg = None if bias is None else bias.detach().requires_grad_(True)

        def train(fn):
            def step():
                for t in (qg, kg, vg, bg):
                    if t is not None:
                        t.grad = None
                fn().float().sum().backward()
            return step

        t_n, m_n = measure(train(lambda: naive_attention(qg, kg, vg, bg, mask, scale)), device, reps)
        with use_backend(backend):
            t_o, m_o = measure(train(lambda: attention(qg, kg, vg, bias=bg, mask=mask)), device, reps)
        row(f"{name} fwd+bwd", "naive", t_n, m_n)
        row(f"{name} fwd+bwd", f"op ({backend})", t_o, m_o, t_n)


# ------------------------------------------------------------------------------------------- selective scan

def sequential_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """A per-token loop in the manner of the official selective_scan_ref (float32, B/C (b, g, n, L))."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, L = u.shape
    B = B.float().repeat_interleave(d // B.shape[1], dim=1)
    C = C.float().repeat_interleave(d // C.shape[1], dim=1)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = A.new_zeros(b, d, A.shape[1])
    ys = []
    for i in range(L):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in), x


def scan_inputs(b, d, n, L, device, groups=1, gate=True):
    g = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(d, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                   + torch.log(torch.tensor(1e-3)))
    return dict(u=torch.randn(b, d, L, generator=g), delta=torch.randn(b, d, L, generator=g) * 0.5,
                A=-torch.exp(torch.log(torch.arange(1.0, n + 1)).repeat(d, 1)),
                B=torch.randn(b, groups, n, L, generator=g), C=torch.randn(b, groups, n, L, generator=g),
                D=torch.ones(d), z=torch.randn(b, d, L, generator=g) if gate else None,
                delta_bias=dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt), Mamba's initialisation


@contextlib.contextmanager
def native_build(flags: str | None):
    """Run the native backend as built with compiler ``flags`` ($PIXELFORGE_NATIVE_CFLAGS; None: as configured)."""
    if flags is None:
        yield
        return
    old = os.environ.get(native.FLAGS_ENV)
    os.environ[native.FLAGS_ENV] = flags
    try:
        yield
    finally:
        os.environ.pop(native.FLAGS_ENV)
        if old is not None:
            os.environ[native.FLAGS_ENV] = old


def scan_cases(long_lengths: list[int]):
    """(name, b, d, n, L, groups of B/C, gate z)."""
    cases = [("Vim-tiny b=1 L=197", 1, 384, 16, 197, 1, True), ("Vim-tiny b=8 L=197", 8, 384, 16, 197, 1, True),
             ("MambaIR 64x64 4x360 ch g4", 1, 4 * 360, 16, 64 * 64, 4, False),
             ("MambaIR-light train b=16 32x32 2x120 ch g2", 16, 2 * 120, 10, 32 * 32, 2, False)]
    return cases + [(f"long b=1 L={L}", 1, 384, 16, L, 1, True) for L in long_lengths]


def bench_scan(device: str, reps: int, long_lengths: list[int], backward: bool, cflags: list[str]) -> None:
    """Forward: every backend of the device (CPU: the PyTorch path, the native kernel as configured and as built
    with each of ``cflags``, auto; CUDA: Triton) against the sequential loop, timed in turn; forward + backward: the
    device's training backends (CPU: PyTorch path and the native forward + backward)."""
    if device == "cuda":
        impls = [("op (triton)", "triton", None)]
    else:
        impls = [("op (torch)", "torch", None)]
        if native_available():
            impls += [(f"op (native {os.environ.get(native.FLAGS_ENV, 'default')})", "native", None)]
            impls += [(f"op (native {flags})", "native", flags) for flags in cflags]
            impls += [("op (auto)", "auto", None)]
    train_backends = ["triton"] if device == "cuda" else ["torch"] + (["native"] if native_available() else [])
    header(f"selective scan on {device}, {', '.join(name for name, _, _ in impls)}", "vs torch")
    for name, b, d, n, L, groups, gate in scan_cases(long_lengths):
        inp = {k: v.to(device) if v is not None else None
               for k, v in scan_inputs(b, d, n, L, device, groups, gate).items()}
        args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        seq_reps = max(1, min(reps, 3)) if L > 1000 else reps
        with torch.no_grad():
            ref_out, ref_last = sequential_scan(*args, True)
            t_s, m_s = measure(lambda: sequential_scan(*args, True), device, seq_reps)
            row(f"{name} fwd", "sequential loop", t_s, m_s)

            def call(backend, flags, reverse=False, last=False):
                with use_backend(backend), native_build(flags):
                    res = selective_scan(*args, delta_softplus=True, return_last_state=last, reverse=reverse)
                _sync(device)
                return res

            runs = [(impl, reverse) for impl in impls for reverse in (False, True)]
            fns = [lambda i=impl, r=reverse: call(i[1], i[2], r) for impl, reverse in runs]
            times = alternating_medians(fns, seq_reps, {"t": _clock(device)})
            base = {}
            for (impl, reverse), fn, t in zip(runs, fns, times):
                label, backend, flags = impl
                err = None
                if not reverse:
                    out, last = call(backend, flags, last=True)
                    err = max((out - ref_out).abs().max().item(), (last - ref_last).abs().max().item())
                base.setdefault(reverse, t["t"])  # the PyTorch path comes first
                row(f"{name} {'rev' if reverse else 'fwd'}", label, t["t"], peak_mib(fn, device),
                    t_s, err, base[reverse])
        if backward and L <= 2048:
            leaves = [a.detach().requires_grad_(True) if a is not None else None for a in args]

            def train(fn):
                def step():
                    for t in leaves:
                        if t is not None:
                            t.grad = None
                    fn(*leaves).float().sum().backward()
                return step

            t_s = None  # the sequential loop's autograd takes minutes at training shapes: timed on small ones only
            if b * d * L <= 1 << 20:
                t_s, m_s = measure(train(lambda *a: sequential_scan(*a, True)[0]), device, seq_reps)
                row(f"{name} fwd+bwd", "sequential loop (autograd)", t_s, m_s)
            base_t = None
            for backend in train_backends:
                with use_backend(backend):
                    t_o, m_o = measure(train(lambda *a: selective_scan(*a, delta_softplus=True)), device, reps)
                base_t = base_t or t_o  # the first (PyTorch path on CPU) is the base of the last column
                row(f"{name} fwd+bwd", f"op ({backend})", t_o, m_o, t_s, None, base_t)
    path = native.library_path()
    choices = path.with_name(path.stem + ".auto.json") if path is not None else None
    if device == "cpu" and choices is not None and choices.is_file():
        print(f"\nauto's measured choices ({choices}):")
        for key, entry in json.loads(choices.read_text()).items():
            print(f"  {' '.join(json.loads(key))}: {entry['choice']} ({entry['ms']} ms)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["attention", "scan"], help="run one section")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--long", type=int, nargs="*", default=[2048, 8192], help="long scan lengths")
    parser.add_argument("--no-backward", action="store_true", help="forward timings only")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda when present")
    parser.add_argument("--cpu-time", action="store_true",
                        help="report process CPU time instead of wall-clock time on CPU (use with --threads 1)")
    parser.add_argument("--native-cflags", action="append", default=[], metavar="FLAGS",
                        help="also time the native scan built with these compiler flags (repeatable), e.g. "
                             "--native-cflags='-O3 -march=x86-64-v3' (AVX2) or --native-cflags=-O3 (baseline)")
    args = parser.parse_args(argv)
    global CPU_TIME
    CPU_TIME = args.cpu_time
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_model()} (torch CPU capability {torch.backends.cpu.get_cpu_capability()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
          + (", CPU times are process CPU time" if args.cpu_time else ", times are wall-clock"))
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in devices:
        if args.only in (None, "attention"):
            for dtype in ([torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]):
                bench_attention(device, args.reps, dtype)
        if args.only in (None, "scan"):
            bench_scan(device, args.reps, args.long, not args.no_backward, args.native_cflags)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Native CPU kernels: the fused selective-scan forward and backward (``scan.c``), built on first use and called
through ctypes.

The C source needs no Python or torch headers: the first call compiles it with the system C compiler (``$CC``,
else ``cc``/``gcc``/``clang``; ``-O3 -march=native``, retried with fewer flags; ``$PIXELFORGE_NATIVE_CFLAGS``
replaces them, e.g. ``-O3 -march=x86-64-v3`` for an AVX2 build) into ``$PIXELFORGE_HOME/kernels`` (default
``~/.cache/pixelforge/kernels``), keyed by a hash of the source, the flags, the compiler and the CPU, and written
atomically (temporaries left by a killed build are removed by the next one), so concurrent processes never load a
half-written library. The kernel's vector width follows the target (16 float lanes with AVX-512, else 8). Without a
working compiler :func:`native_available` is False and the ops take their PyTorch path (one log line at INFO, no
warning). ``PIXELFORGE_KERNELS=torch`` never builds anything.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import torch

__all__ = ["native_available", "library_path", "cache_dir", "cpu_signature", "selective_scan_native",
           "selective_scan_native_backward", "NATIVE_MAX_DSTATE"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("scan.c")
FLAGS_ENV = "PIXELFORGE_NATIVE_CFLAGS"
# tried in order: the host's full vector width (x86: prefer 512-bit vectors where AVX-512 exists), the host's
# instruction set (compilers without -mprefer-vector-width, e.g. on ARM), the compiler's baseline target
_FLAG_SETS = (("-O3", "-march=native", "-mprefer-vector-width=512"), ("-O3", "-march=native"), ("-O3",))
# always passed: -fno-trapping-math lets GCC if-convert the kernel's branch-free clamps and selects, without which
# its loops stay scalar on AVX2 (10x slower); the kernel raises no floating-point exceptions anyway
_FIXED_FLAGS = ("-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared")
_COMPILE_TIMEOUT_S = 300
# a temporary file of an earlier version (no PID in its name) older than this belongs to no running build
_STALE_S = 2 * _COMPILE_TIMEOUT_S
# the kernel keeps a (dstate × lanes) state tile per work item; larger states take the PyTorch path
NATIVE_MAX_DSTATE = 256


def cache_dir() -> Path:
    """``$PIXELFORGE_HOME/kernels``: the built libraries and auto's measured backend choices."""
    home = os.environ.get("PIXELFORGE_HOME") or Path.home() / ".cache" / "pixelforge"
    return Path(home) / "kernels"


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.lru_cache(maxsize=None)
def cpu_signature() -> str:
    """What -march=native depends on: the CPU model and flags (so a shared cache never serves a foreign binary);
    also what keys auto's measured choices between non-native candidates. Read once per process."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))][:3]
        return "\n".join(keep)
    except OSError:
        return platform.processor() or platform.machine()


def _clean_stale_temps(folder: Path) -> None:
    """Remove what killed builds left in the cache: temporaries whose writer process is gone (named like
    :func:`pixelforge.data.image_io.atomic_open`'s, which ``remove_stale_temporaries`` recognises), and the PID-less
    ``.pf_scan_*.so`` temporaries of earlier versions once older than any build can take."""
    from ...data.image_io import remove_stale_temporaries

    remove_stale_temporaries(folder)
    for path in folder.glob(".pf_scan_*.so"):
        try:
            if time.time() - path.stat().st_mtime > _STALE_S:
                path.unlink()
        except OSError:  # vanished meanwhile
            continue


def _build(cc: str, flags: list[str]) -> Path:
    """Compile scan.c with ``flags`` into the cache (atomically); returns the library path."""
    source = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    command = [*flags, *_FIXED_FLAGS]
    key = hashlib.sha256(b"\0".join([source, " ".join(command).encode(), version.encode(),
                                     cpu_signature().encode(), platform.machine().encode()])).hexdigest()[:16]
    out_dir = cache_dir()
    lib = out_dir / f"pf_scan_{key}.so"
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out_dir)
    if lib.is_file():
        return lib
    # named as atomic_open names its temporaries (with this process's PID), so the next build tells an orphan from
    # a live build
    tmp = out_dir / f".{lib.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        res = subprocess.run([cc, *command, "-o", str(tmp), str(_SOURCE), "-lpthread"], capture_output=True,
                             text=True, timeout=_COMPILE_TIMEOUT_S)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} {' '.join(flags)} failed: {res.stderr.strip()[-500:]}")
        os.chmod(tmp, 0o755)  # whatever the umask: a shared cache must stay loadable by others
        os.replace(tmp, lib)
    finally:
        tmp.unlink(missing_ok=True)
    return lib


def _library() -> ctypes.CDLL | None:
    return _load(os.environ.get("CC"), os.environ.get(FLAGS_ENV))


@functools.lru_cache(maxsize=None)
def _load(cc_env: str | None, flags_env: str | None) -> ctypes.CDLL | None:
    """The library built for ``$CC`` and ``$PIXELFORGE_NATIVE_CFLAGS`` (the arguments), loaded once per pair."""
    cc = _compiler()
    if cc is None:
        _log.info("pixelforge native kernels unavailable: no C compiler (set $CC); using the PyTorch path")
        return None
    errors = []
    for flags in [shlex.split(flags_env)] if flags_env else _FLAG_SETS:
        try:
            lib = ctypes.CDLL(str(_build(cc, list(flags))))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        for fn in (lib.pf_selective_scan_fwd, lib.pf_selective_scan_bwd):
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
        lib.pf_selective_scan_items.restype = ctypes.c_int64
        lib.pf_selective_scan_items.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        return lib
    _log.info("pixelforge native kernels unavailable (%s); using the PyTorch path", "; ".join(errors))
    return None


def library_path() -> Path | None:
    """The loaded library (built on first call), None without one; its name hashes source, compiler, flags and CPU."""
    lib = _library()
    return None if lib is None else Path(lib._name)


def native_available() -> bool:
    """Whether the native CPU kernels are built (building them on the first call) and loadable."""
    return _library() is not None


def _bc_layout(M: torch.Tensor) -> tuple[int, int, list[int]]:
    """(groups, time-variant?, strides as (b, g, n, L)) of B or C; time-invariant (d, n) strides come first."""
    if M.dim() == 2:
        return 1, 0, [*M.stride(), 0, 0]
    if M.dim() == 3:
        return 1, 1, [M.stride(0), 0, M.stride(1), M.stride(2)]
    return M.shape[1], 1, list(M.stride())


def _params(f32: list, delta_softplus: bool, reverse: bool) -> list[int]:
    """The kernels' integer parameters (sizes, flags, element strides) for float32 inputs u..delta_bias."""
    u_, delta_, A_, B_, C_, D_, z_, bias_ = f32
    b, d, L = u_.shape
    gB, b_var, sB = _bc_layout(B_)
    gC, c_var, sC = _bc_layout(C_)
    return [b, d, L, A_.shape[1], gB, gC, b_var, c_var, int(delta_softplus), int(reverse), *u_.stride(),
            *delta_.stride(), *(z_.stride() if z_ is not None else (0, 0, 0)), *A_.stride(), *sB, *sC,
            D_.stride(0) if D_ is not None else 0, bias_.stride(0) if bias_ is not None else 0]


def _checked_library(n: int) -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("native kernels are not available (no working C compiler)")
    if n > NATIVE_MAX_DSTATE:
        raise ValueError(f"selective_scan native: dstate {n} > {NATIVE_MAX_DSTATE}")
    return lib


def selective_scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool):
    """Selective-scan forward on CPU in one fused pass (no autograd; inputs as :func:`selective_scan`).

    The C kernel reads the inputs in place through their strides (float32; other dtypes are converted first) and
    does the whole op: softplus, recurrence, contraction with C, D·u and the gate; states in float32.
    Returns:
        out (b, d, L) in u's dtype, last state (b, d, n) float32.
    """
    b, d, L = u.shape
    n = A.shape[1]
    lib = _checked_library(n)
    f32 = [None if x is None else x.float() for x in (u, delta, A, B, C, D, z, delta_bias)]
    out = torch.empty(b, d, L, dtype=torch.float32)
    last = torch.empty(b, d, n, dtype=torch.float32)
    prm = _params(f32, delta_softplus, reverse)
    ptrs = (ctypes.c_void_p * 10)(*[0 if x is None else x.data_ptr() for x in (*f32, out, last)])
    status = lib.pf_selective_scan_fwd(ptrs, (ctypes.c_int64 * len(prm))(*prm), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"selective_scan native kernel rejected b={b} d={d} L={L} n={n} groups B={prm[4]} "
                           f"C={prm[5]} (status {status})")
    return out.to(u.dtype), last


def selective_scan_native_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool,
                                   grad_out: torch.Tensor, grad_last: torch.Tensor | None):
    """Gradients of the selective scan on CPU (inputs as :func:`selective_scan`; B and C time-variant).

    The C kernel recomputes the states chunk by chunk from checkpoints (nothing of size L·d·n is stored) and walks
    them back; float32 throughout. grad_out: (b, d, L); grad_last: (b, d, n) or None.
    Returns:
        du, ddelta (b, d, L), dA (d, n), dB and dC in B's and C's shapes, dD (d,), dz (b, d, L), ddelta_bias (d,),
        float32; the entries for absent optional inputs are None.
    """
    b, d, L = u.shape
    n = A.shape[1]
    lib = _checked_library(n)
    f32 = [None if x is None else x.float() for x in (u, delta, A, B, C, D, z, delta_bias)]
    prm = _params(f32, delta_softplus, reverse)
    if not (prm[6] and prm[7]):
        raise ValueError("selective_scan native backward: B and C must be time-variant ((b, n, L) or (b, g, n, L))")
    c_prm = (ctypes.c_int64 * len(prm))(*prm)
    items = lib.pf_selective_scan_items(c_prm)
    gout = grad_out.float().contiguous()
    glast = None if grad_last is None else grad_last.float().contiguous()
    du, ddelta, dz = (torch.empty(b, d, L) for _ in range(3))
    dA, dD, dbias = torch.empty(b, d, n), torch.empty(b, d), torch.empty(b, d)
    dB_part, dC_part = torch.empty(b, items, n, L), torch.empty(b, items, n, L)
    tensors = (*f32, gout, glast, du, ddelta, dz, dA, dD, dbias, dB_part, dC_part)
    ptrs = (ctypes.c_void_p * len(tensors))(*[0 if x is None else x.data_ptr() for x in tensors])
    status = lib.pf_selective_scan_bwd(ptrs, c_prm, torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"selective_scan native backward rejected b={b} d={d} L={L} n={n} groups B={prm[4]} "
                           f"C={prm[5]} (status {status})")

    def per_group(part: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        # work items run group-major (lcm of the B and C groups, then channel blocks): sum those of each group of M
        groups = 1 if M.dim() == 3 else M.shape[1]
        return part.reshape(b, groups, -1, n, L).sum(2).reshape(M.shape)

    return (du, ddelta, dA.sum(0), per_group(dB_part, B), per_group(dC_part, C),
            None if D is None else dD.sum(0), None if z is None else dz,
            None if delta_bias is None else dbias.sum(0))

"""Native CPU kernels: the fused selective-scan forward (``scan.c``), built on first use and called through ctypes.

The C source needs no Python or torch headers: the first call compiles it with the system C compiler (``$CC``,
else ``cc``/``gcc``/``clang``; ``-O3 -march=native``, retried without ``-march=native``) into
``$PIXELFORGE_HOME/kernels`` (default ``~/.cache/pixelforge/kernels``), keyed by a hash of the source, the flags, the
compiler and the CPU, and written atomically, so concurrent processes never load a half-written library. Without a
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
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["native_available", "selective_scan_native", "NATIVE_MAX_DSTATE"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("scan.c")
_FLAG_SETS = (["-O3", "-march=native", "-mprefer-vector-width=512"], ["-O3"])
# the kernel keeps a (dstate × 16) state tile per work item; larger states take the PyTorch path
NATIVE_MAX_DSTATE = 256


def _cache_dir() -> Path:
    home = os.environ.get("PIXELFORGE_HOME") or Path.home() / ".cache" / "pixelforge"
    return Path(home) / "kernels"


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and flags (so a shared cache never serves a foreign binary)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))][:3]
        return "\n".join(keep)
    except OSError:
        return platform.processor() or platform.machine()


def _build(cc: str, flags: list[str]) -> Path:
    """Compile scan.c with ``flags`` into the cache (atomically); returns the library path."""
    source = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                     _cpu_signature().encode(), platform.machine().encode()])).hexdigest()[:16]
    out_dir = _cache_dir()
    lib = out_dir / f"pf_scan_{key}.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix=".pf_scan_", dir=out_dir)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, "-fopenmp-simd", "-fPIC", "-shared", "-o", tmp, str(_SOURCE), "-lpthread"],
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} {' '.join(flags)} failed: {res.stderr.strip()[-500:]}")
        os.chmod(tmp, 0o755)  # mkstemp made it private; a shared cache must stay loadable by others
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        _log.info("pixelforge native kernels unavailable: no C compiler (set $CC); using the PyTorch path")
        return None
    errors = []
    for flags in _FLAG_SETS:
        try:
            lib = ctypes.CDLL(str(_build(cc, flags)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        fn = lib.pf_selective_scan_fwd
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
        return lib
    _log.info("pixelforge native kernels unavailable (%s); using the PyTorch path", "; ".join(errors))
    return None


def native_available() -> bool:
    """Whether the native CPU kernels are built (building them on the first call) and loadable."""
    return _library() is not None


def selective_scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool):
    """Selective-scan forward on CPU in one fused pass (no autograd; inputs as :func:`selective_scan`).

    The C kernel reads the inputs in place through their strides (float32; other dtypes are converted first) and
    does the whole op: softplus, recurrence, contraction with C, D·u and the gate; states in float32.
    Returns:
        out (b, d, L) in u's dtype, last state (b, d, n) float32.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("native kernels are not available (no working C compiler)")
    b, d, L = u.shape
    n = A.shape[1]
    if n > NATIVE_MAX_DSTATE:
        raise ValueError(f"selective_scan native: dstate {n} > {NATIVE_MAX_DSTATE}")
    f32 = [None if x is None else x.float() for x in (u, delta, A, B, C, D, z, delta_bias)]
    u_, delta_, A_, B_, C_, D_, z_, bias_ = f32

    def bc(M: torch.Tensor) -> tuple[int, int, list[int]]:
        """(groups, variable?, strides as (b, g, n, L)) of B or C; time-invariant (d, n) strides come first."""
        if M.dim() == 2:
            return 1, 0, [*M.stride(), 0, 0]
        if M.dim() == 3:
            return 1, 1, [M.stride(0), 0, M.stride(1), M.stride(2)]
        return M.shape[1], 1, list(M.stride())

    gB, b_var, sB = bc(B_)
    gC, c_var, sC = bc(C_)
    out = torch.empty(b, d, L, dtype=torch.float32)
    last = torch.empty(b, d, n, dtype=torch.float32)
    ptrs = (ctypes.c_void_p * 10)(*[0 if x is None else x.data_ptr() for x in (*f32, out, last)])
    prm = [b, d, L, n, gB, gC, b_var, c_var, int(delta_softplus), int(reverse), *u_.stride(), *delta_.stride(),
           *(z_.stride() if z_ is not None else (0, 0, 0)), *A_.stride(), *sB, *sC,
           D_.stride(0) if D_ is not None else 0, bias_.stride(0) if bias_ is not None else 0]
    status = lib.pf_selective_scan_fwd(ptrs, (ctypes.c_int64 * len(prm))(*prm), torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"selective_scan native kernel rejected b={b} d={d} L={L} n={n} groups B={gB} C={gC} "
                           f"(status {status})")
    return out.to(u.dtype), last

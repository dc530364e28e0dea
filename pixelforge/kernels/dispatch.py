"""Backend selection for the shared kernels: ``auto``, ``torch``, ``triton`` or ``native``.

The backend is chosen, in order of precedence, by the innermost :func:`use_backend` context, then by the
``PIXELFORGE_KERNELS`` environment variable (read at every call), then ``auto``.

- ``triton``: the Triton kernels (CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``).
- ``native``: the compiled CPU kernels of :mod:`pixelforge.kernels.native` (the selective-scan forward), built
  on first use with the system C compiler; an op without a native kernel (attention, whose PyTorch path is
  already ATen's fused SDPA) takes its PyTorch path.
- ``torch``: the PyTorch path everywhere (the reference).
- ``auto``: Triton for CUDA tensors when Triton imports and works; native for CPU tensors of ops that have a
  native kernel, when it builds; the PyTorch path otherwise.

Triton is imported lazily, on the first call that wants it, and the native library is built on the first op call
that wants it, so importing pixelforge touches neither.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Iterator

import torch

from .native import native_available

__all__ = ["BACKENDS", "use_backend", "get_backend", "resolve_backend", "triton_available", "native_available"]

BACKENDS = ("auto", "torch", "triton", "native")
ENV_VAR = "PIXELFORGE_KERNELS"

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("pixelforge_kernels_backend", default=None)


def _check(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r} from {source}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the shared kernels inside the ``with`` block with backend ``name`` (auto, torch, triton, native)."""
    token = _override.set(_check(name, "use_backend()"))
    try:
        yield
    finally:
        _override.reset(token)


def get_backend() -> str:
    """The requested backend: the innermost :func:`use_backend`, else ``$PIXELFORGE_KERNELS``, else ``auto``."""
    name = _override.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR)
    return _check(env, f"${ENV_VAR}") if env else "auto"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # any failure (missing package, broken install, driver trouble) means "not available"
        return False
    return True


def triton_available(device: torch.device | None = None) -> bool:
    """Whether the Triton kernels can run on ``device`` (a CUDA device, or any device under ``TRITON_INTERPRET=1``)."""
    if not _triton_importable():
        return False
    if _interpreting():
        return True
    return device is not None and device.type == "cuda"


def resolve_backend(*tensors: torch.Tensor, has_native: bool = False) -> str:
    """``"torch"``, ``"triton"`` or ``"native"`` for an op on ``tensors``, following :func:`get_backend`.

    ``has_native``: whether the op has a native CPU kernel for this call. ``triton`` or ``native`` requested
    explicitly for tensors they cannot run on raises ``RuntimeError``; ``auto`` picks Triton only for CUDA
    tensors (never for CPU tensors, even under ``TRITON_INTERPRET=1``) and native only for CPU tensors.
    """
    name = get_backend()
    device = tensors[0].device
    if name == "torch":
        return "torch"
    if name == "triton":
        if not triton_available(device):
            why = "Triton is not importable" if not _triton_importable() else f"tensors are on {device}, not CUDA"
            raise RuntimeError(f"kernel backend 'triton' requested but {why} "
                               "(set PIXELFORGE_KERNELS=torch or auto, or TRITON_INTERPRET=1 to emulate on CPU)")
        return "triton"
    if name == "native":
        if device.type != "cpu":
            raise RuntimeError(f"kernel backend 'native' requested but tensors are on {device}; native kernels run "
                               "on CPU tensors (set PIXELFORGE_KERNELS=auto)")
        if not has_native:
            return "torch"
        if not native_available():
            raise RuntimeError("kernel backend 'native' requested but the native kernels could not be built (no "
                               "working C compiler; see the pixelforge.kernels.native log) — set "
                               "PIXELFORGE_KERNELS=torch or auto")
        return "native"
    if device.type == "cuda" and triton_available(device):
        return "triton"
    if device.type == "cpu" and has_native and native_available():
        return "native"
    return "torch"

"""The two shared ops every model uses: windowed attention and the selective scan.

Backends: ``auto`` (Triton for CUDA tensors when Triton works; on CPU the native scan kernel for inference calls
when it builds; PyTorch otherwise), ``torch``, ``triton``, ``native``; chosen with :func:`use_backend` or the
``PIXELFORGE_KERNELS`` environment variable (see :mod:`pixelforge.kernels.dispatch`).
"""
from .attention import attention, attention_reference
from .dispatch import get_backend, use_backend
from .scan import selective_scan

__all__ = ["attention", "attention_reference", "selective_scan", "use_backend", "get_backend"]

"""The two shared ops every model uses: windowed attention and the selective scan.

Backends: ``auto`` (Triton for CUDA tensors when Triton works, PyTorch otherwise), ``torch``, ``triton``; chosen
with :func:`use_backend` or the ``PIXELFORGE_KERNELS`` environment variable.
"""
from .attention import attention, attention_reference
from .dispatch import get_backend, use_backend
from .scan import selective_scan

__all__ = ["attention", "attention_reference", "selective_scan", "use_backend", "get_backend"]

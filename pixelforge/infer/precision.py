"""Devices and numeric precision for inference: fp32, or bf16/fp16 autocast on CPU and CUDA."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "NonFiniteOutputError", "resolve_device", "autocast", "check_finite"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteOutputError(RuntimeError):
    """A reduced-precision forward produced NaN or infinite values (fp16 overflow, typically)."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU raises ValueError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device '{device}'; use cpu or cuda")
    return device


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context running the forward in ``precision`` (``fp32``: no autocast; ``bf16``/``fp16``: torch.autocast).

    Weights stay in float32; autocast casts the inputs of matmuls and convolutions, keeping reductions such as
    LayerNorm in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])


def check_finite(out: torch.Tensor, precision: str) -> torch.Tensor:
    """Raise :class:`NonFiniteOutputError` when ``out`` holds NaN/inf, naming the precision and the remedy."""
    if not torch.isfinite(out).all():
        hint = "; use --precision bf16 or fp32" if precision == "fp16" else ""
        raise NonFiniteOutputError(f"the model produced NaN or infinite values in {precision}{hint}")
    return out

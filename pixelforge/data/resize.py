"""MATLAB-compatible bicubic ``imresize`` (with antialiasing when downscaling), as used to make SR benchmark inputs."""
from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["imresize", "lanczos_resize"]


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel with a = -0.5 (MATLAB's bicubic)."""
    ax = x.abs()
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=64)
def _resize_matrix(in_len: int, out_len: int, scale: float) -> torch.Tensor:
    """(out_len, in_len) float64 matrix of MATLAB's bicubic weights, border indices mirrored symmetrically."""
    kernel_width = 4.0 / scale if scale < 1 else 4.0  # antialiasing widens the kernel when downscaling
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    idx = left.unsqueeze(1) + torch.arange(taps, dtype=torch.float64)  # (out, taps), 1-based
    dist = u.unsqueeze(1) - idx
    weights = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    weights = weights / weights.sum(1, keepdim=True)
    # symmetric mirroring: index 0 -> 1, -1 -> 2, in_len + 1 -> in_len, ...
    idx0 = idx.long() - 1
    idx0 = torch.where(idx0 < 0, -idx0 - 1, idx0)
    idx0 = torch.where(idx0 >= in_len, 2 * in_len - idx0 - 1, idx0)
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, idx0, weights)
    return matrix


def imresize(img: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize like MATLAB ``imresize(img, scale, 'bicubic')``.

    Args:
        img: (..., H, W) float tensor (any value range).
        scale: resize factor (e.g. 1/4 to downscale by 4); output size is ceil(H·scale) × ceil(W·scale).
    Returns:
        (..., ceil(H·scale), ceil(W·scale)) in ``img``'s dtype (computed in float64 for exactness on small inputs,
        float32 otherwise).
    """
    h, w = img.shape[-2:]
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    work = torch.float64 if img.dtype == torch.float64 else torch.float32
    mh = _resize_matrix(h, out_h, scale).to(work)
    mw = _resize_matrix(w, out_w, scale).to(work)
    out = mh @ img.to(work) @ mw.T
    return out.to(img.dtype)


def lanczos_resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float → (C, *size) with Pillow's Lanczos (a = 3) on float32 planes (no 8-bit rounding)."""
    import numpy as np
    from PIL import Image

    planes = [Image.fromarray(c.float().cpu().numpy()).resize(size[::-1], Image.Resampling.LANCZOS)
              for c in img]
    return torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32).copy()) for p in planes])

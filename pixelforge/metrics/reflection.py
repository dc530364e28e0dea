"""The RRFormer evaluation protocol for reflection removal (specs/rrformer.md §4): output clipped to [0, 1], ×255,
**truncated** to uint8, PSNR and SSIM on RGB with no border crop."""
from __future__ import annotations

import numpy as np
import torch

from .sr import psnr_ssim

__all__ = ["score_pair", "to_uint8_truncated"]


def to_uint8_truncated(img: torch.Tensor) -> np.ndarray:
    """RRFormer's test conversion: (3, H, W) float → clip [0, 1] → ×255 → truncate → uint8 H×W×3."""
    arr = (img.detach().float().cpu().clamp(0, 1) * 255).numpy().astype(np.uint8)
    return arr.transpose(1, 2, 0)


def score_pair(img: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """PSNR/SSIM of (3, H, W) images under the RRFormer protocol (truncated uint8, RGB, crop 0)."""
    return psnr_ssim(to_uint8_truncated(img), to_uint8_truncated(gt), crop_border=0, test_y_channel=False)

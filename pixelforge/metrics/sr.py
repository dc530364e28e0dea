"""PSNR and SSIM under the BasicSR protocol (specs/sr-evaluation.md §3), exact to 1e-6 against BasicSR itself.

Images are uint8 arrays, H×W×3 in **RGB** order or H×W (single channel). BasicSR works on BGR arrays; the Y
conversion below applies its coefficients to the right channels, so the values are the same.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["rgb_to_y", "psnr", "ssim", "psnr_ssim", "psnr_ssim_tensor", "tensor_to_uint8"]

_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def tensor_to_uint8(img: torch.Tensor) -> np.ndarray:
    """BasicSR ``tensor2img``: (C, H, W) float in [0, 1] → uint8 H×W×C (H×W when C = 1), same channel order.

    Clamp to [0, 1], multiply by 255 in float32, round half to even, cast.
    """
    if img.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(img.shape)}")
    arr = img.detach().float().cpu().clamp(0, 1).numpy()
    arr = np.round(arr * np.float32(255.0)).astype(np.uint8).transpose(1, 2, 0)
    return arr[..., 0] if arr.shape[2] == 1 else arr


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BasicSR ``to_y_channel`` on an RGB uint8 image: H×W×3 → H×W float32 Y in [16, 235] (not rounded).

    The numeric path of BasicSR (float32 input / 255, float64 weighted sum, float32 result / 255, × 255 in float32)
    is reproduced exactly; a single-channel H×W image only makes the float32 round trip (no offset or scaling).
    """
    x = np.asarray(img).astype(np.float32) / np.float32(255.0)
    if x.ndim == 2:
        return x * np.float32(255.0)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 or H×W image, got shape {x.shape}")
    r, g, b = (x[..., i].astype(np.float64) for i in range(3))
    y = b * 24.966 + g * 128.553 + r * 65.481 + 16.0
    return (y / 255.0).astype(np.float32) * np.float32(255.0)


def _prepare(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool) -> tuple[np.ndarray, ...]:
    """Crop, optionally take Y, and return two float64 H×W×C arrays."""
    img, img2 = np.asarray(img), np.asarray(img2)
    if img.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img.shape} vs {img2.shape}")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an H×W×C or H×W image, got shape {img.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"nothing left to score after cropping {crop_border} px from each side")
    if test_y_channel:
        img, img2 = rgb_to_y(img), rgb_to_y(img2)
    out = []
    for a in (img, img2):
        a = a.astype(np.float64)
        out.append(a[..., None] if a.ndim == 2 else a)
    return tuple(out)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gaussian_kernel() -> np.ndarray:
    """OpenCV ``getGaussianKernel(11, 1.5)``: the normalised 1-D Gaussian, float64, length 11."""
    k = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The 11×11 window (outer product of ``k``) over H×W×C maps, valid region only: (H−10)×(W−10)×C.

    Separable (columns then rows); equal to OpenCV ``filter2D`` + crop 5 to about 1e-13.
    """
    n = len(k)
    rows = sum(k[i] * x[i:x.shape[0] - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[:, i:x.shape[1] - n + 1 + i] for i in range(n))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over channels of two float64 H×W×C arrays (11×11 Gaussian window σ 1.5, valid region)."""
    if a.shape[0] < 11 or a.shape[1] < 11:
        raise ValueError(f"SSIM needs at least 11×11 pixels after cropping, got {a.shape[0]}×{a.shape[1]}")
    k = _gaussian_kernel()
    mu1, mu2 = _filter_valid(a, k), _filter_valid(b, k)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, k) - mu1_sq
    s2 = _filter_valid(b * b, k) - mu2_sq
    s12 = _filter_valid(a * b, k) - mu12
    ssim_map = ((2 * mu12 + _SSIM_C1) * (2 * s12 + _SSIM_C2)) / ((mu1_sq + mu2_sq + _SSIM_C1) * (s1 + s2 + _SSIM_C2))
    return float(ssim_map.mean(axis=(0, 1)).mean())


def psnr(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """PSNR in dB of two uint8 images (H×W×3 RGB or H×W), BasicSR ``calculate_psnr``; +inf when identical.

    Args:
        crop_border: pixels removed on every side first. test_y_channel: score the BT.601 Y channel.
    """
    return _psnr(*_prepare(img, img2, crop_border, test_y_channel))


def ssim(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """SSIM of two uint8 images (H×W×3 RGB or H×W), BasicSR ``calculate_ssim`` (mean over channels)."""
    return _ssim(*_prepare(img, img2, crop_border, test_y_channel))


def psnr_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int = 0,
              test_y_channel: bool = True) -> dict[str, float]:
    """``{"psnr": ..., "ssim": ...}`` of two uint8 images, sharing the crop and Y conversion."""
    a, b = _prepare(img, img2, crop_border, test_y_channel)
    return {"psnr": _psnr(a, b), "ssim": _ssim(a, b)}


def psnr_ssim_tensor(sr: torch.Tensor, gt: torch.Tensor, crop_border: int = 0, test_y_channel: bool = True,
                     ssim: bool = True) -> dict[str, float]:
    """Score float images as the protocol does: both (C, H, W) in [0, 1] go through :func:`tensor_to_uint8` first.

    C is 3 (RGB) or 1. Returns ``{"psnr": ...}`` plus ``"ssim"`` when ``ssim`` is True.
    """
    a, b = _prepare(tensor_to_uint8(sr), tensor_to_uint8(gt), crop_border, test_y_channel)
    out = {"psnr": _psnr(a, b)}
    if ssim:
        out["ssim"] = _ssim(a, b)
    return out

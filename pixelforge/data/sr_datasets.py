"""Super-resolution training data: (LR, HR) pairs made on the fly from HR photos with MATLAB-style bicubic."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .resize import imresize

__all__ = ["list_images", "HRPatchPairs", "HRImagePairs", "degrade_bicubic"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(roots: list[str | os.PathLike]) -> list[Path]:
    """Sorted image files under each root (recursively); a missing root raises FileNotFoundError."""
    files = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"image folder not found: {root}")
        files += sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return files


def _read_rgb_uint8(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def degrade_bicubic(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """HR (…, C, s·h, s·w) in [0, 1] → LR (…, C, h, w): MATLAB bicubic with antialiasing, quantised to 8 bits."""
    lr = imresize(hr, 1.0 / scale)
    return (lr.clamp(0, 1) * 255).round() / 255


class HRPatchPairs(Dataset):
    """Random (LR, HR) patch pairs from HR images, for training.

    Each item crops a random HR patch of (patch_size·scale)², applies a random flip / transpose (8 dihedral
    variants) when ``augment``, and degrades it with :func:`degrade_bicubic`. Images are kept in memory as uint8.
    Randomness comes from torch's global RNG (the training loop seeds it per item).

    Returns:
        (lr (3, p, p), hr (3, p·s, p·s)) float32 in [0, 1].
    """

    def __init__(self, files: list[Path], scale: int, patch_size: int = 48, repeat: int = 1, augment: bool = True):
        self.scale, self.patch, self.repeat, self.augment = scale, patch_size, repeat, augment
        crop = patch_size * scale
        self.images = [img for img in map(_read_rgb_uint8, files) if min(img.shape[1:]) >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}x{crop} pixels")

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[index % len(self.images)]
        crop = self.patch * self.scale
        top = int(torch.randint(0, img.shape[1] - crop + 1, ()))
        left = int(torch.randint(0, img.shape[2] - crop + 1, ()))
        hr = img[:, top: top + crop, left: left + crop].float() / 255
        if self.augment:
            flips = torch.randint(0, 2, (3,)).tolist()
            if flips[0]:
                hr = hr.flip(-1)
            if flips[1]:
                hr = hr.flip(-2)
            if flips[2]:
                hr = hr.transpose(-1, -2)
        return degrade_bicubic(hr, self.scale), hr.contiguous()


class HRImagePairs(Dataset):
    """Whole-image (LR, HR) pairs for validation: HR mod-cropped to the scale (optionally centre-cropped first)."""

    def __init__(self, files: list[Path], scale: int, center_crop: int | None = None):
        self.files, self.scale, self.center_crop = files, scale, center_crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr = _read_rgb_uint8(self.files[index]).float() / 255
        if self.center_crop:
            c = self.center_crop
            top, left = max(0, (hr.shape[1] - c) // 2), max(0, (hr.shape[2] - c) // 2)
            hr = hr[:, top: top + c, left: left + c]
        s = self.scale
        hr = hr[:, : hr.shape[1] // s * s, : hr.shape[2] // s * s]
        return degrade_bicubic(hr, s), hr

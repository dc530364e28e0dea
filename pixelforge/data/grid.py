"""Sample sheets: images laid out in a grid (torchvision's ``make_grid`` with pixelforge's white padding)."""
from __future__ import annotations

import torch

__all__ = ["make_grid"]


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] → one (C, rows·(H+p)+p, min(nrow, N)·(W+p)+p) image, row-major, white padding
    (a single image is returned as it is)."""
    from torchvision.utils import make_grid as grid

    return grid(images, nrow=nrow, padding=padding, pad_value=1.0)

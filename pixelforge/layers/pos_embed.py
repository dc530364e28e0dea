"""Absolute positional embeddings: the 1-D sinusoid table and resizing a grid embedding with an extra token row."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sinusoidal_table", "resample_grid_pos_embed"]


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The transformer sinusoid PE[p, i] = sin(p / 10000^(2⌊i/2⌋/dim)) (even i), cos(...) (odd i).

    The argument is computed in double precision, rounded to float32, and sin/cos are taken in float32: the recipe
    of the CCT reference, which this reproduces bit for bit.

    Returns:
        (1, length, dim) float32.
    """
    denom = torch.tensor([10000 ** (2 * (i // 2) / dim) for i in range(dim)], dtype=torch.float64)
    arg = (torch.arange(length, dtype=torch.float64)[:, None] / denom).float()
    table = torch.empty_like(arg)
    table[:, 0::2] = torch.sin(arg[:, 0::2])
    table[:, 1::2] = torch.cos(arg[:, 1::2])
    return table.unsqueeze(0)


def resample_grid_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], extra_index: int | None = None,
                            new_extra_index: int | None = None, mode: str = "bicubic") -> torch.Tensor:
    """Resize a learned embedding over a square token grid, keeping one extra (class) token row.

    Args:
        pos_embed: (1, M (+1), C) with the grid rows in raster order and, when ``extra_index`` is given, one extra
            row at that index (0 for a leading class token, M // 2 for Vim's middle class token).
        new_grid: (h, w) of the target grid.
        extra_index: where the extra row sits now (None: no extra row).
        new_extra_index: where to put it back (defaults to ``extra_index``).
        mode: ``F.interpolate`` mode (align_corners False, no antialias, as the official converters).
    Returns:
        (1, h·w (+1), C) in the input dtype.
    """
    extra = None
    if extra_index is not None:
        extra = pos_embed[:, extra_index:extra_index + 1]
        pos_embed = torch.cat([pos_embed[:, :extra_index], pos_embed[:, extra_index + 1:]], dim=1)
    n, dim = pos_embed.shape[1], pos_embed.shape[2]
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"cannot resize a positional embedding of {n} grid tokens: not a square grid")
    grid = pos_embed.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
    out = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    if extra is not None:
        at = extra_index if new_extra_index is None else new_extra_index
        out = torch.cat([out[:, :at], extra, out[:, at:]], dim=1)
    return out

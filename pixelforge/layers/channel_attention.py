"""Squeeze-and-excitation channel attention on feature maps (RCAN's CA layer, used in HAT's CAB)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelAttention"]


class ChannelAttention(nn.Module):
    """x · sigmoid(conv1x1(ReLU(conv1x1(avgpool(x))))), the squeeze convs with bias.

    Args:
        num_feat: C. squeeze_factor: the hidden width is C // squeeze_factor.
    Shapes: (B, C, H, W) → (B, C, H, W). Parameter names (``attention.1``, ``attention.3``) follow RCAN/HAT.
    """

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        hidden = num_feat // squeeze_factor
        if hidden < 1:
            raise ValueError(f"squeeze_factor {squeeze_factor} leaves no hidden channel for {num_feat} channels")
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return x * self.attention(x)

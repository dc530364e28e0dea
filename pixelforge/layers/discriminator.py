"""Patch discriminator for adversarial losses (ERRNet-style), and a module pairing a generator with it."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["GeneratorWithCritic", "PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """VGG-style discriminator: (conv3x3, conv4x4 stride 2) pairs with LeakyReLU(0.2), then a 1x1 score per patch.

    Shapes: (B, 3, H, W) → (B, 1, H/2^n, W/2^n) logits.
    """

    def __init__(self, width: int = 32, stages: int = 4):
        super().__init__()
        layers, cin = [], 3
        for i in range(stages):
            cout = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(cout, cout, 4, 2, 1),
                       nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 1, h, w)."""
        return self.body(x)


class GeneratorWithCritic(nn.Module):
    """The generator being trained plus its discriminator, so that one optimiser updates both.

    ``forward`` is the generator's. The training recipe routes gradients: the generator's adversarial loss reaches
    the discriminator only through detached parameters, and the discriminator's loss sees detached outputs.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 3, H, W)."""
        return self.generator(x)

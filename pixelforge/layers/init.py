"""Weight initialisation shared by the transformer families (the ViT/Swin convention of their official code)."""
from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn

__all__ = ["init_transformer_weights"]


def init_transformer_weights(m: nn.Module) -> None:
    """For ``module.apply``: truncated-normal (std 0.02) Linear weights, zero Linear biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

"""Image heads fed by dense backbones: upsampling (super-resolution) and restoration (same size)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..layers.linear import conv1x1

__all__ = ["UpsampleHead", "RestorationHead", "create_image_head", "IMAGE_HEADS", "UPSAMPLERS"]

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv")


def _pixelshuffle_stages(num_feat: int, scale: int) -> list[nn.Module]:
    """conv + PixelShuffle(2) per factor 2, or one conv + PixelShuffle(3), as in EDSR/SwinIR/HAT."""
    if scale & (scale - 1) == 0:
        stages = []
        for _ in range(int(math.log2(scale))):
            stages += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        return stages
    if scale == 3:
        return [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    raise ValueError(f"upscale {scale} is not supported by the pixelshuffle upsampler (use 2^n or 3)")


class UpsampleHead(nn.Module):
    """Features (B, C, H, W) → image (B, out_chans, s·H, s·W).

    ``upsampler``:
        ``pixelshuffle``: conv_before_upsample (conv 3x3 + LeakyReLU) → conv/PixelShuffle stages → conv_last;
        ``pixelshuffledirect``: one conv 3x3 to out_chans·s² and PixelShuffle(s) (lightweight models);
        ``nearest+conv``: Real-ESRGAN style nearest-neighbour x2 steps with convs (x2 / x4 only).
    Parameter names follow the official SwinIR/HAT/CFSR layouts, so converters only add a ``head.`` prefix.
    """

    def __init__(self, in_features: int, out_chans: int = 3, upscale: int = 4, upsampler: str = "pixelshuffle",
                 num_feat: int = 64):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"unknown upsampler '{upsampler}'; choose from {UPSAMPLERS}")
        self.upscale, self.upsampler = upscale, upsampler
        if upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(in_features, out_chans * upscale ** 2, 3, 1, 1),
                                          nn.PixelShuffle(upscale))
            return
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(in_features, num_feat, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        if upsampler == "pixelshuffle":
            self.upsample = nn.Sequential(*_pixelshuffle_stages(num_feat, upscale))
        else:
            if upscale not in (2, 4):
                raise ValueError(f"the nearest+conv upsampler supports x2 and x4, not x{upscale}")
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            if upscale == 4:
                self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)

    def forward(self, feat: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """feat (B, C, H, W) → (B, out_chans, s·H, s·W); ``image`` (the normalised input) is unused."""
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(feat)
        x = self.conv_before_upsample(feat)
        if self.upsampler == "pixelshuffle":
            return self.conv_last(self.upsample(x))
        up = nn.functional.interpolate
        x = self.lrelu(self.conv_up1(up(x, scale_factor=2, mode="nearest")))
        if self.upscale == 4:
            x = self.lrelu(self.conv_up2(up(x, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(x)))


class RestorationHead(nn.Module):
    """Features (B, C, H, W) → image (B, out_chans, H, W) = image + conv_last(features) (global residual).

    Used for same-size restoration such as dereflection; ``upscale`` is 1. ``kernel_size`` of conv_last (3, or 1
    as RRFormer's ``deconv3``) and an optional output activation ``act`` (``"relu"``: RRFormer) applied last.
    """

    upscale = 1

    def __init__(self, in_features: int, out_chans: int = 3, residual: bool = True, kernel_size: int = 3,
                 act: str | None = None):
        super().__init__()
        if act not in (None, "relu"):
            raise ValueError(f"unknown restoration head activation '{act}'; choose None or 'relu'")
        self.residual, self.act = residual, act
        self.conv_last = nn.Conv2d(in_features, out_chans, kernel_size, 1, kernel_size // 2)

    def forward(self, feat: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """feat (B, C, H, W), image (B, out_chans, H, W) normalised input → (B, out_chans, H, W)."""
        out = conv1x1(feat, self.conv_last) if self.conv_last.kernel_size == (1, 1) else self.conv_last(feat)
        out = out + image if self.residual else out
        return torch.relu(out) if self.act == "relu" else out


IMAGE_HEADS = {"upsample": UpsampleHead, "restore": RestorationHead, "dereflect": RestorationHead}


def create_image_head(kind: str, in_features: int, out_chans: int = 3, **kwargs) -> nn.Module:
    """Build an image head by kind: ``upsample`` (kwargs: upscale, upsampler, num_feat) or ``restore``/``dereflect``."""
    if kind not in IMAGE_HEADS:
        raise ValueError(f"unknown image head '{kind}'; choose from {sorted(IMAGE_HEADS)}")
    if IMAGE_HEADS[kind] is RestorationHead:
        kwargs = {k: v for k, v in kwargs.items() if k in ("residual", "kernel_size", "act")}
    return IMAGE_HEADS[kind](in_features, out_chans, **kwargs)

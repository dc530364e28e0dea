"""Image-to-image models: a dense backbone feeding an image head, with the mean shift and padding around them."""
from __future__ import annotations

import torch
from torch import nn

from ..zoo import build_model
from .heads import create_image_head

__all__ = ["DenseBackbone", "DenseImageModel", "DEFAULT_RGB_MEAN", "build_dense_model"]

DEFAULT_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean used by EDSR/SwinIR/HAT/CFSR


class DenseBackbone(nn.Module):
    """Base class of backbones that keep the spatial size: (B, in_chans, H, W) → (B, num_features, H, W).

    Subclasses set ``num_features`` and implement ``forward_features`` (on the normalised image; shallow conv, deep
    body and the body residual included). ``spatial_multiple`` is the size multiple the body needs; ``tile_overlap``
    the input pixels neighbouring tiles should share for seamless tiled inference (its receptive field);
    ``pad_input`` applies the official inference padding (none by default).
    """

    num_features: int
    spatial_multiple: int = 1
    tile_overlap: int = 32

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (B, C, H, W) as the official inference does before the forward; the output is cropped back."""
        return x

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


class DenseImageModel(nn.Module):
    """backbone + image head: (B, in_chans, H, W) in [0, 1] → (B, out_chans, s·H, s·W).

    ``x`` is normalised as (x − mean)·img_range, padded by ``backbone.pad_input``, the head's output is mapped back
    (/img_range + mean) and cropped to s·H × s·W. No clamp (the official models do not clamp).
    """

    def __init__(self, backbone: DenseBackbone, head: str = "upsample", out_chans: int = 3, img_range: float = 1.0,
                 rgb_mean: tuple[float, ...] | None = DEFAULT_RGB_MEAN, **head_args):
        super().__init__()
        self.backbone = backbone
        self.head = create_image_head(head, backbone.num_features, out_chans, **head_args)
        self.upscale = self.head.upscale
        self.img_range = img_range
        in_chans = getattr(backbone, "in_chans", 3)
        mean = torch.tensor(rgb_mean if (rgb_mean is not None and in_chans == 3) else (0.0,) * in_chans)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)

    @property
    def spatial_multiple(self) -> int:
        return self.backbone.spatial_multiple

    @property
    def tile_overlap(self) -> int:
        return self.backbone.tile_overlap

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, padded image (B, C, H', W') → features (B, num_features, H', W')."""
        return self.backbone.forward_features(x)

    def forward_head(self, feat: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Features → normalised output image (B, out_chans, s·H', s·W')."""
        return self.head(feat, image)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] → (B, out_chans, s·H, s·W)."""
        h, w = x.shape[-2:]
        mean = self.mean.to(x.dtype)
        xn = (self.backbone.pad_input(x) - mean) * self.img_range
        out = self.forward_head(self.forward_features(xn), xn)
        out = out / self.img_range + mean
        return out[..., : h * self.upscale, : w * self.upscale]


def build_dense_model(backbone_cls: type[DenseBackbone], backbone_keys: tuple[str, ...], variant: str,
                      pretrained: bool, filter_fn, **args) -> DenseImageModel:
    """A family's ``_create_*``: ``args`` named in ``backbone_keys`` build the backbone, the rest the head
    (``head``, ``upscale``, ``upsampler``, ``out_chans`` (default: in_chans), ``img_range``…) and the zoo
    (weights, pretrained config). ``upscale``/``upsampler`` are dropped for non-upsampling heads."""
    bb_args = {k: args.pop(k) for k in backbone_keys if k in args}
    if args.get("head", "upsample") != "upsample":
        args.pop("upscale", None), args.pop("upsampler", None)

    def model_cls(**head_args):
        head_args.setdefault("out_chans", bb_args.get("in_chans", 3))
        return DenseImageModel(backbone_cls(**bb_args), **head_args)

    return build_model(model_cls, variant, pretrained, {}, filter_fn=filter_fn, **args)

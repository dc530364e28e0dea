"""Checkpoints of the architectures spandrel recognises (optional extra ``pixelforge[spandrel]``), run by pixelforge's
tiled runner with its 16-bit, alpha and grayscale handling. Importing this module raises ImportError when spandrel
is not installed."""
from __future__ import annotations

import os

import spandrel
import torch
from torch import nn

__all__ = ["SpandrelModel", "load_spandrel"]


class SpandrelModel(nn.Module):
    """A spandrel image-to-image model as a module with the attributes :func:`~pixelforge.infer.run_tiled` reads:
    (B, C, h, w) → (B, C', s·h, s·w), s = ``upscale``, h and w padded to ``spatial_multiple`` by the runner."""

    def __init__(self, descriptor: spandrel.ImageModelDescriptor):
        super().__init__()
        self.model = descriptor.model
        self.upscale = int(descriptor.scale)
        self.in_chans = int(descriptor.input_channels)
        self.out_chans = int(descriptor.output_channels)
        self.spatial_multiple = int(descriptor.size_requirements.multiple_of)
        self.pretrained_cfg = {"architecture": f"spandrel-{descriptor.architecture.id}", "source": "spandrel"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def load_spandrel(weights: str | os.PathLike) -> SpandrelModel:
    """The model spandrel recognises in ``weights``; ValueError for a model that is not image-to-image (spandrel's
    own errors for layouts it does not know)."""
    descriptor = spandrel.ModelLoader().load_from_file(str(weights))
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"spandrel recognises {descriptor.architecture.name}, which is not an image-to-image model")
    return SpandrelModel(descriptor).eval()

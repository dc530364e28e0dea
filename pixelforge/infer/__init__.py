"""Inference library: the tiled runner, precision/device handling, the image-to-image runner (any checkpoint) and SR
evaluation. The commands that call it are in :mod:`pixelforge.cli`."""
from .precision import PRECISIONS, NonFiniteOutputError, autocast, resolve_device
from .tiling import run_tiled, tile_starts

__all__ = ["PRECISIONS", "NonFiniteOutputError", "autocast", "resolve_device", "run_tiled", "tile_starts"]

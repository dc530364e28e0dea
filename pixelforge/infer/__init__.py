"""Inference: the tiled image-to-image runner, precision/device handling, and the image-to-image and eval commands."""
from .precision import PRECISIONS, NonFiniteOutputError, autocast, resolve_device
from .tiling import run_tiled, tile_starts

__all__ = ["PRECISIONS", "NonFiniteOutputError", "autocast", "resolve_device", "run_tiled", "tile_starts"]

"""pixelforge: vision backbones, super-resolution, restoration and generative models for PyTorch.

Importing the package registers every model in pixelforge's zoo and in timm's registry.
"""
from .zoo import (CheckpointError, create_model, list_models, load_official, load_weights, official_families,
                  save_weights)
from . import vision  # noqa: E402,F401  (registers the vision families)
from . import generative  # noqa: E402,F401  (registers the generative families)

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_official", "load_weights", "save_weights", "official_families",
           "CheckpointError", "__version__"]

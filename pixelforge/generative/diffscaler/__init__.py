"""DiffScaler: one frozen diffusion transformer serving many tasks through per-task Affiner adapters.

Modules: :mod:`.dit` (the DiT model, diffusers-compatible), :mod:`.affiner` (the adapters, and the DiffFit / BitFit /
LoRA / full fine-tuning baselines as rules), :mod:`.pipeline` (sampling with any diffusers scheduler), :mod:`.models`
(registered names). Importing this package registers the models without importing diffusers; ``DiT`` and the
pipeline load it on first access.
"""
from . import models  # noqa: F401  (registers dit_* names and the official-checkpoint family)
from .affiner import AffinerConfig, apply_adapters, apply_diffscaler, route_tasks

__all__ = ["DiT", "METHODS", "method_rules", "AffinerConfig", "apply_adapters", "apply_diffscaler", "route_tasks",
           "DiffScalerPipeline", "generate_images"]

_LAZY = {"DiT": "dit", "METHODS": "dit", "method_rules": "dit", "DiffScalerPipeline": "pipeline",
         "generate_images": "pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

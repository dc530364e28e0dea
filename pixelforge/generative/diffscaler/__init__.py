"""DiffScaler: one frozen diffusion transformer serving many tasks through per-task Affiner adapters.

Modules: :mod:`.dit` (the DiT model, diffusers-compatible), :mod:`.affiner` (the adapters, and the DiffFit / BitFit /
LoRA / full fine-tuning baselines as rules), :mod:`.pipeline` (sampling with any diffusers scheduler).
"""
from .affiner import AffinerConfig, apply_adapters, apply_diffscaler, route_tasks
from .dit import DiT, METHODS, method_rules

__all__ = ["DiT", "METHODS", "method_rules", "AffinerConfig", "apply_adapters", "apply_diffscaler", "route_tasks"]

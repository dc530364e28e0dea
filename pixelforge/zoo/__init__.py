"""The model zoo: names, factories, weights and official-checkpoint conversion. It never imports a family."""
from .checkpoint import CheckpointError, read_checkpoint, unwrap_state_dict
from .official import load_official, official_families, register_family
from .registry import build_model, create_model, is_model, list_models, register_model
from .weights import (load_weights, pixelforge_home, pretrained_file, pretrained_status, save_weights,
                      stored_training_config)

__all__ = [
    "CheckpointError", "read_checkpoint", "unwrap_state_dict", "load_official", "official_families",
    "register_family", "build_model", "create_model", "is_model", "list_models", "register_model", "load_weights",
    "pixelforge_home", "pretrained_file", "pretrained_status", "save_weights", "stored_training_config",
]

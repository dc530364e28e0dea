"""Where weights come from (an explicit file, ``$PIXELFORGE_HOME/weights``, package data) and loading them strictly."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint, unwrap_state_dict

__all__ = ["pixelforge_home", "resolve_weights", "load_weights", "save_weights", "FilterFn"]

FilterFn = Callable[[dict, nn.Module], dict]
PACKAGE_WEIGHTS = Path(__file__).parent / "weights"


def pixelforge_home() -> Path:
    """``$PIXELFORGE_HOME`` or ``~/.cache/pixelforge``."""
    return Path(os.environ.get("PIXELFORGE_HOME", Path.home() / ".cache" / "pixelforge"))


def resolve_weights(file_name: str, model_name: str) -> Path:
    """Find a pretrained weights file by name: ``$PIXELFORGE_HOME/weights/<file>`` first, then package data.

    Raises:
        FileNotFoundError naming both places when the file is in neither (nothing is downloaded).
    """
    candidates = [pixelforge_home() / "weights" / file_name, PACKAGE_WEIGHTS / file_name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no pretrained weights for '{model_name}': looked for {candidates[0]} and {candidates[1]}. "
        f"pixelforge never downloads; pass weights=PATH or put the file in $PIXELFORGE_HOME/weights."
    )


def load_weights(model: nn.Module, source, filter_fn: FilterFn | None = None, strict: bool = True) -> nn.Module:
    """Load weights into ``model`` from a path or a state dict, converting official layouts with ``filter_fn``.

    ``filter_fn(state_dict, model)`` maps official key names to ours and leaves our own keys unchanged.
    Mismatches raise :class:`CheckpointError` naming the missing, unexpected and mis-shaped keys.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    raw = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    state = unwrap_state_dict(raw)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in state and state[k].shape != own[k].shape]
    if bad_shape or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_head(unexpected)}")
        if bad_shape:
            parts.append(f"shape mismatch ({len(bad_shape)}): {_head(bad_shape)}")
        raise CheckpointError(f"weights in {name} do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model


def save_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict as safetensors atomically (:func:`~pixelforge.data.image_io.atomic_open`: a temporary
    file, then rename), with the usual file mode (0666 less the umask). Shared tensors are cloned."""
    from safetensors.torch import save

    from ..data.image_io import atomic_open

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:  # safetensors' own save_file creates files readable by their owner only
        f.write(save(state, metadata=metadata))
    return path


def _head(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")

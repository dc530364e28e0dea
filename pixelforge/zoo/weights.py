"""Where weights come from (an explicit file, ``$PIXELFORGE_HOME/weights``, package data) and loading them strictly."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint, unwrap_state_dict

__all__ = ["pixelforge_home", "pretrained_file", "pretrained_status", "stored_training_config", "load_weights",
           "save_weights", "FilterFn"]

FilterFn = Callable[[dict, nn.Module], dict]
PACKAGE_WEIGHTS = Path(__file__).parent / "weights"


def pixelforge_home() -> Path:
    """``$PIXELFORGE_HOME`` or ``~/.cache/pixelforge``."""
    return Path(os.environ.get("PIXELFORGE_HOME", Path.home() / ".cache" / "pixelforge"))


def pretrained_file(name: str) -> Path:
    """The pretrained weights file of a registered model: its pretrained config's ``file``, looked for in
    ``$PIXELFORGE_HOME/weights`` first, then in the package's bundled weights (nothing is ever downloaded).

    Raises:
        FileNotFoundError naming the model when it has no pretrained file, or the file, both places looked in and
        how the file is made (the pretrained config's notes, e.g. the ``pixelforge train`` config) when it is
        missing.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.file:
        raise FileNotFoundError(f"'{name}' has no pretrained weights; pass weights=PATH")
    candidates = [pixelforge_home() / "weights" / cfg.file, PACKAGE_WEIGHTS / cfg.file]
    for path in candidates:
        if path.is_file():
            return path
    how = f" ({cfg.notes})" if cfg.notes else ""
    raise FileNotFoundError(
        f"the pretrained weights of '{name}', {cfg.file}{how}, are not installed: looked for {candidates[0]} and "
        f"{candidates[1]}. pixelforge never downloads; pass weights=PATH or put the file in $PIXELFORGE_HOME/weights."
    )


def pretrained_status(name: str) -> str:
    """Where ``name``'s pretrained file is: ``-`` (none defined), ``$PIXELFORGE_HOME``, ``bundled``, ``missing``."""
    try:
        path = pretrained_file(name)
    except FileNotFoundError as exc:
        return "-" if "has no pretrained weights" in str(exc) else "missing"
    return "bundled" if path.parent == PACKAGE_WEIGHTS else "$PIXELFORGE_HOME"


def stored_training_config(path: str | os.PathLike | None) -> dict:
    """The training config ``pixelforge train`` stores in a safetensors file's metadata (key ``config``); ``{}``
    for other files (official checkpoints, converted or foreign safetensors, missing paths)."""
    if path is None or not str(path).endswith(".safetensors") or not Path(path).is_file():
        return {}
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            cfg = json.loads((f.metadata() or {}).get("config", "{}"))
    except Exception:  # a broken header or foreign metadata: reading the tensors later reports real problems
        return {}
    return cfg if isinstance(cfg, dict) else {}


def load_weights(model: nn.Module, source, filter_fn: FilterFn | None = None, strict: bool = True,
                 skip: tuple[str, ...] = ()) -> nn.Module:
    """Load weights into ``model`` from a path or a state dict, converting official layouts with ``filter_fn``.

    ``filter_fn(state_dict, model)`` maps official key names to ours and leaves our own keys unchanged. Keys under
    the module names in ``skip`` (e.g. a classifier being re-initialised) are neither loaded nor required.
    Tensors stored in another floating dtype (fp16/bf16 files) are converted to the model's (fp32).
    Mismatches raise :class:`CheckpointError` naming the missing, unexpected and mis-shaped keys.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    raw = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    state = unwrap_state_dict(raw)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    if skip:
        skipped = tuple(f"{name}." for name in skip)
        state = {k: v for k, v in state.items() if not k.startswith(skipped)}
        own = {k: v for k, v in own.items() if not k.startswith(skipped)}
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

"""Reading checkpoints from disk safely, and unwrapping the containers official repositories use."""
from __future__ import annotations

import os
import pickletools
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["CheckpointError", "read_checkpoint", "unwrap_state_dict", "WRAPPER_KEYS"]

# Containers used by the official repositories, most preferred first (BasicSR: EMA weights over raw ones).
WRAPPER_KEYS = ("params_ema", "params", "model_ema", "state_dict_ema", "model", "state_dict", "module", "icnn", "net")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose keys do not fit the model."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file without executing code.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``.
    A pickle that needs arbitrary classes is refused with a message naming the file; a file that is no pickle or
    PyTorch archive at all (random bytes, text, a cut-off download) is reported as not a checkpoint.

    Returns:
        The raw object stored in the file (usually a dict of tensors, or a dict wrapping one).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # torch.load fails in many ways on files that are not what they claim to be
        inner = exc.__context__ or exc
        problem = f"{type(inner).__name__}: {' '.join(str(inner).split())}".rstrip(": ")
        if not _needs_objects(path, problem):
            raise CheckpointError(f"{path} is not a checkpoint (unreadable as a PyTorch or safetensors file: "
                                  f"{problem[:200]})") from exc
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary Python objects to unpickle, and pixelforge only loads "
            f"checkpoints with weights_only=True (a checkpoint never runs code). Re-save its state dict with "
            f"torch.save(state_dict) from a trusted environment. ({problem[:200]})"
        ) from exc


_OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _needs_objects(path: Path, problem: str) -> bool:
    """Whether a file torch.load refused is a pickle that imports classes or calls functions (rather than bytes
    that are no pickle at all). The opcodes are only read, never run."""
    if "GLOBAL" in problem:  # torch's weights-only unpickler names the global it blocked
        return True
    try:
        with open(path, "rb") as f:
            names = {op.name for op, _, _ in pickletools.genops(f)}  # the whole stream: text can start like one
    except Exception:  # not a pickle stream: invalid opcode, cut short...
        return False
    return bool(names & _OBJECT_OPCODES)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj, wrapper: str | None = None) -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` state dict inside a checkpoint object.

    Args:
        obj: what :func:`read_checkpoint` returned, or a state dict.
        wrapper: the top-level key holding the weights; when ``None`` the usual ones (:data:`WRAPPER_KEYS`)
            are tried in order. A ``module.`` prefix (DataParallel/DDP) on every key is removed.
    """
    if wrapper is not None:
        if not isinstance(obj, Mapping) or wrapper not in obj:
            raise CheckpointError(f"checkpoint has no '{wrapper}' entry (top-level keys: {_some_keys(obj)})")
        obj = obj[wrapper]
    elif not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"checkpoint holds no tensors (top-level keys: {_some_keys(obj)})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _some_keys(obj, n: int = 8) -> str:
    if not isinstance(obj, Mapping):
        return type(obj).__name__
    keys = list(obj.keys())
    return ", ".join(map(str, keys[:n])) + (", ..." if len(keys) > n else "")

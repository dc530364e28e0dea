"""Loading official checkpoints of any supported family: recognise the family, infer the configuration, build."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint, unwrap_state_dict

__all__ = ["OfficialFamily", "register_family", "load_official", "official_families"]


@dataclass(frozen=True)
class OfficialFamily:
    """How one model family reads official checkpoints.

    Attributes:
        name: family name as in a fixture's ``case.json`` ``model`` field (``"hat"``, ``"cfsr"``...).
        detect: ``detect(state_dict) -> bool``, True when the (unwrapped) official keys belong to this family.
        build: ``build(state_dict, config) -> nn.Module``: infer hyper-parameters from tensor shapes, take the rest
            from ``config`` (the official constructor's keyword arguments), build our model and load the weights.
        wrapper: the official container key (``"params_ema"``...), tried before the generic ones.
    """

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    build: Callable[[dict, dict], nn.Module]
    wrapper: str | None = None


_FAMILIES: dict[str, OfficialFamily] = {}


def register_family(name: str, detect, build, wrapper: str | None = None) -> OfficialFamily:
    """Register a family's official-checkpoint reader (called at the bottom of each family module)."""
    if name in _FAMILIES:
        raise ValueError(f"official family '{name}' is registered twice")
    _FAMILIES[name] = OfficialFamily(name, detect, build, wrapper)
    return _FAMILIES[name]


def official_families() -> list[str]:
    """Names of the families :func:`load_official` supports."""
    return sorted(_FAMILIES)


def load_official(checkpoint, family: str | None = None, config: dict | None = None) -> nn.Module:
    """Build our model from an official checkpoint, in eval mode.

    Args:
        checkpoint: a path to an official checkpoint, or its (possibly wrapped) state dict.
        family: the family name; recognised from the keys when ``None``.
        config: the official constructor's keyword arguments; settings the tensor shapes determine are inferred,
            the others are taken from here (official defaults when absent).
    """
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if family is not None:
        if family not in _FAMILIES:
            raise ValueError(f"unknown family '{family}'; supported: {', '.join(official_families())}")
        fam = _FAMILIES[family]
        state = _unwrap(raw, fam)
    else:
        matches = []
        for fam in _FAMILIES.values():
            state = _unwrap(raw, fam)
            if fam.detect(state):
                matches.append((fam, state))
        if len(matches) != 1:
            names = [m[0].name for m in matches] or "none"
            raise CheckpointError(f"cannot recognise the family of this checkpoint (matching families: {names}); "
                                  f"pass family=")
        fam, state = matches[0]
    model = fam.build(dict(state), dict(config or {}))
    return model.eval()


def _unwrap(raw, fam: OfficialFamily) -> dict:
    if fam.wrapper is not None and isinstance(raw, Mapping) and fam.wrapper in raw:
        return unwrap_state_dict(raw, fam.wrapper)
    return unwrap_state_dict(raw)

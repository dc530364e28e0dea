"""Experiment configs: YAML files with dotted ``key=value`` overrides."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

__all__ = ["load_config", "apply_overrides"]


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads exponent floats without a dot (``3e-4``, ``1E5``) as floats, as YAML 1.2
    does; PyYAML's YAML 1.1 rules would leave them strings (``lr=3e-4`` silently a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Return a copy of ``cfg`` with ``a.b.c=value`` overrides applied (values parsed as YAML scalars/lists)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override '{key}': '{part}' is not a section")
        node[parts[-1]] = yaml.load(value, Loader=_Loader)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML experiment config and apply overrides. Raises ValueError naming the file on bad YAML."""
    path = Path(path)
    try:
        cfg = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise FileNotFoundError(f"config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML in {path}: {exc}") from exc
    if not isinstance(cfg, dict) or "task" not in cfg:
        raise ValueError(f"config {path} must be a mapping with a 'task' key")
    return apply_overrides(cfg, overrides or [])

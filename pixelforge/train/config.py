"""Experiment configs: YAML files with dotted ``key=value`` overrides, checked against typed sections.

A config is read as a plain dict (:func:`load_config`) and then resolved (:func:`parse_config`) into dataclasses:
the sections every recipe shares (:class:`RunConfig`: ``recipe``, ``seed``, ``output_dir``, ``train``,
``optimizer``, ``scheduler``) plus the sections of the recipe (each task class's ``Config``). An unknown or
mistyped key is an error that names it and the closest valid key; a value of the wrong type is an error naming
the key and the expected type. :func:`config_to_dict` gives the resolved config with every default.

The recipe is named by ``recipe:`` (``task:``, its former name, is still read).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = [
    "ConfigError",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "SchedulerConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
    "format_config",
    "from_mapping",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """A config key or value that does not fit the schema; the message names the dotted key."""


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads exponent floats without a dot (``3e-4``, ``1E5``) as floats, as YAML 1.2
    does; PyYAML's YAML 1.1 rules would leave them strings (``lr=3e-4`` silently a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."))


# ---- the sections every recipe shares ----------------------------------------------------------------------------


@dataclass(kw_only=True)
class ModelConfig:
    """``model:`` (and ``vqvae:``): a registered model name, its constructor arguments, optional weights."""
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass(kw_only=True)
class TrainConfig:
    """``train:``, read by the loop (:func:`pixelforge.train.loop.train`)."""
    batch_size: int = 16                     # per process and per micro-batch
    val_batch_size: int = 1
    num_workers: int = 0
    total_steps: int | None = None           # optimiser steps; default: epochs x batches per epoch
    epochs: int = 1
    eval_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 50
    grad_clip: float = 0.0                   # max gradient norm, 0 = off
    mixed_precision: str | bool = "auto"     # auto | no | fp32 | bf16 | fp16 (a bare YAML `no` reads as false)
    ema_decay: float | None = None           # EMA of the weights (exported and evaluated when on)
    ema_warmup: bool = True
    max_minutes: float | None = None         # stop (evaluate, checkpoint, export) after this wall time
    resume: bool = True                      # continue from output_dir/checkpoints
    cpu: bool | None = None                  # default: when no CUDA device is present
    gradient_accumulation_steps: int = 1     # micro-batches per optimiser step (accelerate's accumulate)
    log_with: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"  # tracker besides metrics.jsonl
    keep_checkpoints: int = 1                # the N newest checkpoints: `last` and N-1 `step_XXXXXXXX`
    keep_best: bool = True                   # checkpoints/best: the one with the best validation metric
    grad_checkpointing: bool = False         # the model's set_grad_checkpointing (timm convention)
    compile: bool | str = False              # torch.compile through accelerate (true = inductor, or a backend)
    channels_last: bool = False              # model and 4-D inputs in channels-last memory format
    curves: bool = True                      # curves.png at each validation and at the end

    def __post_init__(self):
        if self.mixed_precision is False:
            self.mixed_precision = "no"
        if self.mixed_precision not in ("auto", "no", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision: '{self.mixed_precision}' is not one of auto, no, fp32, bf16, "
                              f"fp16")
        for name in ("batch_size", "gradient_accumulation_steps", "keep_checkpoints", "log_every", "eval_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")


@dataclass(kw_only=True)
class OptimizerConfig:
    """``optimizer:``, passed to ``timm.optim.create_optimizer_v2`` (unset values keep timm's defaults)."""
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9                    # SGD-like optimisers
    betas: list[float] | None = None
    eps: float | None = None
    layer_decay: float | None = None

    def kwargs(self) -> dict:
        """Keyword arguments of ``create_optimizer_v2`` besides the model."""
        out = {"opt": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "momentum": self.momentum}
        out.update({k: v for k in ("betas", "eps", "layer_decay") if (v := getattr(self, k)) is not None})
        return out


@dataclass(kw_only=True)
class SchedulerConfig:
    """``scheduler:``, built by ``timm.scheduler.create_scheduler_v2``, stepped per optimiser step (``plateau``:
    per validation, on the recipe's main metric; timm does not checkpoint its counters)."""
    name: Literal["cosine", "constant", "step", "multistep", "poly", "plateau", "tanh", "wsd"] = "cosine"
    warmup_steps: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    decay_steps: int | None = None           # step: decay interval; wsd: length of the decay phase
    decay_rate: float = 0.1                  # step, multistep, plateau; the power of poly
    milestones: list[int] = field(default_factory=list)  # multistep: from step m on (1-based), lr x decay_rate
    cooldown_steps: int = 0
    patience: int = 10                       # plateau: validations without improvement before a decay
    warmup_prefix: bool = False              # warm-up before the schedule's length instead of inside it


@dataclass(kw_only=True)
class RunConfig:
    """The sections every recipe has; a recipe's ``Config`` subclasses this with its own sections."""
    recipe: str | None = None
    seed: int = 0
    output_dir: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @property
    def out_dir(self) -> Path:
        """``output_dir``, default ``runs/<recipe>``."""
        return Path(self.output_dir or f"runs/{self.recipe}")


# ---- reading ------------------------------------------------------------------------------------------------------


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _convert(tp, value, key: str):
    """``value`` checked against the annotation ``tp`` (dataclasses built recursively); ``key`` names it in errors."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0] if args else Any, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")


def from_mapping(cls, raw, prefix: str = ""):
    """The dataclass ``cls`` from the mapping ``raw`` (nested dataclasses built too); ``prefix`` is the dotted key
    of ``raw`` in error messages. Raises ConfigError on an unknown key (naming the closest field), a missing
    required key or a mistyped value."""
    where = prefix or "config"
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{_join(prefix, close[0])}'?" if close else ""
            raise ConfigError(f"unknown config key '{_join(prefix, key)}'{hint} (valid keys"
                              f"{' of ' + prefix if prefix else ''}: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(hints[name], raw[name], _join(prefix, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{_join(prefix, name)}' ({_type_name(hints[name])})")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _join(prefix: str, key) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def parse_config(raw: dict | RunConfig, config_class: type[RunConfig] | None = None) -> RunConfig:
    """Resolve a raw config into its recipe's typed config (every default filled in).

    Args:
        raw: the mapping read by :func:`load_config` (``recipe:``, or ``task:`` as before), or a typed config
            (returned unchanged).
        config_class: the schema; default: the ``Config`` of the task class registered under the recipe.

    Raises:
        ConfigError: an unknown key (naming the closest valid one), a missing required key or a mistyped value.
    """
    if isinstance(raw, RunConfig):
        return raw
    raw = dict(raw)
    if "task" in raw and "recipe" not in raw:
        raw["recipe"] = raw.pop("task")
    if config_class is None:
        if not raw.get("recipe"):
            raise ConfigError("config needs a 'recipe' key (sr, cls, dit, diffscaler, dereflect, var_vqvae, var)")
        from .loop import resolve_task

        config_class = resolve_task(raw["recipe"]).Config
    return from_mapping(config_class, raw, "")


def config_to_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain data (YAML/JSON-ready), every default included."""
    return dataclasses.asdict(cfg)


def format_config(raw: dict | RunConfig) -> str:
    """The resolved config as YAML, every default included (``pixelforge train CONFIG --print-config``)."""
    return yaml.safe_dump(config_to_dict(parse_config(raw)), sort_keys=False)


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
    """Read a YAML experiment config and apply overrides (a plain dict; :func:`parse_config` checks it).
    Raises ValueError naming the file on bad YAML or a missing recipe."""
    path = Path(path)
    try:
        cfg = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise FileNotFoundError(f"config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML in {path}: {exc}") from exc
    if not isinstance(cfg, dict) or not ({"recipe", "task"} & cfg.keys()):
        raise ValueError(f"config {path} must be a mapping with a 'recipe' key")
    return apply_overrides(cfg, overrides or [])

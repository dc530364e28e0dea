"""Model names → factories (registered in timm's registry too) and building a model with its weights."""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from torch import nn

from .checkpoint import unwrap_state_dict
from .weights import FilterFn, load_weights, pretrained_file

__all__ = ["register_model", "create_model", "list_models", "build_model", "is_model"]

_logger = logging.getLogger(__name__)
_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
# keyword arguments timm.create_model passes to every factory; our factories take what they need from them
_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name, in pixelforge and in timm's registry.

    Like ``timm.models.register_model``; the defining module's ``default_cfgs`` must already exist. A name timm
    itself already uses is refused, so that ``timm.create_model`` keeps meaning what it meant.
    """
    from timm.models import is_model as timm_is_model
    from timm.models import register_model as timm_register_model

    name = fn.__name__
    if name in _FACTORIES:
        raise ValueError(f"model '{name}' is registered twice")
    if timm_is_model(name):
        raise ValueError(f"model name '{name}' collides with a timm model; choose another name")
    _FACTORIES[name] = fn
    return timm_register_model(fn)


def is_model(name: str) -> bool:
    """True when ``name`` is a pixelforge model."""
    return name in _FACTORIES


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the pixelforge models matching a shell-style ``pattern``."""
    return sorted(n for n in _FACTORIES if fnmatch.fnmatch(n, pattern))


def create_model(name: str, pretrained: bool = False, weights=None, **overrides) -> nn.Module:
    """Build a registered model, optionally with weights.

    Args:
        name: a name from :func:`list_models` (the same as ``timm.create_model(name)``).
        pretrained: load the model's default weights (``$PIXELFORGE_HOME/weights`` or package data).
        weights: a weights file (ours in safetensors, or an official checkpoint) or a state dict; wins over
            ``pretrained``.
        **overrides: hyper-parameters that replace the registered configuration.
    """
    if name not in _FACTORIES:
        close = [n for n in _FACTORIES if n.split("_")[0] == name.split("_")[0]][:8]
        hint = f" (did you mean one of: {', '.join(close)}?)" if close else " (see `pixelforge models`)"
        raise ValueError(f"unknown model '{name}'{hint}")
    return _FACTORIES[name](pretrained=pretrained, weights=weights, **overrides)


def build_model(model_cls: Callable[..., nn.Module], variant: str, pretrained: bool, model_args: dict,
                filter_fn: FilterFn | None = None, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for local weights: build ``model_cls(**model_args, **kwargs)``, then load.

    ``kwargs`` may hold ``weights`` (a path or state dict), timm's factory arguments and ``features_only`` (with
    ``out_indices``: the model is wrapped in timm's ``FeatureGetterNet``). With ``pretrained`` and no ``weights``,
    the file is the one timm names: ``pretrained_cfg_overlay=dict(file=...)``, a ``local-dir:`` model folder
    (``model.safetensors``, ``pytorch_model.bin``...), else the variant's own file (:func:`pretrained_file`). Every
    source, ``timm.create_model(..., checkpoint_path=)`` included, goes through ``filter_fn`` (official keys). A
    ``num_classes`` other than the pretrained one re-initialises the classifier (logged), as timm does, when the
    weights are the pretrained ones; an explicit ``weights`` file (e.g. a classifier trained here on 3 classes)
    loads whole.
    """
    weights = kwargs.pop("weights", None)
    cfg = _pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    for key in _TIMM_KWARGS:
        kwargs.pop(key, None)
    features_only = kwargs.pop("features_only", False)
    feature_args = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs}

    from_pretrained = weights is None and pretrained
    if from_pretrained:  # found (or reported missing) before anything is built
        weights = _pretrained_source(variant, cfg)
    model = model_cls(**{**model_args, **kwargs})
    model.pretrained_cfg = model.default_cfg = cfg  # as timm's builder does
    if filter_fn is not None:  # timm's checkpoint_path= loads with load_state_dict: convert official keys there too
        model.register_load_state_dict_pre_hook(partial(_convert_official_keys, filter_fn=filter_fn))
    if weights is not None:
        reset = ()
        pretrained_classes = cfg.get("num_classes")
        if (from_pretrained and pretrained_classes
                and getattr(model, "num_classes", pretrained_classes) != pretrained_classes):
            reset = tuple(cfg["classifier"]) if isinstance(cfg.get("classifier"), (list, tuple)) else \
                (cfg.get("classifier") or "head",)
            _logger.info(f"{variant}: num_classes {model.num_classes} differs from the pretrained "
                         f"{pretrained_classes}; the classifier ({', '.join(reset)}) is re-initialised")
        load_weights(model, weights, filter_fn, skip=reset)
    if features_only:  # timm.create_model(name, features_only=True): models that implement forward_intermediates
        from timm.models._features import FeatureGetterNet

        if feature_args.pop("feature_cls", "getter") != "getter":
            raise ValueError(f"'{variant}' supports features_only through forward_intermediates (feature_cls='getter')")
        model = FeatureGetterNet(model, out_indices=feature_args.get("out_indices", 4))
    return model


def _pretrained_cfg(variant: str, given, overlay: dict | None) -> dict:
    """The variant's pretrained config as a dict, with timm's ``pretrained_cfg`` (a dict or PretrainedCfg, e.g. from
    ``local-dir:``; a tag string is ignored) and ``pretrained_cfg_overlay`` applied in that order."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(variant)
    cfg = cfg.to_dict() if cfg is not None else {}
    if given is not None and not isinstance(given, str):
        cfg.update(given if isinstance(given, dict) else given.to_dict())
    return {**cfg, **(overlay or {})}


def _pretrained_source(variant: str, cfg: dict) -> Path:
    """The weights file of ``cfg``: a path given through timm (a file, or a ``local-dir:`` folder's weights file),
    else the variant's registered file found by :func:`pretrained_file`."""
    file = cfg.get("file")
    path = Path(file) if file else None
    if path is not None and path.is_dir():
        from timm.models._hub import _PREFERRED_FILES

        found = [path / name for name in _PREFERRED_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no weights file ({', '.join(_PREFERRED_FILES)}) in {path}")
        return found[0]
    if path is not None and (path.is_absolute() or path.is_file()):
        return path  # read_checkpoint reports a missing file by name
    return pretrained_file(variant)


def _convert_official_keys(module: nn.Module, state_dict: dict, prefix: str, *args, filter_fn: FilterFn) -> None:
    """``load_state_dict`` pre-hook: an official state dict (or wrapped one) given to the whole model is converted
    in place; one that already has the model's keys is left alone."""
    if prefix or set(state_dict) <= set(module.state_dict()):
        return
    converted = filter_fn(unwrap_state_dict(dict(state_dict)), module)
    state_dict.clear()
    state_dict.update(converted)

"""Model names → factories (registered in timm's registry too) and building a model with its weights."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from .weights import FilterFn, load_weights, pretrained_file

__all__ = ["register_model", "create_model", "list_models", "build_model", "is_model"]

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

    ``kwargs`` may hold ``weights`` (a path or state dict) and timm's own factory arguments (ignored), and
    ``features_only`` (with ``out_indices``): the model is wrapped in timm's ``FeatureGetterNet``.
    With ``pretrained`` and no ``weights``, the file named in the variant's pretrained config is resolved with
    :func:`~pixelforge.zoo.weights.pretrained_file`.
    """
    weights = kwargs.pop("weights", None)
    for key in _TIMM_KWARGS:
        kwargs.pop(key, None)
    features_only = kwargs.pop("features_only", False)
    feature_args = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs}
    from timm.models import get_pretrained_cfg

    model = model_cls(**{**model_args, **kwargs})
    cfg = get_pretrained_cfg(variant)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict() if cfg is not None else {}  # as timm's builder does
    if weights is None and pretrained:
        weights = pretrained_file(variant)
    if weights is not None:
        load_weights(model, weights, filter_fn)
    if features_only:  # timm.create_model(name, features_only=True): models that implement forward_intermediates
        from timm.models._features import FeatureGetterNet

        if feature_args.pop("feature_cls", "getter") != "getter":
            raise ValueError(f"'{variant}' supports features_only through forward_intermediates (feature_cls='getter')")
        model = FeatureGetterNet(model, out_indices=feature_args.get("out_indices", 4))
    return model

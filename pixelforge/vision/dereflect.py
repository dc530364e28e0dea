"""Dereflection models: the dense SR backbones (CFSR, HAT-S, CRAFT, MambaIR) with the same-size restoration head.

Each is the family's registered model built with ``head="restore"`` (output = input + conv3x3(features), DIV2K mean
shift), so every backbone option of the family still applies (``create_model("hat_s_dereflect", depths=(2, 2))``).
The families are reached through the registry by name; nothing here depends on their modules. RRFormer, the
dedicated dereflection model, is registered by :mod:`pixelforge.vision.rrformer`.
"""
from __future__ import annotations

from ..zoo import create_model, pretrained_file, register_model
from .dense import DenseImageModel

__all__: list[str] = []

def _create_dereflect(variant: str, base: str, pretrained: bool = False, **kwargs) -> DenseImageModel:
    """``base`` (a registered SR model) with the restoration head; ``pretrained`` reads ``default_cfgs[variant]``.

    timm's factory arguments in ``kwargs`` travel on to the base factory, which drops them.
    """
    weights = kwargs.pop("weights", None)
    if weights is None and pretrained:
        weights = pretrained_file(variant)
    return create_model(base, weights=weights, **{"head": "restore", **kwargs})


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 128, 128), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), **kwargs}


default_cfgs = {
    "cfsr_dereflect": _cfg(license="mit"),
    "hat_s_dereflect": _cfg(license="apache-2.0"),
    "craft_dereflect": _cfg(license="apache-2.0"),
    "mambair_dereflect": _cfg(license="apache-2.0"),
}


@register_model
def cfsr_dereflect(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CFSR body (C 48, depths 6/6, K 9) + restoration head; ``deploy=False`` for the trainable form."""
    return _create_dereflect("cfsr_dereflect", "cfsr_x2", pretrained, **kwargs)


@register_model
def hat_s_dereflect(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT-S body (C 144, 6 groups x 6 HABs, window 16) + restoration head."""
    return _create_dereflect("hat_s_dereflect", "hat_s_x2", pretrained, **kwargs)


@register_model
def craft_dereflect(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CRAFT body (C 48, 4 groups x 2, windows 4x16 / 16x4) + restoration head."""
    return _create_dereflect("craft_dereflect", "craft_x2", pretrained, **kwargs)


@register_model
def mambair_dereflect(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """MambaIR body as the official restoration models (C 180, 6 groups x 6 RSSBs, N 16, expansion 1.2: the layout
    of the released colour-denoising checkpoints) + restoration head."""
    return _create_dereflect("mambair_dereflect", "mambair_x2", pretrained, **{"mlp_ratio": 1.2, **kwargs})

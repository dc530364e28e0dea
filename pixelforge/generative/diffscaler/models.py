"""The registered DiT names (timm-style, also in timm's registry) and the official-checkpoint family.

Kept apart from :mod:`.dit` so that ``import pixelforge`` does not import diffusers (≈2 s of CPU): the factories and
the checkpoint reader import the model class on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...zoo import build_model, register_family, register_model

if TYPE_CHECKING:
    from .dit import DiT

__all__: list[str] = []


def _create_dit(variant: str, pretrained: bool = False, **kwargs) -> DiT:
    from .dit import DiT, checkpoint_filter_fn

    return build_model(DiT, variant, pretrained, {}, filter_fn=checkpoint_filter_fn, **kwargs)


def _official_detect(state: dict) -> bool:
    return ("x_embedder.proj.weight" in state and "blocks.0.adaLN_modulation.1.weight" in state) or \
        ("pos_embed.proj.weight" in state and "transformer_blocks.0.norm1.linear.weight" in state)


def _official_build(state: dict, config: dict) -> DiT:
    from .dit import official_build

    return official_build(state, config)


register_family("dit", _official_detect, _official_build, wrapper="ema")


def _cfg(**kwargs) -> dict:
    return {"input_size": (4, 32, 32), "mean": (0.0,) * 4, "std": (1.0,) * 4, "license": "cc-by-nc-4.0",
            "paper_ids": "arXiv:2212.09748", **kwargs}


_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
default_cfgs = {f"dit_{s}_{p}": _cfg() for s in _SIZES for p in (2, 4, 8)}
_PIXEL = dict(sample_size=32, in_channels=3, learn_sigma=False, num_classes=10)
default_cfgs.update({
    "dit_tiny_4": _cfg(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, license="apache-2.0",
                       file="dit_tiny_4_cifar_animals.safetensors",
                       notes="pixel-space CPU model (specs/diffscaler.md §5), trained by `pixelforge train "
                             "configs/diffscaler/dit_tiny_cifar_animals.yaml`; its DiffScaler tasks "
                             "(configs/diffscaler/adapt_cifar.yaml) lie beside it as "
                             "dit_tiny_4_cifar_animals-task-NAME.safetensors"),
    "dit_micro_2": _cfg(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, license="apache-2.0",
                        notes="smoke-test model"),
})


def _official(size: str, patch: int, kwargs: dict) -> DiT:
    depth, width, heads = _SIZES[size]
    args = {**dict(num_layers=depth, hidden_size=width, num_heads=heads, patch_size=patch), **kwargs}
    return _create_dit(f"dit_{size}_{patch}", **args)


@register_model
def dit_s_2(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-S/2 (12 layers, 384 wide, 6 heads), 32×32×4 latents, 1000 classes, learned σ."""
    return _official("s", 2, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_s_4(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-S/4."""
    return _official("s", 4, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_s_8(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-S/8."""
    return _official("s", 8, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_b_2(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-B/2 (12 layers, 768 wide, 12 heads)."""
    return _official("b", 2, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_b_4(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-B/4."""
    return _official("b", 4, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_b_8(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-B/8."""
    return _official("b", 8, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_l_2(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-L/2 (24 layers, 1024 wide, 16 heads)."""
    return _official("l", 2, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_l_4(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-L/4."""
    return _official("l", 4, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_l_8(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-L/8."""
    return _official("l", 8, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_xl_2(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-XL/2 (28 layers, 1152 wide, 16 heads)."""
    return _official("xl", 2, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_xl_4(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-XL/4."""
    return _official("xl", 4, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_xl_8(pretrained: bool = False, **kwargs) -> DiT:
    """DiT-XL/8."""
    return _official("xl", 8, dict(pretrained=pretrained, **kwargs))


@register_model
def dit_tiny_4(pretrained: bool = False, **kwargs) -> DiT:
    """Pixel-space CPU DiT: 32×32×3, patch 4 (64 tokens), 6 layers, 192 wide, 3 heads, 10 classes, ε only (≈4M)."""
    args = dict(_PIXEL, patch_size=4, num_layers=6, hidden_size=192, num_heads=3)
    return _create_dit("dit_tiny_4", pretrained, **{**args, **kwargs})


@register_model
def dit_micro_2(pretrained: bool = False, **kwargs) -> DiT:
    """Smoke-test DiT: 16×16×3, patch 2 (64 tokens), 4 layers, 128 wide, 2 heads, 10 classes, ε only."""
    args = dict(_PIXEL, sample_size=16, patch_size=2, num_layers=4, hidden_size=128, num_heads=2)
    return _create_dit("dit_micro_2", pretrained, **{**args, **kwargs})

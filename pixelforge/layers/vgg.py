"""A frozen VGG-19 feature extractor in torchvision's layout, and the VGG perceptual loss built on it.

Used by RRFormer's hypercolumn (raw [0, 1] input, as the official code) and by the perceptual training loss
(ImageNet-normalised input). The weights are never downloaded: they come from a local torchvision-format file
(``features.N.weight`` / ``features.N.bias``; ``.pth`` or ``.safetensors``), from ``$PIXELFORGE_HOME/weights``, or,
failing both, from a fixed-seed random initialisation, announced once per process with a warning because it makes a
different model.

The conv weights are non-persistent buffers: they never appear in a model's state dict (official RRFormer
checkpoints do not carry them either), receive no gradient and are not seen by optimisers.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..zoo import CheckpointError, pixelforge_home, read_checkpoint

__all__ = ["VGG19Features", "VGGPerceptualLoss", "VGG19_TAPS", "VGG19_FILE_NAMES", "find_vgg19_weights",
           "load_vgg19_state"]

# torchvision vgg19().features: conv channels per block, a max-pool between blocks
_BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# file names looked for in $PIXELFORGE_HOME/weights (the last one is torchvision's own cache name)
VGG19_FILE_NAMES = ("vgg19.safetensors", "vgg19.pth", "vgg19-dcbb9e9d.pth")
RANDOM_SEED = 19


def _layout() -> tuple[dict[str, int], list[tuple[int, int, int]]]:
    """Tap name → torchvision ``features`` index of its ReLU; and (index, in, out) of every conv."""
    taps, convs, idx, cin = {}, [], 0, 3
    for b, block in enumerate(_BLOCKS, start=1):
        if b > 1:
            idx += 1  # max-pool
        for c, cout in enumerate(block, start=1):
            convs.append((idx, cin, cout))
            taps[f"relu{b}_{c}"] = idx + 1
            idx, cin = idx + 2, cout
    return taps, convs


VGG19_TAPS, _CONVS = _layout()
_TAP_CHANNELS = {name: _CONVS[i][2] for i, name in enumerate(VGG19_TAPS)}


class _FrozenConv(nn.Module):
    """3x3 conv (padding 1) whose weight and bias are non-persistent buffers."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.register_buffer("weight", torch.empty(cout, cin, 3, 3), persistent=False)
        self.register_buffer("bias", torch.zeros(cout), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) → (B, cout, H, W)."""
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=1)


def find_vgg19_weights() -> Path | None:
    """The first of :data:`VGG19_FILE_NAMES` present in ``$PIXELFORGE_HOME/weights``, else ``None``."""
    folder = pixelforge_home() / "weights"
    for name in VGG19_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_vgg19_state(source) -> dict[str, torch.Tensor]:
    """Read torchvision-format VGG-19 weights as ``{"features.N.weight": fp32 tensor, ...}``.

    Accepts a path (``.pth``/``.safetensors``) or a mapping; keys may be ``features.N.*`` (a full ``vgg19()``
    state dict, ``classifier.*`` ignored) or ``N.*`` (a ``vgg19().features`` state dict), possibly one level down in
    a wrapper dict. Half-precision tensors are cast to fp32.
    """
    raw = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"VGG-19 weights: expected a state dict, got {type(raw).__name__}")
    candidates = [raw] + [v for v in raw.values() if isinstance(v, Mapping)]
    for cand in candidates:
        if "features.0.weight" in cand:
            return {k: v.float() for k, v in cand.items() if k.startswith("features.") and torch.is_tensor(v)}
        if "0.weight" in cand:
            return {f"features.{k}": v.float() for k, v in cand.items() if torch.is_tensor(v)}
    where = source if isinstance(source, (str, os.PathLike)) else "the given state dict"
    raise CheckpointError(f"{where} holds no torchvision VGG-19 weights (no 'features.0.weight' key)")


class VGG19Features(nn.Module):
    """Frozen torchvision VGG-19 ``features`` up to the deepest requested tap.

    Args:
        taps: ReLU outputs to return, by name (``relu1_1`` … ``relu5_4``), in the order wanted.
        weights: a torchvision-format VGG-19 file or state dict; ``None`` looks in ``$PIXELFORGE_HOME/weights``
            (:data:`VGG19_FILE_NAMES`) and otherwise uses a fixed-seed random initialisation (warned once).
        normalize: apply ImageNet mean/std to the input first (torchvision convention; the RRFormer hypercolumn
            does NOT, the perceptual loss does).
        purpose: who uses the features, named in the random-weights warning.
    Shapes: (B, 3, H, W) → list of (B, C_tap, ⌊H/2^k⌋, ⌊W/2^k⌋) for a tap in block k + 1.
    Attributes: ``pretrained`` (False with random weights), ``source`` (where the weights came from).
    """

    def __init__(self, taps: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                 weights=None, normalize: bool = False, purpose: str = "VGG-19 features"):
        super().__init__()
        unknown = [t for t in taps if t not in VGG19_TAPS]
        if unknown or not taps:
            raise ValueError(f"unknown VGG-19 taps {unknown}; choose from {list(VGG19_TAPS)}")
        self.taps = tuple(taps)
        self.tap_channels = tuple(_TAP_CHANNELS[t] for t in self.taps)
        self.normalize = normalize
        last = max(VGG19_TAPS[t] for t in self.taps)
        layers, convs = [], {i: (cin, cout) for i, cin, cout in _CONVS}
        for idx in range(last + 1):
            if idx in convs:
                layers.append(_FrozenConv(*convs[idx]))
            elif idx - 1 in convs:
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self._tap_index = {VGG19_TAPS[t]: t for t in self.taps}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights is None:
            weights = find_vgg19_weights()
        if weights is None:
            self._random_init()
            _warn_random(purpose)
        else:
            self.load(weights)

    @torch.no_grad()
    def _random_init(self) -> None:
        weights = _random_weights(len(self._convs()))
        for conv, w in zip(self._convs(), weights):
            conv.weight.copy_(w)
            conv.bias.zero_()
        self.pretrained, self.source = False, f"random (seed {RANDOM_SEED})"

    def _convs(self) -> list[_FrozenConv]:
        return [m for m in self.features if isinstance(m, _FrozenConv)]

    @torch.no_grad()
    def load(self, weights) -> VGG19Features:
        """Copy torchvision-format weights (path or state dict, see :func:`load_vgg19_state`) into the convs."""
        state = load_vgg19_state(weights)
        problems = []
        for idx, layer in enumerate(self.features):
            if not isinstance(layer, _FrozenConv):
                continue
            for part in ("weight", "bias"):
                key, own = f"features.{idx}.{part}", getattr(layer, part)
                if key not in state:
                    problems.append(f"missing {key}")
                elif state[key].shape != own.shape:
                    problems.append(f"{key} {tuple(state[key].shape)} vs {tuple(own.shape)}")
        if problems:
            shown = ", ".join(problems[:6]) + (", ..." if len(problems) > 6 else "")
            raise CheckpointError(f"VGG-19 weights do not fit torchvision's vgg19 layout: {shown}")
        for idx, layer in enumerate(self.features):
            if isinstance(layer, _FrozenConv):
                layer.weight.copy_(state[f"features.{idx}.weight"])
                layer.bias.copy_(state[f"features.{idx}.bias"])
        self.pretrained = True
        self.source = str(weights) if isinstance(weights, (str, os.PathLike)) else "state dict"
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → the requested taps, in the order of ``taps``."""
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        found = {}
        for idx, layer in enumerate(self.features):
            x = layer(x)
            if idx in self._tap_index:
                found[self._tap_index[idx]] = x
        return [found[t] for t in self.taps]


_RANDOM_WARNED = False
_RANDOM_CACHE: list[torch.Tensor] = []


def _random_weights(n: int) -> list[torch.Tensor]:
    """The first ``n`` conv weights of the fixed-seed random VGG-19, N(0, 2/fan_in), generated once per process.

    Conv k's weights do not depend on how many convs are built, so every instance shares one sequence.
    """
    if len(_RANDOM_CACHE) < n:
        gen = torch.Generator().manual_seed(RANDOM_SEED)
        _RANDOM_CACHE.clear()
        for _, cin, cout in _CONVS[:n]:
            _RANDOM_CACHE.append(torch.randn(cout, cin, 3, 3, generator=gen, device="cpu") * (2.0 / (cin * 9)) ** 0.5)
    return _RANDOM_CACHE[:n]


def _warn_random(purpose: str) -> None:
    global _RANDOM_WARNED
    if _RANDOM_WARNED:
        return
    _RANDOM_WARNED = True
    warnings.warn(
        f"no VGG-19 weights given or found in {pixelforge_home() / 'weights'} ({', '.join(VGG19_FILE_NAMES)}): "
        f"{purpose} uses a RANDOMLY INITIALISED frozen VGG-19 (fixed seed {RANDOM_SEED}), which is a different model "
        f"from the published one (ImageNet VGG-19). Pass vgg_weights= / --vgg-weights with torchvision's "
        f"vgg19 weights file to use the real one (nothing is downloaded).", UserWarning, stacklevel=3)


class VGGPerceptualLoss(nn.Module):
    """Weighted L1 distance between VGG-19 features of an output and its target (ERRNet's ``VGGLoss``).

    Features are taken on ImageNet-normalised inputs; the target's features are not differentiated.

    Args:
        weights: VGG-19 weights (path or state dict; see :class:`VGG19Features`). Required: a perceptual loss on
            random features is not what the recipe means, so ``None`` falls back to ``$PIXELFORGE_HOME/weights`` and
            raises FileNotFoundError when nothing is there.
        taps, tap_weights: the layers compared and their weights (ERRNet: relu1_1 … relu5_1 with 1/2.6, 1/4.8,
            1/3.7, 1/5.6, 10/1.5).
    Shapes: output, target (B, 3, H, W) in [0, 1] → scalar.
    """

    def __init__(self, weights=None, taps: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                 tap_weights: Sequence[float] = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)):
        super().__init__()
        if len(taps) != len(tap_weights):
            raise ValueError(f"{len(taps)} taps but {len(tap_weights)} tap weights")
        weights = weights if weights is not None else find_vgg19_weights()
        if weights is None:
            raise FileNotFoundError(
                f"the VGG perceptual loss needs VGG-19 weights: pass a torchvision vgg19 file or put one in "
                f"{pixelforge_home() / 'weights'} ({', '.join(VGG19_FILE_NAMES)})")
        self.vgg = VGG19Features(taps, weights=weights, normalize=True)
        self.tap_weights = tuple(float(w) for w in tap_weights)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k · mean|φ_k(output) − φ_k(target)|."""
        with torch.no_grad():
            target_feats = self.vgg(target)
        out_feats = self.vgg(output)
        return sum(w * F.l1_loss(a, b) for w, a, b in zip(self.tap_weights, out_feats, target_feats))

"""Reflection-removal data: synthetic (blend, transmission) pairs made on the fly, and real paired folders.

Synthesis follows the standard recipe of Zhang, Ng & Chen 2018 ("Single Image Reflection Separation with Perceptual
Losses"), also used by ERRNet (Wei et al. 2019), from two natural images, a transmission T and a reflection R:

1. optionally linearise both (``t ** gamma``, ``r ** gamma``; gamma 2.2, or 1 to work on sRGB values as ERRNet);
2. blur R with a Gaussian of random σ (kernel 2⌈2σ⌉+1 unless fixed, mirrored borders);
3. where T + R_blur overflows 1, lower R_blur by (mean overflow − 1)·g with a random gain g, per channel (Zhang)
   or over all channels (ERRNet), then clip R_blur to [0, 1];
4. weight R_blur by a Gaussian vignette at a random position (Zhang; optional) and a random weight β, T by a random
   weight α; blend = α·T + β·R_blur;
5. back to sRGB (``** (1/gamma)``) and clip to [0, 1].

The target is the original T (not α·T), as in both recipes. Every random number comes from the ``torch.Generator``
passed in (or torch's global RNG), so a seed fixes a pair exactly.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .image_io import list_image_files, read_image

__all__ = ["ReflectionSynthesis", "SYNTHESIS_PRESETS", "gaussian_blur", "SyntheticReflectionPairs",
           "PairedReflectionFolder", "MIXTURE_DIRS", "TRANSMISSION_DIRS"]

Range = tuple[float, float]


def _uniform(lo_hi: Sequence[float], generator: torch.Generator | None) -> float:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def gaussian_blur(img: torch.Tensor, sigma: float, kernel_size: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with mirrored borders (OpenCV's default border, ``BORDER_REFLECT_101``).

    Args:
        img: (C, H, W) or (B, C, H, W). sigma: standard deviation in pixels (≤ 0: no blur).
        kernel_size: odd size; ``None`` gives 2⌈2σ⌉+1 (Zhang et al.), clipped to what the image size allows.
    Returns:
        Same shape as ``img``.
    """
    if sigma <= 0:
        return img
    k = kernel_size or 2 * math.ceil(2 * sigma) + 1
    if k % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd, got {k}")
    x = img.unsqueeze(0) if img.ndim == 3 else img
    h, w = x.shape[-2:]
    radius = min(k // 2, h - 1, w - 1)
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[0] if img.ndim == 3 else x


@dataclass(frozen=True)
class ReflectionSynthesis:
    """Parameters of the reflection synthesis (ranges are sampled uniformly per pair).

    Attributes:
        gamma: linearisation exponent (2.2 Zhang; 1.0 ERRNet, which blends sRGB values).
        sigma: blur σ range of the reflection. kernel_size: fixed odd kernel (ERRNet: 11) or None (2⌈2σ⌉+1).
        overflow: ``"channel"`` (Zhang) or ``"global"`` (ERRNet) overflow correction. overflow_gain: its gain g.
        transmission_weight: α range. reflection_weight: β range.
        vignette: weight R by a Gaussian bump (Zhang's vignetting mask, peak 1). vignette_sigma: its σ relative
            to the longer image side. vignette_center: range of its centre, relative to each side (0..1 = inside).
    """

    gamma: float = 2.2
    sigma: Range = (1.0, 5.0)
    kernel_size: int | None = None
    overflow: str = "channel"
    overflow_gain: Range = (1.08, 1.18)
    transmission_weight: Range = (0.8, 1.0)
    reflection_weight: Range = (1.0, 1.0)
    vignette: bool = True
    vignette_sigma: Range = (0.3, 0.6)
    vignette_center: Range = (0.0, 1.0)

    def __post_init__(self):
        if self.overflow not in ("channel", "global"):
            raise ValueError(f"overflow must be 'channel' or 'global', got '{self.overflow}'")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (tuple, list)):
                if len(value) != 2 or float(value[0]) > float(value[1]):
                    raise ValueError(f"{f.name} must be a [low, high] range, got {list(value)}")
                object.__setattr__(self, f.name, (float(value[0]), float(value[1])))

    @classmethod
    def from_config(cls, cfg: dict | None) -> ReflectionSynthesis:
        """From a config mapping: ``preset`` (``zhang2018`` default, or ``errnet``) plus field overrides."""
        cfg = dict(cfg or {})
        preset = cfg.pop("preset", "zhang2018")
        if preset not in SYNTHESIS_PRESETS:
            raise ValueError(f"unknown synthesis preset '{preset}'; choose from {sorted(SYNTHESIS_PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown synthesis parameters {unknown}; known: {sorted(known)}")
        return replace(SYNTHESIS_PRESETS[preset], **{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in cfg.items()})

    def _vignette(self, h: int, w: int, generator: torch.Generator | None) -> torch.Tensor:
        s = _uniform(self.vignette_sigma, generator) * max(h, w)
        cy = _uniform(self.vignette_center, generator) * h
        cx = _uniform(self.vignette_center, generator) * w
        y = (torch.arange(h, dtype=torch.float32) + 0.5 - cy) ** 2
        x = (torch.arange(w, dtype=torch.float32) + 0.5 - cx) ** 2
        return torch.exp(-(y[:, None] + x[None, :]) / (2 * s * s))

    def __call__(self, t: torch.Tensor, r: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Blend a transmission and a reflection image.

        Args:
            t, r: (3, H, W) float in [0, 1], the same size. generator: source of every random number.
        Returns:
            (blend, transmission, reflection): (3, H, W) each, in [0, 1]; ``transmission`` is ``t`` itself and
            ``reflection`` is the reflection layer as it appears in the blend (sRGB).
        """
        if t.shape != r.shape or t.ndim != 3:
            raise ValueError(f"t and r must be (C, H, W) of the same size, got {tuple(t.shape)} and {tuple(r.shape)}")
        t_lin = t.float().clamp(0, 1) ** self.gamma
        r_lin = r.float().clamp(0, 1) ** self.gamma
        r_blur = gaussian_blur(r_lin, _uniform(self.sigma, generator), self.kernel_size)
        gain = _uniform(self.overflow_gain, generator)
        total = r_blur + t_lin
        over = total > 1
        if self.overflow == "channel":
            n = over.sum(dim=(1, 2))
            mean = (total * over).sum(dim=(1, 2)) / n.clamp(min=1)  # 0 where nothing overflows
            r_blur = r_blur - ((mean - 1).clamp(min=0) * gain).view(-1, 1, 1)
        elif over.any():
            r_blur = r_blur - (total[over].mean() - 1) * gain
        r_blur = r_blur.clamp(0, 1)
        beta = _uniform(self.reflection_weight, generator)
        if self.vignette:
            r_blur = r_blur * self._vignette(*t.shape[-2:], generator)
        r_blur = r_blur * beta
        alpha = _uniform(self.transmission_weight, generator)
        blend = (alpha * t_lin + r_blur).clamp(0, 1) ** (1 / self.gamma)
        return blend, t, r_blur.clamp(0, 1) ** (1 / self.gamma)


SYNTHESIS_PRESETS = {
    "zhang2018": ReflectionSynthesis(),
    "errnet": ReflectionSynthesis(gamma=1.0, sigma=(2.0, 5.0), kernel_size=11, overflow="global",
                                  overflow_gain=(1.3, 1.3), transmission_weight=(1.0, 1.0), vignette=False),
}


def _load_rgb_uint8(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 (grayscale replicated), via the shared image reader."""
    pixels = read_image(path, channels=3).pixels
    return (pixels * 255).round().to(torch.uint8)


def _fit_crop(img: torch.Tensor, crop: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random crop×crop window of (3, H, W) uint8; images with a side below ``crop`` are enlarged first."""
    h, w = img.shape[-2:]
    if min(h, w) < crop:
        s = crop / min(h, w)
        size = (max(crop, round(h * s)), max(crop, round(w * s)))
        img = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        img = img.round().clamp(0, 255).to(torch.uint8)
        h, w = size
    y = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
    x = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
    return img[:, y:y + crop, x:x + crop]


class SyntheticReflectionPairs(Dataset):
    """(blend, transmission) pairs synthesised from natural images, cropped to ``crop_size``².

    Args:
        transmission_files: images used as T. reflection_files: images used as R (default: the same pool; an
            item never uses one file as both).
        crop_size: side of the square crops (T and R are cropped independently; smaller images are enlarged).
        length: number of items (default: one per transmission file).
        synthesis: a :class:`ReflectionSynthesis` (default: Zhang et al. 2018).
        seed: ``None`` for training (random files, crops, flips and parameters from torch's global RNG, which the
            training loop seeds per item); an int for a fixed set: item i uses transmission file i mod n, and a
            generator seeded by (seed, i) for everything else, so the pairs are the same in every run.
        augment: random horizontal flips of T and R.
        quantize: round the blend to 8 bits, as a mixture read from an image file would be.
    Images are decoded once and kept in memory as uint8.
    Items: (blend, transmission), each (3, crop, crop) float32 in [0, 1].
    """

    def __init__(self, transmission_files: Sequence[str | os.PathLike], reflection_files=None, crop_size: int = 128,
                 length: int | None = None, synthesis: ReflectionSynthesis | None = None, seed: int | None = None,
                 augment: bool = True, quantize: bool = True):
        if not transmission_files:
            raise ValueError("no transmission images given")
        self.t_files = [Path(p) for p in transmission_files]
        self.r_files = [Path(p) for p in reflection_files] if reflection_files else self.t_files
        if len(self.r_files) < 2 and self.r_files == self.t_files:
            raise ValueError("need at least two images to pair a transmission with a different reflection")
        self.crop, self.seed, self.augment, self.quantize = int(crop_size), seed, augment, quantize
        self.length = int(length) if length is not None else len(self.t_files)
        self.synthesis = synthesis or ReflectionSynthesis()
        cache = {p: _load_rgb_uint8(p) for p in dict.fromkeys(self.t_files + self.r_files)}
        self._t = [cache[p] for p in self.t_files]
        self._r = [cache[p] for p in self.r_files]
        self._same_pool = self.r_files == self.t_files

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        gen = None
        if self.seed is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            ti = index % len(self._t)
        else:
            ti = int(torch.randint(0, len(self._t), (1,)))
        n_r = len(self._r)
        if self._same_pool:  # any file but the transmission
            ri = (ti + 1 + int(torch.randint(0, n_r - 1, (1,), generator=gen))) % n_r
        else:
            ri = int(torch.randint(0, n_r, (1,), generator=gen))
        t = _fit_crop(self._t[ti], self.crop, gen)
        r = _fit_crop(self._r[ri], self.crop, gen)
        if self.augment:
            if torch.rand((), generator=gen) < 0.5:
                t = t.flip(-1)
            if torch.rand((), generator=gen) < 0.5:
                r = r.flip(-1)
        blend, target, _ = self.synthesis(t.float() / 255, r.float() / 255, gen)
        if self.quantize:
            blend = (blend * 255).round() / 255
        return blend, target


# folder names of real paired data, most usual first (ERRNet/SIR² "blended"/"transmission_layer", UHDRR, ...)
MIXTURE_DIRS = ("blended", "mixture", "input", "blend", "M", "I")
TRANSMISSION_DIRS = ("transmission_layer", "transmission", "gt", "target", "T", "B")


def _find_dir(root: Path, name: str | None, candidates: Sequence[str], what: str) -> Path:
    if name is not None:
        if not (root / name).is_dir():
            raise FileNotFoundError(f"{what} folder not found: {root / name}")
        return root / name
    for cand in candidates:
        if (root / cand).is_dir():
            return root / cand
    raise FileNotFoundError(f"no {what} folder in {root} (looked for {', '.join(candidates)}); name it explicitly")


class PairedReflectionFolder(Dataset):
    """Real (mixture, transmission) pairs from ``root/<mixture_dir>`` and ``root/<transmission_dir>``.

    Files are paired by name stem; every mixture must have a transmission of the same size.
    Args:
        root: the dataset folder. mixture_dir, transmission_dir: sub-folder names (default: the first present of
            :data:`MIXTURE_DIRS` / :data:`TRANSMISSION_DIRS`).
        crop_size: random aligned crop (training, torch's global RNG) or ``None`` for whole images (evaluation).
    Items: (mixture, transmission), (3, H, W) float32 in [0, 1].
    """

    def __init__(self, root: str | os.PathLike, mixture_dir: str | None = None, transmission_dir: str | None = None,
                 crop_size: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"paired reflection folder not found: {root}")
        m_dir = _find_dir(root, mixture_dir, MIXTURE_DIRS, "mixture")
        t_dir = _find_dir(root, transmission_dir, TRANSMISSION_DIRS, "transmission")
        t_by_stem = {p.stem: p for p in list_image_files(t_dir)}
        mixtures = list_image_files(m_dir)
        if not mixtures:
            raise ValueError(f"no images in {m_dir}")
        missing = [p.name for p in mixtures if p.stem not in t_by_stem]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(f"{len(missing)} mixture image(s) in {m_dir} have no transmission in {t_dir}: {shown}")
        self.pairs = [(p, t_by_stem[p.stem]) for p in mixtures]
        self.crop = crop_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        m_path, t_path = self.pairs[index]
        m = read_image(m_path, channels=3).pixels
        t = read_image(t_path, channels=3).pixels
        if m.shape != t.shape:
            raise ValueError(f"{m_path.name}: mixture {m.shape[2]}x{m.shape[1]} and transmission "
                             f"{t.shape[2]}x{t.shape[1]} differ in size")
        if self.crop:
            h, w = m.shape[-2:]
            if min(h, w) < self.crop:
                raise ValueError(f"{m_path.name} ({w}x{h}) is smaller than the crop size {self.crop}")
            y = int(torch.randint(0, h - self.crop + 1, (1,)))
            x = int(torch.randint(0, w - self.crop + 1, (1,)))
            m, t = (a[:, y:y + self.crop, x:x + self.crop] for a in (m, t))
        return m, t

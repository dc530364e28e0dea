"""PSNR/SSIM of a super-resolution model on a benchmark folder (specs/sr-evaluation.md).

The protocol of the published HAT/CRAFT/CFSR numbers: LR and HR read as 8-bit RGB (grayscale replicated to three
channels), HR cropped to LR size × scale, whole-image inference (``--tile`` optional; ``--precision auto`` runs bf16
only where it stays within 50 dB of fp32, and the JSON records the choice), output rounded to uint8
as BasicSR's ``tensor2img``, Y-channel PSNR/SSIM with crop_border = scale, plain mean over images.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from torch import nn

from ..data.image_io import IMAGE_SUFFIXES, read_image
from ..metrics.sr import psnr_ssim, tensor_to_uint8
from .runner import RunnerError
from .tiling import run_tiled

__all__ = ["find_pairs", "evaluate_sr"]


def find_pairs(data: str | Path, scale: int) -> list[tuple[str, Path, Path]]:
    """(name, LR file, HR file) for every image of a benchmark folder, sorted by name.

    Layouts: ``DATA/x{S}/NAME_SRF_{S}_LR.png`` + ``..._HR.png`` (the SelfExSR release used by sr-bench; ``x{S}/``
    optional, any ``*_LR``/``*_HR`` suffix pair), or ``DATA/LR/`` and ``DATA/HR/`` folders with the same file names.
    """
    data = Path(data)
    if not data.is_dir():
        raise RunnerError(f"benchmark folder not found: {data}")
    folder = data / f"x{scale}" if (data / f"x{scale}").is_dir() else data
    pairs = []
    for lr in sorted(folder.iterdir()):
        m = re.fullmatch(r"(.+?)(_SRF_\d+)?_LR", lr.stem)
        hr = lr.with_name(lr.name.replace("_LR.", "_HR.")) if m else None
        if m and lr.suffix.lower() in IMAGE_SUFFIXES and hr.is_file():
            pairs.append((m.group(1), lr, hr))
    if not pairs and (data / "LR").is_dir() and (data / "HR").is_dir():
        pairs = [(lr.stem, lr, data / "HR" / lr.name) for lr in sorted((data / "LR").iterdir())
                 if lr.suffix.lower() in IMAGE_SUFFIXES and (data / "HR" / lr.name).is_file()]
    if not pairs:
        raise RunnerError(f"no LR/HR pairs in {data} (expected x{scale}/NAME_LR.png with NAME_HR.png, "
                           f"or LR/ and HR/ folders with the same file names)")
    return pairs


def evaluate_sr(model: nn.Module, pairs: list[tuple[str, Path, Path]], scale: int, crop_border: int | None = None,
                tile: int | None = None, overlap: int | None = None, precision: str = "fp32",
                device: torch.device | None = None, progress: bool = False) -> dict:
    """Y-PSNR/SSIM of ``model`` on LR/HR pairs.

    Returns:
        ``{"per_image": {name: {"psnr_y", "ssim_y", "lr_hw", "hr_hw"}}, "mean": {"psnr_y", "ssim_y"}}``.
    """
    from tqdm import tqdm

    crop = scale if crop_border is None else crop_border
    per_image = {}
    for name, lr_path, hr_path in tqdm(pairs, desc="eval", unit="img", disable=not progress, file=sys.stderr):
        lr = read_image(lr_path, channels=3).pixels
        hr = read_image(hr_path, channels=3).pixels
        h, w = lr.shape[-2:]
        if hr.shape[-2] < h * scale or hr.shape[-1] < w * scale:
            raise RunnerError(f"{hr_path}: HR {hr.shape[-1]}x{hr.shape[-2]} is smaller than LR {w}x{h} x{scale}")
        hr = hr[:, : h * scale, : w * scale]
        sr = run_tiled(model, lr[None], tile, overlap, precision, device)[0]
        if sr.shape != hr.shape:
            raise RunnerError(f"model output {tuple(sr.shape)} does not match HR {tuple(hr.shape)} "
                               f"(is the model x{scale}?)")
        scores = psnr_ssim(tensor_to_uint8(sr), tensor_to_uint8(hr), crop, test_y_channel=True)
        per_image[name] = {"psnr_y": scores["psnr"], "ssim_y": scores["ssim"], "lr_hw": [h, w],
                           "hr_hw": list(hr.shape[-2:])}
    n = len(per_image)
    mean = {k: sum(v[k] for v in per_image.values()) / n for k in ("psnr_y", "ssim_y")}
    return {"per_image": per_image, "mean": mean}

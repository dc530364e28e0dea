"""The image-to-image runner behind ``upscale``, ``dereflect``, ``eval`` and the web page: loading a model with its
weights (any checkpoint: pixelforge files name their model, official layouts are recognised), applying ``--backend``
and ``--precision``, and running a decoded image through the tiled runner with pixelforge's alpha, 16-bit and
grayscale handling. The commands themselves (argument parsing, files, exit codes) are in :mod:`pixelforge.cli`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_io import LUMA_BT601, ImageData
from ..data.resize import lanczos_resize
from ..zoo import CheckpointError, create_model, read_checkpoint, stored_training_config
from .onnx_backend import OnnxRuntimeModel
from .precision import PrecisionChoice, prepare_model, probe_input
from .tiling import MIN_TILE, run_tiled

__all__ = ["RunnerError", "identify_checkpoint", "load_model", "load_runner", "model_channels", "model_name",
           "process_image", "one_line"]


class RunnerError(Exception):
    """A problem that stops a run (unknown model, unfit weights...); its message is one line for the user."""


def identify_checkpoint(weights: str | os.PathLike) -> tuple[str | None, dict, str]:
    """What a weights file holds, without building anything: (registered model name or None, constructor
    arguments, how it was found). A file from ``pixelforge train`` names its model and hyper-parameters in its
    training config, one from ``pixelforge convert`` its model (``pixelforge_model``); otherwise the name is None and
    :func:`load_model` tries the official layouts."""
    cfg = stored_training_config(weights)
    if isinstance(cfg.get("model"), dict) and cfg["model"].get("name"):
        return str(cfg["model"]["name"]), dict(cfg["model"].get("args") or {}), "training config"
    if str(weights).endswith(".safetensors") and Path(weights).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                name = (f.metadata() or {}).get("pixelforge_model")
        except Exception:  # not readable as safetensors: loading it reports the problem
            name = None
        if name:
            return name, {}, "pixelforge_model metadata"
    return None, {}, "no pixelforge metadata"


def load_model(name: str | None, weights: str | os.PathLike | None, device: torch.device | str = "cpu",
               default: str | None = None, model_args: dict | None = None) -> nn.Module:
    """Build a model with ``weights`` (or ``name``'s pretrained file), in eval mode on ``device``.

    Any checkpoint: a pixelforge file names its model (:func:`identify_checkpoint`), used when ``name`` is None or
    the same model; with no ``name``, other files are recognised by :func:`~pixelforge.zoo.load_official` (every
    official layout pixelforge converts), then by spandrel when it is installed (``pixelforge[spandrel]``).
    ``default`` is the model built when neither ``name`` nor ``weights`` is given (its pretrained file).
    ``model_args`` (a command's own options, e.g. dereflect's ``vgg_weights``) are passed to the constructor last.

    Raises:
        RunnerError with a one-line message (unknown model, no weights, unrecognised or unfit weights...).
    """
    found, args, how = identify_checkpoint(weights) if weights is not None else (None, {}, "")
    if found is not None and name in (None, found):
        name = found
    else:
        args = {}
    args.update(model_args or {})
    try:
        if name is None and weights is not None:
            model = _recognise(weights, how, args)
        else:
            name = name or default
            if name is None:
                raise RunnerError("pass --model (no model named and no weights given)")
            model = create_model(name, pretrained=weights is None, weights=weights, **args)
    except (FileNotFoundError, ValueError, CheckpointError, TypeError) as exc:  # unknown name, no or unfit weights
        raise RunnerError(one_line(exc).replace("weights=PATH", "--weights W")) from None
    return model.eval().to(device)


def _recognise(weights, how: str, model_args: dict) -> nn.Module:
    """An unnamed checkpoint through the official layouts, then spandrel; else one line naming what was tried."""
    from ..zoo import load_official, official_families

    tried = [f"{how} ({weights})"]
    state = read_checkpoint(weights)  # a missing or unreadable file is reported as such
    try:
        model = load_official(state, config=model_args or None)
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "source": "official checkpoint"}
        return model
    except (ValueError, KeyError, RuntimeError) as exc:  # no family matches, or its converter refuses the tensors
        tried.append(f"official layouts ({', '.join(official_families())}): "
                     f"{one_line(exc).replace('; pass family=', '')}")
    try:
        from .spandrel_backend import load_spandrel
    except ImportError:
        tried.append("spandrel: not installed (pip install 'pixelforge[spandrel]')")
    else:
        try:
            return load_spandrel(weights)
        except Exception as exc:  # spandrel raises its own error types for layouts it does not know
            tried.append(f"spandrel: {one_line(exc)}")
    raise RunnerError(f"cannot tell which model {weights} holds; tried {'; '.join(tried)}. Pass --model NAME")


def load_runner(name: str | None, weights: str | os.PathLike | None, device: torch.device, *,
                default: str | None = None, tile: int | None = None, precision: str = "auto",
                backend: str = "torch", model_args: dict | None = None
                ) -> tuple[nn.Module, PrecisionChoice, int | None]:
    """The model a tiled command runs, with ``backend`` and ``precision`` applied: (model, precision choice,
    tile). The ``onnxruntime`` backend runs an ``.onnx`` ``weights`` file (at most its export tile), or the model
    exported on the fly at ``tile``; it is fp32 on the CPU.

    Raises:
        RunnerError with a one-line message.
    """
    if backend == "onnxruntime":
        if precision not in ("auto", "fp32") or device.type != "cpu":
            raise RunnerError("--backend onnxruntime runs fp32 on the CPU; use --precision auto or fp32 and "
                              "--device cpu")
        try:
            if str(weights or "").endswith(".onnx"):
                model = OnnxRuntimeModel(weights)
                tile = model.tile if tile is None else min(tile, model.tile)
            else:
                if tile is None:
                    raise RunnerError("--backend onnxruntime exports the model at a fixed tile size: pass --tile N")
                from ..export import export_onnx

                model = load_model(name, weights, device, default, model_args)
                model = OnnxRuntimeModel(export_onnx(model, None, model_name(model, name or default), tile))
        except (ImportError, ValueError) as exc:
            raise RunnerError(one_line(exc)) from None
        return model, PrecisionChoice(precision, "fp32", "onnxruntime backend"), tile
    model = load_model(name, weights, device, default, model_args)
    model, choice = prepare_model(model, precision, device, model_name(model, name or default),
                                  probe_input(model_channels(model)),
                                  forward=lambda m, x: run_tiled(m, x, device=device))
    return model, choice, tile


def model_name(model: nn.Module, name: str | None = None) -> str:
    """``name``, else the registered name a model was built as (its pretrained config), else its class name."""
    return name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def model_channels(model: nn.Module) -> int:
    """Input channels of an image model (its own ``in_chans`` or its backbone's; 3 when it says nothing)."""
    return int(getattr(model, "in_chans", getattr(getattr(model, "backbone", None), "in_chans", 3)))


def process_image(model: nn.Module, image: ImageData, tile: int | None = None, overlap: int | None = None,
                  precision: str = "fp32", device: torch.device | None = None, progress=None,
                  alpha: str = "bicubic", outscale: float | None = None) -> ImageData:
    """Run an image-to-image model on a decoded image, keeping its alpha, bit depth, ICC profile and EXIF.

    Grayscale input to a 3-channel model is replicated and the result turned back to one channel (BT.601 luma);
    colour input to a 1-channel model is processed channel by channel. ``alpha``: ``bicubic`` resizes the alpha
    channel on its own, ``model`` runs it through the model too (as a gray image). ``outscale``: the final scale
    relative to the input, reached by a Lanczos resize of the model's output (None: the model's own scale).
    A CUDA out-of-memory error halves the tile and retries (a warning says so). Returns pixels (C, S·H, S·W) in
    [0, 1]. ``progress(done, total)`` is called after each tile (see :func:`run_tiled`).
    """
    options = dict(overlap=overlap, precision=precision, device=device, progress=progress)
    out, tile = _retrying(lambda t: _run_channels(model, image.pixels, t, options), tile, image.pixels.shape[-2:])
    matte = image.alpha
    if matte is not None and alpha == "model":
        matte = _retrying(lambda t: _run_channels(model, matte, t, options), tile, matte.shape[-2:])[0]
    elif matte is not None and matte.shape[-2:] != out.shape[-2:]:
        matte = F.interpolate(matte[None], size=out.shape[-2:], mode="bicubic", align_corners=False)[0]
    out, matte = out.clamp(0, 1), None if matte is None else matte.clamp(0, 1)
    if outscale is not None:
        size = tuple(max(1, round(n * outscale)) for n in image.pixels.shape[-2:])
        if size != tuple(out.shape[-2:]):  # Lanczos overshoots at edges: clamped again
            out = lanczos_resize(out, size).clamp(0, 1)
            matte = None if matte is None else lanczos_resize(matte, size).clamp(0, 1)
    return ImageData(out, matte, image.bit_depth, image.icc_profile, image.exif)


def _run_channels(model: nn.Module, pixels: torch.Tensor, tile: int | None, options: dict) -> torch.Tensor:
    """(C, H, W) → (C, s·H, s·W) through ``model``, whatever its channel count (see :func:`process_image`)."""
    channels = model_channels(model)
    if channels == 3 and pixels.shape[0] == 1:
        out = run_tiled(model, pixels.expand(3, -1, -1)[None], tile, **options)[0]
        return torch.tensordot(out.new_tensor(LUMA_BT601), out, dims=1)[None]
    if channels == 1 and pixels.shape[0] == 3:
        return run_tiled(model, pixels[:, None], tile, **options)[:, 0]
    return run_tiled(model, pixels[None], tile, **options)[0]


def _retrying(run, tile: int | None, hw) -> tuple[torch.Tensor, int | None]:
    """``run(tile)``, halving the tile after each CUDA out-of-memory error down to :data:`MIN_TILE`: (output, the
    tile that worked)."""
    while True:
        try:
            return run(tile), tile
        except torch.OutOfMemoryError:
            smaller = (max(hw) if tile is None else tile) // 2
            if smaller < MIN_TILE:
                raise
            warnings.warn(f"out of memory with {f'tile {tile}' if tile else 'whole images'}; retrying with tile "
                          f"{smaller}", stacklevel=2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            tile = smaller


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed), or its type name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__

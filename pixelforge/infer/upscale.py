"""``pixelforge upscale`` and the shared runner behind every image-to-image command (upscale, dereflect...).

A same-size command reuses it in a few lines::

    def add_dereflect_parser(subparsers):
        parser = subparsers.add_parser("dereflect", help="remove reflections from photos")
        add_image_to_image_arguments(parser, default_model="rrformer")
        parser.set_defaults(func=lambda args: run_image_to_image(args, "dereflect"))

Inputs are files or folders (the images directly inside, by suffix); outputs are PNG files named after the inputs in
the ``-o`` folder, or the ``-o`` file itself for a single input file. Alpha is resized separately (bicubic) and kept,
16-bit inputs give 16-bit outputs, grayscale stays grayscale. A file that fails is reported on one stderr line and
leaves no output; the others are still processed and a summary names the failures (exit code 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_io import (IMAGE_SUFFIXES, LUMA_BT601, ImageData, ImageIOError, check_writable, list_image_files,
                             read_image, remove_stale_temporaries, write_image)
from ..zoo import CheckpointError, create_model
from .onnx_backend import OnnxRuntimeModel, add_backend_argument
from .precision import PrecisionChoice, add_precision_argument, announce, prepare_model, probe_input, resolve_device
from .tiling import plan_tiles, run_tiled

__all__ = ["add_image_to_image_arguments", "run_image_to_image", "process_image", "load_model", "load_runner",
           "add_upscale_parser", "CommandError", "one_line"]


class CommandError(Exception):
    """A problem that stops a command; its message is printed as one line on stderr."""


def add_image_to_image_arguments(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """INPUT... -o OUT --model --weights --tile --tile-overlap --precision --device."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder (created if needed), or an output image file for a single input file")
    parser.add_argument("--model", help="registered model name (see `pixelforge models`); default: the model named "
                                        "in a --weights file from `pixelforge train`"
                                        + (f", else {default_model}" if default_model else ""))
    parser.set_defaults(default_model=default_model)
    parser.add_argument("--weights", metavar="W",
                        help="weights file (pixelforge safetensors or an official checkpoint); "
                             "default: the model's bundled pretrained weights")
    parser.add_argument("--tile", type=int, default=512, metavar="N",
                        help="tile size in input pixels; 0 processes whole images at once (default 512)")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="M",
                        help="pixels shared by neighbouring tiles, blended (default: the model's receptive-field "
                             "recommendation, e.g. 80 for HAT, 32 for most others)")
    add_precision_argument(parser)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    add_backend_argument(parser)


def _trained_model(weights: str | None) -> tuple[str, dict] | None:
    """(model name, constructor overrides) recorded by ``pixelforge train`` in a safetensors file, if any."""
    if weights is None or not str(weights).endswith(".safetensors") or not Path(weights).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            cfg = json.loads((f.metadata() or {}).get("config", "null"))
        return str(cfg["model"]["name"]), dict(cfg["model"].get("args") or {})
    except Exception:  # no or foreign metadata: the file is loaded as plain weights, which reports real problems
        return None


def load_model(name: str | None, weights: str | None, device: torch.device,
               default: str | None = None, model_args: dict | None = None) -> nn.Module:
    """Build a registered model with ``weights`` (or its pretrained default), in eval mode on ``device``.

    A weights file written by ``pixelforge train`` carries its model name and hyper-parameters; they are used when
    ``name`` is None or the same model. Otherwise ``name`` (or ``default``) is built with its registered config.
    ``model_args`` (a command's own options, e.g. dereflect's ``vgg_weights``) are passed to the constructor last.
    Raises:
        CommandError with a one-line message (unknown model, no weights, weights that do not fit...).
    """
    args = {}
    trained = _trained_model(weights)
    if trained is not None and name in (None, trained[0]):
        name, args = trained
    name = name or default
    args.update(model_args or {})
    if name is None:
        raise CommandError("--model is required (the weights file does not name its model)")
    try:
        model = create_model(name, pretrained=weights is None, weights=weights, **args)
    except (FileNotFoundError, ValueError, CheckpointError, TypeError) as exc:  # unknown name, no or unfit weights
        raise CommandError(one_line(exc).replace("weights=PATH", "--weights W")) from None
    return model.eval().to(device)


def load_runner(args: argparse.Namespace, device: torch.device, default: str | None, tile: int | None
                ) -> tuple[nn.Module, PrecisionChoice, int | None]:
    """The model a tiled command runs, with ``--backend`` and ``--precision`` applied: (model, precision choice,
    tile). ``--backend onnxruntime`` runs an ``.onnx`` ``--weights`` file (at most its export tile), or the model
    exported on the fly at ``tile``; it is fp32 on the CPU.
    Raises:
        CommandError with a one-line message.
    """
    if args.backend == "onnxruntime":
        if args.precision not in ("auto", "fp32") or device.type != "cpu":
            raise CommandError("--backend onnxruntime runs fp32 on the CPU; use --precision auto or fp32 and "
                               "--device cpu")
        try:
            if str(args.weights or "").endswith(".onnx"):
                model = OnnxRuntimeModel(args.weights)
                tile = model.tile if tile is None else min(tile, model.tile)
            else:
                if tile is None:
                    raise CommandError("--backend onnxruntime exports the model at a fixed tile size: pass --tile N")
                from ..export import export_onnx

                name = args.model or default
                model = OnnxRuntimeModel(export_onnx(load_model(args.model, args.weights, device, default,
                                                                getattr(args, "model_args", None)), None, name, tile))
        except (ImportError, ValueError) as exc:
            raise CommandError(one_line(exc)) from None
        return model, PrecisionChoice(args.precision, "fp32", "onnxruntime backend"), tile
    model = load_model(args.model, args.weights, device, default, getattr(args, "model_args", None))
    name = args.model or default or type(model).__name__
    model, choice = prepare_model(model, args.precision, device, name, probe_input(_model_channels(model)),
                                  forward=lambda m, x: run_tiled(m, x, device=device))
    return model, choice, tile


def _model_channels(model: nn.Module) -> int:
    return int(getattr(model, "in_chans", getattr(getattr(model, "backbone", None), "in_chans", 3)))


def process_image(model: nn.Module, image: ImageData, tile: int | None = None, overlap: int | None = None,
                  precision: str = "fp32", device: torch.device | None = None, progress=None) -> ImageData:
    """Run an image-to-image model on a decoded image; alpha is resized on its own (bicubic) and kept.

    Grayscale input to a 3-channel model is replicated and the result turned back to one channel (BT.601 luma);
    colour input to a 1-channel model is processed channel by channel. Returns pixels (C, s·H, s·W) in [0, 1] and
    the input's bit depth. ``progress(done, total)`` is called after each tile (see :func:`run_tiled`).
    """
    pixels = image.pixels
    channels = _model_channels(model)
    options = dict(tile=tile, overlap=overlap, precision=precision, device=device, progress=progress)
    if channels == 3 and pixels.shape[0] == 1:
        out = run_tiled(model, pixels.expand(3, -1, -1)[None], **options)[0]
        out = torch.tensordot(out.new_tensor(LUMA_BT601), out, dims=1)[None]
    elif channels == 1 and pixels.shape[0] == 3:
        out = run_tiled(model, pixels[:, None], **options)[:, 0]
    else:
        out = run_tiled(model, pixels[None], **options)[0]
    alpha = image.alpha
    if alpha is not None and alpha.shape[-2:] != out.shape[-2:]:
        alpha = F.interpolate(alpha[None], size=out.shape[-2:], mode="bicubic", align_corners=False)[0]
    return ImageData(out.clamp(0, 1), None if alpha is None else alpha.clamp(0, 1), image.bit_depth)


def _collect_jobs(inputs: list[str], output: str) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs. A single input file with an image suffix on ``output`` writes that file."""
    out = Path(output)
    if len(inputs) == 1 and not Path(inputs[0]).is_dir() and out.suffix.lower() in IMAGE_SUFFIXES \
            and not out.is_dir():
        return [(Path(inputs[0]), out)]
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_image_files(item)
            if not found:
                raise CommandError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            files += found
        else:
            files.append(item)
    return [(f, out / f"{f.stem}.png") for f in files]


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and its missing parents); returns the folders created, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    return missing


def run_image_to_image(args: argparse.Namespace, command: str) -> int:
    """Process every input of an image-to-image command (arguments from :func:`add_image_to_image_arguments`).

    Returns the exit code: 0 when every image was written, 1 otherwise (including setup errors, each reported as
    one line ``pixelforge COMMAND: error: ...`` on stderr). Outputs that cannot be written are found before the
    model is loaded; output folders are created when their first image is written, so a failed run leaves none.
    """
    from tqdm import tqdm

    def error(message: str) -> int:
        print(f"pixelforge {command}: error: {message}", file=sys.stderr)
        return 1

    try:
        jobs = _collect_jobs(args.inputs, args.output)
        for _, dst in jobs:
            check_writable(dst)
        device = resolve_device(args.device)
        overlap = args.tile_overlap
        if args.tile < 0 or (overlap is not None and (overlap < 0 or (args.tile and overlap >= args.tile))):
            raise CommandError(f"need --tile >= 0 and --tile-overlap in [0, --tile), got --tile {args.tile} and "
                               f"--tile-overlap {args.tile_overlap}")
        tile = args.tile or None
        model, choice, tile = load_runner(args, device, args.default_model, tile)
        tile, overlap, notes = plan_tiles(model, tile, args.tile_overlap)
        for note in notes:  # once for the run, not once per image
            print(f"pixelforge {command}: note: {note}", file=sys.stderr)
    except (CommandError, ImageIOError, ValueError) as exc:
        return error(one_line(exc))
    announce(choice, f"pixelforge {command}")
    for folder in {dst.parent for _, dst in jobs}:  # left by runs killed while writing
        remove_stale_temporaries(folder)

    failures, seen, created = [], {}, []
    bar = tqdm(jobs, desc=command, unit="img", disable=True if len(jobs) == 1 else None, file=sys.stderr)
    for src, dst in bar:
        try:
            key = dst.resolve()
            if key == src.resolve():
                raise CommandError(f"{src}: the output would overwrite the input; choose another -o")
            if key in seen:
                raise CommandError(f"{src}: {dst} is already written for {seen[key]} (same file name)")
            seen[key] = src
            image = read_image(src)
            result = process_image(model, image, tile, overlap, choice.precision, device)
            created += _make_folder(dst.parent)
            write_image(dst, result.pixels, result.alpha, result.bit_depth)
            if len(jobs) == 1:
                print(f"wrote {dst} ({result.pixels.shape[-1]}x{result.pixels.shape[-2]})")
        except (CommandError, ImageIOError) as exc:  # their messages name the file
            message = one_line(exc)
        except MemoryError as exc:  # a full-size buffer (the output's, a decoder's) that does not fit: tiles won't help
            message = f"{src}: {one_line(exc)}"
        except (RuntimeError, ValueError) as exc:  # NaN/inf output, out of memory, a model rejecting the size...
            message = f"{src}: {one_line(exc)}" + ("; try a smaller --tile" if "memory" in str(exc) else "")
        else:
            continue
        failures.append(src)
        bar.write(f"pixelforge {command}: error: {message}", file=sys.stderr)
    for folder in sorted(set(created), key=lambda p: len(p.parts), reverse=True):  # a failed run leaves none empty
        try:
            folder.rmdir()
        except OSError:  # not empty
            pass
    if len(jobs) > 1:
        done = len(jobs) - len(failures)
        print(f"wrote {done} of {len(jobs)} images to {Path(args.output)}")
        if failures:
            print(f"pixelforge {command}: {len(failures)} failed: {', '.join(map(str, failures))}", file=sys.stderr)
    return 1 if failures else 0


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed), or its type name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def add_upscale_parser(subparsers) -> argparse.ArgumentParser:
    """``pixelforge upscale INPUT... -o OUT [--model NAME] [--weights W] [--tile N --tile-overlap M] ...``."""
    parser = subparsers.add_parser("upscale", help="super-resolve images (files or folders)",
                                   description="Upscale images with a super-resolution model, tile by tile.")
    add_image_to_image_arguments(parser, default_model="cfsr_x4")
    parser.set_defaults(func=lambda args: run_image_to_image(args, "upscale"))
    return parser

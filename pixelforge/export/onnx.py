"""ONNX export of image models (at a fixed tile size) and classifiers (at their input size), opset 17.

Image models are traced at one tile size and batch 1: window attention, window padding, unfolds and relative-position
tables then have static shapes, and the tiled runner feeds every tile at that size (:class:`~pixelforge.infer.
onnx_backend.OnnxRuntimeModel` pads smaller ones and runs a batch image by image). Classifiers keep a dynamic batch
axis. The graph carries a ``pixelforge`` metadata entry
(JSON: model name, input size, upscale, spatial multiple, tile overlap) that the runtime wrapper reads. The exporter
is torch's TorchScript-based ``torch.onnx.export(dynamo=False)``, which needs no onnxscript.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx", "add_export_parser"]

OPSET = 17


def _input_size(model: nn.Module, tile: int | None) -> tuple[int, int, int]:
    """(C, H, W) of the exported input: the tile (rounded up to the model's spatial multiple) for image models,
    the pretrained input size for classifiers."""
    from ..infer.upscale import _model_channels

    if hasattr(model, "upscale"):
        if not tile or tile <= 0:
            raise ValueError("image models are exported at a fixed tile size: pass --tile N (e.g. 256)")
        multiple = int(getattr(model, "spatial_multiple", 1))
        tile = -(-tile // multiple) * multiple
        return _model_channels(model), tile, tile
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" not in cfg:
        raise ValueError(f"{type(model).__name__} has no input_size in its pretrained config; cannot export it")
    return tuple(cfg["input_size"])


def export_onnx(model: nn.Module, output: str | Path | None, name: str, tile: int | None = None,
                opset: int = OPSET) -> bytes:
    """Export ``model`` (fp32, CPU, eval) to ONNX; returns the serialized model and writes it to ``output`` if given.

    Args:
        model: an image model (has ``upscale``; exported at ``tile``×``tile``) or a classifier (its input size).
        name: the model's registered name, recorded in the metadata.
        tile: input side of image models (rounded up to ``model.spatial_multiple``).
    Raises:
        ImportError when the ``onnx`` package is missing; ValueError when no tile is given for an image model.
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the optional packages: pip install 'pixelforge[onnx]'") from None
    input_size = _input_size(model, tile)
    meta = {"model": name, "input_size": list(input_size), "torch": torch.__version__}
    for attr in ("upscale", "spatial_multiple", "tile_overlap"):
        if hasattr(model, attr):
            meta[attr] = int(getattr(model, attr))
    model = model.float().cpu().eval()
    buffer = io.BytesIO()
    image = hasattr(model, "upscale")
    meta["batch"] = 1 if image else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(model, (torch.rand(1, *input_size),), buffer, opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes=None if image else {"input": {0: "batch"}, "output": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "pixelforge", json.dumps(meta)
    data = proto.SerializeToString()
    if output is not None:
        from ..data.image_io import atomic_open

        with atomic_open(output, "wb") as f:
            f.write(data)
    return data


def _run_export(args: argparse.Namespace) -> int:
    from ..infer.precision import output_quality, probe_input
    from ..infer.upscale import CommandError, load_model, one_line

    try:
        if Path(args.output).suffix != ".onnx":
            raise ValueError(f"the output must be an .onnx file, got {args.output}")
        model = load_model(args.model, args.weights, torch.device("cpu"))
        data = export_onnx(model, args.output, args.model, args.tile, args.opset)
    except (CommandError, ValueError, ImportError, RuntimeError) as exc:
        print(f"pixelforge export: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pixelforge export: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    from ..infer.onnx_backend import OnnxRuntimeModel

    c, h, w = _input_size(model, args.tile)
    line = f"wrote {args.output} ({args.model}, input {c}x{h}x{w}, opset {args.opset})"
    try:
        runner = OnnxRuntimeModel(data)
    except ImportError:
        print(line + "; install onnxruntime to check it against PyTorch")
        return 0
    image = hasattr(model, "upscale")
    probe = probe_input(c, (h, w), batch=1 if image else 4)
    with torch.inference_mode():
        ref = model(probe)
    out = runner(probe)
    quality = output_quality(ref, out, "image" if image else "logits")
    check = f"{quality:.1f} dB PSNR" if image else f"top-1 agreement {100 * quality:.0f}%"
    print(f"{line}; ONNX Runtime vs PyTorch on a probe: {check}, max |diff| {float((ref - out).abs().max()):.2g}")
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """``pixelforge export MODEL -o model.onnx [--tile N] [--weights W] [--opset 17]``."""
    parser = subparsers.add_parser("export", help="export a model to ONNX (fixed tile size for image models)",
                                   description="Export a registered model with its weights to ONNX. Image models "
                                               "are exported at a fixed --tile size (window attention needs static "
                                               "shapes); run them with `pixelforge upscale --backend onnxruntime "
                                               "--weights model.onnx`.")
    parser.add_argument("model", help="registered model name, e.g. cfsr_x4 or cct_2_3x2_32")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output .onnx file")
    parser.add_argument("--weights", metavar="W", help="weights file (default: the model's pretrained weights)")
    parser.add_argument("--tile", type=int, default=256, metavar="N",
                        help="input tile side of image models (default 256; ignored for classifiers)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.set_defaults(func=_run_export)
    return parser

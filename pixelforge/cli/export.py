"""``pixelforge export MODEL -o model.onnx [--tile N] [--weights W] [--opset 17]``: ONNX export with a check against
PyTorch (:mod:`pixelforge.export`)."""
from __future__ import annotations

from pathlib import Path

import torch

from .common import EXIT_OK, fail

__all__ = ["add_parser"]


def _run(args) -> int:
    from ..export import export_onnx, input_size
    from ..infer.precision import output_quality, probe_input
    from ..infer.runner import RunnerError, load_model

    try:
        if Path(args.output).suffix != ".onnx":
            raise ValueError(f"the output must be an .onnx file, got {args.output}")
        model = load_model(args.model, args.weights, torch.device("cpu"))
        data = export_onnx(model, args.output, args.model, args.tile, args.opset)
    except (RunnerError, ValueError, ImportError, RuntimeError) as exc:
        return fail("export", exc)
    except OSError as exc:
        return fail("export", f"cannot write {args.output}: {exc.strerror or exc}")
    from ..infer.onnx_backend import OnnxRuntimeModel

    c, h, w = input_size(model, args.tile)
    line = f"wrote {args.output} ({args.model}, input {c}x{h}x{w}, opset {args.opset})"
    try:
        runner = OnnxRuntimeModel(data)
    except ImportError:
        print(line + "; install onnxruntime to check it against PyTorch")
        return EXIT_OK
    image = hasattr(model, "upscale")
    probe = probe_input(c, (h, w), batch=1 if image else 4)
    with torch.inference_mode():
        ref = model(probe)
    out = runner(probe)
    quality = output_quality(ref, out, "image" if image else "logits")
    check = f"{quality:.1f} dB PSNR" if image else f"top-1 agreement {100 * quality:.0f}%"
    print(f"{line}; ONNX Runtime vs PyTorch on a probe: {check}, max |diff| {float((ref - out).abs().max()):.2g}")
    return EXIT_OK


def add_parser(subparsers) -> None:
    """``pixelforge export MODEL -o model.onnx [--tile N] [--weights W] [--opset 17]``."""
    from ..export.onnx import OPSET

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
    parser.set_defaults(func=_run)

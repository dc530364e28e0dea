"""``pixelforge eval [--model NAME] [--weights W] --data DIR``: PSNR/SSIM (Y channel) of a super-resolution model
on a benchmark folder with the BasicSR protocol (:mod:`pixelforge.infer.evaluate`)."""
from __future__ import annotations

import json

from ..data.image_io import ImageIOError, atomic_open
from ..infer.evaluate import evaluate_sr, find_pairs
from ..infer.precision import NonFiniteOutputError, announce, resolve_device
from ..infer.runner import RunnerError, load_runner, model_name
from .common import EXIT_OK, add_backend_argument, add_device_argument, add_precision_argument, fail

__all__ = ["add_parser"]


def _run(args) -> int:
    try:
        if args.model is None and args.weights is None:
            raise RunnerError("pass --model NAME, --weights FILE or both")
        device = resolve_device(args.device)
        model, choice, tile = load_runner(args.model, args.weights, device, tile=args.tile or None,
                                          precision=args.precision, backend=args.backend)
        name = model_name(model, args.model)
        scale = args.scale or int(getattr(model, "upscale", 1))
        if scale != getattr(model, "upscale", 1):
            raise RunnerError(f"--scale {scale} does not match the model {name} (x{model.upscale})")
        pairs = find_pairs(args.data, scale)
        announce(choice, "pixelforge eval")
        result = evaluate_sr(model, pairs, scale, args.crop_border, tile, args.tile_overlap, choice.precision,
                             device, progress=True)
    except (RunnerError, ImageIOError, NonFiniteOutputError, ValueError, MemoryError) as exc:
        return fail("eval", exc)
    crop = scale if args.crop_border is None else args.crop_border
    width = max(8, *(len(k) for k in result["per_image"]))
    print(f"{name} on {args.data} x{scale} (Y channel, crop {crop})")
    print(f"{'image':<{width}}  {'PSNR (dB)':>10}  {'SSIM':>8}")
    for image, s in result["per_image"].items():
        print(f"{image:<{width}}  {s['psnr_y']:>10.4f}  {s['ssim_y']:>8.5f}")
    print(f"{'mean':<{width}}  {result['mean']['psnr_y']:>10.4f}  {result['mean']['ssim_y']:>8.5f}")
    if args.json:
        report = {"model": name, "weights": args.weights, "data": str(args.data), "scale": scale,
                  "crop_border": crop, "test_y_channel": True, "tile": tile, "backend": args.backend,
                  "precision": choice.precision, "precision_choice": choice.as_dict(), **result}
        try:
            with atomic_open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        except OSError as exc:
            return fail("eval", f"cannot write {args.json}: {exc.strerror or exc}")
    return EXIT_OK


def add_parser(subparsers) -> None:
    """``pixelforge eval [--model NAME] [--weights W] --data DIR [--scale S] [--json OUT] [--tile N] ...``."""
    parser = subparsers.add_parser("eval", help="PSNR/SSIM (Y channel) of an SR model on a benchmark folder",
                                   description="Evaluate a super-resolution model with the BasicSR protocol.")
    parser.add_argument("--model", help="registered model name, e.g. cfsr_x4 (default: the model a --weights file "
                                        "holds)")
    parser.add_argument("--weights", metavar="W", help="weights file (ours or official); default: the model's "
                                                       "pretrained weights")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="benchmark folder, e.g. sr-bench/Set5 (x{S}/*_LR.png + *_HR.png, or LR/ + HR/)")
    parser.add_argument("--scale", type=int, help="upscaling factor (default: the model's)")
    parser.add_argument("--crop-border", type=int, metavar="C", help="pixels ignored on each side (default: scale)")
    parser.add_argument("--json", metavar="OUT", help="also write the scores as JSON")
    parser.add_argument("--tile", type=int, default=0, metavar="N", help="tile size (default 0: whole images)")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="M",
                        help="tile overlap (default: the model's recommendation)")
    add_precision_argument(parser)
    add_device_argument(parser)
    add_backend_argument(parser)
    parser.set_defaults(func=_run)

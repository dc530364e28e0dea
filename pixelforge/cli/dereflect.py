"""``pixelforge dereflect INPUT... -o OUT``: single-image reflection removal of files or folders, tile by tile.

The image-to-image batch of ``upscale`` does the work (:func:`.image_to_image.run_image_to_image`): the tiled runner
bounds memory by the tile, not the image (a 3840x2160 photo stays well under 4 GiB on the CPU with RRFormer),
outputs are written atomically, and a bad input is reported on one line naming the file while the batch continues.
This command adds ``--vgg-weights`` (RRFormer's hypercolumn VGG-19); the default model is ``rrformer_small`` with its
bundled weights.
"""
from __future__ import annotations

from pathlib import Path

from .common import fail
from .image_to_image import add_image_to_image_arguments, run_image_to_image

__all__ = ["add_parser"]


def _run(args) -> int:
    if args.vgg_weights is not None:
        if not Path(args.vgg_weights).is_file():
            return fail("dereflect", f"VGG-19 weights file not found: {args.vgg_weights}")
        if args.model is not None and not args.model.startswith("rrformer"):
            return fail("dereflect", f"--vgg-weights applies to RRFormer models only, not '{args.model}'")
        args.model_args = {"vgg_weights": args.vgg_weights}
    return run_image_to_image(args, "dereflect")


def add_parser(subparsers) -> None:
    """``pixelforge dereflect INPUT... -o OUT [--model NAME] [--weights W] [--vgg-weights V] [--tile N] ...``."""
    parser = subparsers.add_parser("dereflect", help="remove reflections from photos (files or folders)",
                                   description="Remove reflections with RRFormer or another dereflection model "
                                               "(cfsr_dereflect, hat_s_dereflect, craft_dereflect), tile by tile.")
    add_image_to_image_arguments(parser, default_model="rrformer_small")
    parser.add_argument("--vgg-weights", metavar="V",
                        help="torchvision VGG-19 weights for RRFormer's hypercolumn (default: vgg19.safetensors / "
                             "vgg19.pth in $PIXELFORGE_HOME/weights, else a fixed-seed random VGG-19, with a warning)")
    parser.set_defaults(func=_run)

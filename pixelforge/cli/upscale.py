"""``pixelforge upscale INPUT... -o OUT``: super-resolve image files or folders, tile by tile."""
from __future__ import annotations

from .image_to_image import add_image_to_image_arguments, run_image_to_image

__all__ = ["add_parser"]


def add_parser(subparsers) -> None:
    """``pixelforge upscale INPUT... -o OUT [--model NAME] [--weights W] [--tile N --tile-overlap M] ...``."""
    parser = subparsers.add_parser("upscale", help="super-resolve images (files or folders)",
                                   description="Upscale images with a super-resolution model, tile by tile.")
    add_image_to_image_arguments(parser, default_model="cfsr_x4")
    parser.set_defaults(func=lambda args: run_image_to_image(args, "upscale"))

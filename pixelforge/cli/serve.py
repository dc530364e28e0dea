"""``pixelforge serve``: the local web page of :mod:`pixelforge.serve` (extra ``pixelforge[ui]``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, add_device_argument, fail

__all__ = ["add_parser"]


def _weights_option(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH with an existing file, got '{text}'")
    return name, Path(path).resolve()


def _run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import Settings, create_app
    except ImportError as exc:
        return fail("serve", f"the web page needs the optional packages: pip install 'pixelforge[ui]' ({exc})")
    from ..zoo import is_model

    unknown = [name for name, _ in args.weights if not is_model(name)]
    if unknown:
        return fail("serve", f"unknown model in --weights: {', '.join(unknown)}")
    if args.max_upload_mb <= 0 or args.max_pixels < 0:
        return fail("serve", "--max-upload-mb must be positive and --max-pixels at least 0")
    settings = Settings(host=args.host, max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                        max_pixels=args.max_pixels, device=args.device, weights=dict(args.weights))
    print(f"pixelforge serve: http://{args.host}:{args.port}  (Ctrl+C stops it and removes the uploads)")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def add_parser(subparsers) -> None:
    """``pixelforge serve [--host 127.0.0.1] [--port 7860] [--max-upload-mb 100] [--max-pixels N] ...``."""
    parser = subparsers.add_parser("serve", help="local web page: upscale, dereflect, generate (extra [ui])",
                                   description="Serve a web page for upscaling, reflection removal and generation "
                                               "on this machine's models (needs pip install 'pixelforge[ui]').")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--max-upload-mb", type=float, default=100, metavar="MB",
                        help="largest accepted upload, images and checkpoints alike (default 100)")
    parser.add_argument("--max-pixels", type=int, default=0, metavar="N",
                        help="largest image in pixels (default 0: Pillow's decompression-bomb limit, about 89 M)")
    add_device_argument(parser)
    parser.add_argument("--weights", type=_weights_option, action="append", default=[], metavar="MODEL=PATH",
                        help="a weights file on this machine for MODEL, offered without uploading (repeatable; "
                             "e.g. var_d16=var_d16.pth)")
    parser.set_defaults(func=_run)

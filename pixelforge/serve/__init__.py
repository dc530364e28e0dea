"""``pixelforge serve``: a local web page for upscaling, reflection removal and generation (extra ``pixelforge[ui]``).

    pip install -e ".[ui]" && pixelforge serve        # then open http://127.0.0.1:7860

Three tabs on the runners of the command line (``upscale``/``dereflect``'s ``load_runner`` and tiled runner,
``generate``'s VAR and diffusion paths), so the page writes the same pixels as the commands: Upscale / dereflect
(several images, before/after comparison at full resolution with zoom, per-file errors, downloads and a zip),
Generate (VAR, DiT + DiffScaler) and Models (the zoo with weights and bundled scores). The server is a small
Starlette app (:mod:`.app`) served by uvicorn; see :mod:`.app` for what a page can and cannot read.

Why not Gradio: it installs (gradio 6.31, 30 s from a local mirror) but pins Pillow < 13, so ``.[ui]`` would
downgrade the Pillow the image I/O is tested with, and brings pandas and 235 MB; its own upload cache and file
routes make "a per-visit folder, nothing else readable" harder to guarantee. Starlette (the ASGI layer under FastAPI
and Gradio) and uvicorn add about 1 MB and no constraint on the project's packages.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_serve_parser"]


def _weights_option(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH with an existing file, got '{text}'")
    return name, Path(path).resolve()


def _run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import Settings, create_app
    except ImportError as exc:
        print(f"pixelforge serve: error: the web page needs the optional packages: pip install 'pixelforge[ui]' "
              f"({exc})", file=sys.stderr)
        return 1
    from ..zoo import is_model

    unknown = [name for name, _ in args.weights if not is_model(name)]
    if unknown or args.max_upload_mb <= 0 or args.max_pixels < 0:
        problem = f"unknown model in --weights: {', '.join(unknown)}" if unknown else \
            "--max-upload-mb must be positive and --max-pixels at least 0"
        print(f"pixelforge serve: error: {problem}", file=sys.stderr)
        return 1
    settings = Settings(host=args.host, max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                        max_pixels=args.max_pixels, device=args.device, weights=dict(args.weights))
    print(f"pixelforge serve: http://{args.host}:{args.port}  (Ctrl+C stops it and removes the uploads)")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
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
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    parser.add_argument("--weights", type=_weights_option, action="append", default=[], metavar="MODEL=PATH",
                        help="a weights file on this machine for MODEL, offered without uploading (repeatable; "
                             "e.g. var_d16=var_d16.pth)")
    parser.set_defaults(func=_run)
    return parser

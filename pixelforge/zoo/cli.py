"""``pixelforge convert`` (official checkpoint → our safetensors) and ``pixelforge models`` (list the zoo)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .registry import create_model, list_models
from .weights import PACKAGE_WEIGHTS, pixelforge_home, save_weights

__all__ = ["add_convert_parser", "add_models_parser", "default_weights_status"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _run_convert(args: argparse.Namespace) -> int:
    out = Path(args.output)
    try:
        if out.suffix != ".safetensors":
            raise ValueError(f"the output must be a .safetensors file, got {out}")
        model = create_model(args.model, weights=args.checkpoint)
        save_weights(model, out, metadata={"pixelforge_model": args.model,
                                           "converted_from": Path(args.checkpoint).name})
    except (ValueError, CheckpointError, FileNotFoundError, TypeError) as exc:
        print(f"pixelforge convert: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pixelforge convert: error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    n = len(model.state_dict())
    print(f"wrote {out} ({n} tensors); load it with create_model('{args.model}', weights='{out}')")
    return 0


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """``pixelforge convert MODEL OFFICIAL_CHECKPOINT -o OUT.safetensors``."""
    parser = subparsers.add_parser("convert", help="convert an official checkpoint to pixelforge safetensors",
                                   description="Load an official checkpoint into a registered model (strictly) and "
                                               "save its weights under pixelforge's key names.")
    parser.add_argument("model", help="registered model name, e.g. cfsr_x4 (see `pixelforge models`)")
    parser.add_argument("checkpoint", help="official checkpoint (.pth/.pt/.ckpt, or .safetensors)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output .safetensors file")
    parser.set_defaults(func=_run_convert)
    return parser


def default_weights_status(name: str) -> str:
    """Where ``name``'s default weights are: ``-`` (none defined), ``$PIXELFORGE_HOME``, ``bundled``, ``missing``."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.file:
        return "-"
    if (pixelforge_home() / "weights" / cfg.file).is_file():
        return "$PIXELFORGE_HOME"
    return "bundled" if (PACKAGE_WEIGHTS / cfg.file).is_file() else "missing"


def _run_models(args: argparse.Namespace) -> int:
    pattern = args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*"
    names = list_models(pattern)
    if not names:
        print(f"pixelforge models: error: no model matches '{args.pattern}'", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  default weights")
    for name in names:
        print(f"{name:<{width}}  {default_weights_status(name)}")
    return 0


def add_models_parser(subparsers) -> argparse.ArgumentParser:
    """``pixelforge models [PATTERN]``: registered models and where their default weights are."""
    parser = subparsers.add_parser("models", help="list registered models",
                                   description="List registered models (shell-style PATTERN; a plain word matches "
                                               "as a substring) and whether their default weights are installed.")
    parser.add_argument("pattern", nargs="?", default="*", help="e.g. 'cfsr*' or 'x4'")
    parser.set_defaults(func=_run_models)
    return parser

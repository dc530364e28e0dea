"""``pixelforge convert MODEL OFFICIAL_CHECKPOINT -o OUT.safetensors``: an official checkpoint as pixelforge weights."""
from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, fail

__all__ = ["add_parser"]


def _run(args) -> int:
    from ..zoo import CheckpointError, create_model, save_weights

    out = Path(args.output)
    try:
        if out.suffix != ".safetensors":
            raise ValueError(f"the output must be a .safetensors file, got {out}")
        model = create_model(args.model, weights=args.checkpoint)
        save_weights(model, out, metadata={"pixelforge_model": args.model,
                                           "converted_from": Path(args.checkpoint).name})
    except (ValueError, CheckpointError, FileNotFoundError, TypeError) as exc:
        return fail("convert", exc)
    except OSError as exc:
        return fail("convert", f"cannot write {out}: {exc.strerror or exc}")
    n = len(model.state_dict())
    print(f"wrote {out} ({n} tensors); load it with create_model('{args.model}', weights='{out}')")
    return EXIT_OK


def add_parser(subparsers) -> None:
    """``pixelforge convert MODEL OFFICIAL_CHECKPOINT -o OUT.safetensors``."""
    parser = subparsers.add_parser("convert", help="convert an official checkpoint to pixelforge safetensors",
                                   description="Load an official checkpoint into a registered model (strictly) and "
                                               "save its weights under pixelforge's key names.")
    parser.add_argument("model", help="registered model name, e.g. cfsr_x4 (see `pixelforge models`)")
    parser.add_argument("checkpoint", help="official checkpoint (.pth/.pt/.ckpt, or .safetensors)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output .safetensors file")
    parser.set_defaults(func=_run)

"""``pixelforge dereflect INPUT... -o OUT``: single-image reflection removal of files or folders, tile by tile.

Every image goes through the shared tiled runner (:func:`pixelforge.infer.tiling.run_tiled`), so memory is bounded
by the tile, not by the image (a 3840x2160 image runs in well under 4 GiB on the CPU). Outputs are PNG files named
after the inputs (8 or 16 bits as the input; alpha passed through; grayscale stays grayscale), written atomically.
A bad input (missing, unreadable, not an image, zero-size) is reported in one line naming the file and the problem,
the batch continues, and the command ends with a summary and exit status 1; nothing is written for failed images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

__all__ = ["add_dereflect_parser", "load_dereflect_model"]

_PROG = "pixelforge dereflect"
_LUMA = (0.299, 0.587, 0.114)


class _UsageError(Exception):
    """A problem with the command as a whole (model, weights, output folder): reported once, nothing runs."""


def _training_config(weights: Path) -> dict | None:
    """The training config stored in a pixelforge-trained safetensors file (``config`` metadata), if any."""
    if weights.suffix != ".safetensors" or not weights.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta["config"]) if "config" in meta else None
    except Exception:  # not readable here: loading it below reports the problem
        return None


def load_dereflect_model(name: str | None, weights: str | None, vgg_weights: str | None = None):
    """Build a dereflection model with its weights.

    Args:
        name: a registered model (``rrformer``, ``cfsr_dereflect``, ...); may be omitted when ``weights`` is a file
            written by ``pixelforge train`` (its config names the model and its hyper-parameters).
        weights: weights file (ours or an official checkpoint); ``None`` uses the model's default weights.
        vgg_weights: torchvision VGG-19 file for RRFormer's hypercolumn.
    Raises:
        _UsageError with a one-line message.
    """
    import pixelforge

    args: dict = {}
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise _UsageError(f"weights file not found: {path}")
        cfg = _training_config(path)
        if cfg and isinstance(cfg.get("model"), dict):
            trained = cfg["model"].get("name")
            if name is None or name == trained:
                name, args = trained, dict(cfg["model"].get("args", {}))
    if name is None:
        raise _UsageError("--model is required (the weights file does not name its model)")
    if not pixelforge.zoo.is_model(name):
        raise _UsageError(f"unknown model '{name}'; dereflection models: "
                          f"{', '.join(pixelforge.list_models('*dereflect*') + pixelforge.list_models('rrformer*'))}")
    if vgg_weights is not None:
        if not Path(vgg_weights).is_file():
            raise _UsageError(f"VGG-19 weights file not found: {vgg_weights}")
        if not name.startswith("rrformer"):
            raise _UsageError(f"--vgg-weights applies to RRFormer models only, not '{name}'")
        args["vgg_weights"] = vgg_weights
    elif args.get("vgg_weights") and not Path(args["vgg_weights"]).is_file():
        raise _UsageError(f"the model was trained with VGG-19 weights {args['vgg_weights']}, which are not there; "
                          f"pass --vgg-weights")
    try:
        if weights is None:
            model = pixelforge.create_model(name, pretrained=True, **args)
        else:
            model = pixelforge.create_model(name, weights=weights, **args)
    except FileNotFoundError as exc:
        hint = "" if weights is not None else " (pass --weights FILE)"
        raise _UsageError(f"{str(exc).splitlines()[0]}{hint}") from None
    except (ValueError, TypeError, RuntimeError) as exc:
        raise _UsageError(str(exc).splitlines()[0]) from None
    if getattr(model, "upscale", 1) != 1:
        raise _UsageError(f"'{name}' changes the image size (x{model.upscale}); use a dereflection model")
    return model.eval()


def _collect_inputs(inputs: list[str]) -> list[Path]:
    """Files as given and the image files inside given folders, in order, without duplicates."""
    from ..data.image_io import list_image_files

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        files += list_image_files(path) if path.is_dir() else [path]
    return list(dict.fromkeys(files))


def _process(model, src: Path, dst: Path, args) -> str:
    from ..data.image_io import read_image, write_image
    from .tiling import run_tiled

    data = read_image(src)
    gray = data.pixels.shape[0] == 1
    rgb = data.pixels.expand(3, -1, -1) if gray else data.pixels
    out = run_tiled(model, rgb[None], tile=args.tile or None, overlap=args.overlap, precision=args.precision,
                    device=args.device)[0].clamp(0, 1)
    if gray:
        out = sum(w * c for w, c in zip(_LUMA, out))[None]
    write_image(dst, out, data.alpha, bit_depth=data.bit_depth)
    return f"{data.pixels.shape[2]}x{data.pixels.shape[1]}"


def _run(args) -> int:
    from ..data.image_io import ImageIOError
    from .precision import NonFiniteOutputError, resolve_device

    try:
        if args.tile < 0 or args.overlap < 0 or (args.tile and args.overlap >= args.tile):
            raise _UsageError(f"need 0 <= --overlap < --tile (got tile {args.tile}, overlap {args.overlap})")
        args.device = resolve_device(args.device)
        files = _collect_inputs(args.inputs)
        if not files:
            raise _UsageError("no input images (the given folders hold no image files)")
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise _UsageError(f"output {out_dir} exists and is not a folder")
        targets = [out_dir / f"{p.stem}.png" for p in files]
        clash = {t for t in targets if targets.count(t) > 1}
        if clash:
            raise _UsageError(f"several inputs would be written to {sorted(clash)[0]}; rename them or run separately")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load_dereflect_model(args.model, args.weights, args.vgg_weights).to(args.device)
        for w in caught:  # e.g. the random VGG-19 notice, as one line
            print(f"{_PROG}: warning: {w.message}", file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
    except (_UsageError, ValueError, OSError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2

    failures = []
    for src, dst in zip(files, targets):
        start = time.time()
        try:
            size = _process(model, src, dst, args)
        except (ImageIOError, NonFiniteOutputError, ValueError) as exc:
            message = str(exc) if str(src) in str(exc) else f"{src}: {exc}"
            print(f"{_PROG}: error: {message}", file=sys.stderr)
            failures.append(src)
            continue
        print(f"{src} -> {dst} ({size}, {time.time() - start:.1f} s)")
    if failures:
        print(f"{_PROG}: {len(failures)} of {len(files)} images failed: {', '.join(map(str, failures))}",
              file=sys.stderr)
        return 1
    return 0


def add_dereflect_parser(sub) -> None:
    """Add the ``dereflect`` sub-command."""
    p = sub.add_parser("dereflect", help="remove reflections from photos (RRFormer and other dereflection models)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("-o", "--output", required=True, help="output folder (created); outputs are <name>.png")
    p.add_argument("--model", default=None,
                   help="model name (rrformer, cfsr_dereflect, ...); optional with weights from pixelforge train")
    p.add_argument("--weights", default=None, help="weights file (ours .safetensors, or an official checkpoint)")
    p.add_argument("--vgg-weights", default=None,
                   help="torchvision VGG-19 weights for RRFormer's hypercolumn (else $PIXELFORGE_HOME/weights, "
                        "else a random VGG-19 with a warning)")
    p.add_argument("--tile", type=int, default=512, help="tile side in pixels, 0 for the whole image (default 512)")
    p.add_argument("--overlap", type=int, default=64, help="pixels shared by neighbouring tiles (default 64)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_run)

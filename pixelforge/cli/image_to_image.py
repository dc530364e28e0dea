"""What the image-to-image commands (``upscale``, ``dereflect``) share: their arguments and the batch of files.

Inputs are files or folders (the images directly inside, by suffix); outputs are named after the inputs in the
``-o`` folder (``NAME[_SUFFIX].EXT``, ``--suffix``/``--ext`` as in Real-ESRGAN), or the ``-o`` file itself for a
single input file. Outputs keep the input's alpha (``--alpha``), bit depth (16-bit PNG), ICC profile and EXIF
(orientation reset: the pixels are written upright). A file that fails is reported on one stderr line and leaves no
output; the others are still processed and a summary names the failures (exit code 2 when some images were
written, 1 when none was). Warnings are single ``pixelforge COMMAND: warning: ...`` lines.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..data.image_io import (IMAGE_SUFFIXES, ImageIOError, check_writable, list_image_files, read_image,
                             remove_stale_temporaries, write_image)
from ..infer.precision import announce, resolve_device
from ..infer.runner import RunnerError, load_runner, one_line, process_image
from ..infer.tiling import auto_tile, plan_tiles
from .common import (EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, add_backend_argument, add_device_argument,
                     add_precision_argument, fail)

__all__ = ["add_image_to_image_arguments", "collect_jobs", "make_folder", "run_image_to_image"]

EXTENSIONS = ("auto", "png", "jpg", "webp")


def _tile(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a tile size in pixels or 'auto', got '{text}'") from None


def _outscale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive scale, got '{text}'")
    return value


def add_image_to_image_arguments(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """INPUT... -o OUT --model --weights --tile --tile-overlap --precision --device --backend."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder (created if needed), or an output image file for a single input file")
    parser.add_argument("--model", help="registered model name (see `pixelforge models`); default: the model a "
                                        "--weights file holds (pixelforge metadata, or an official layout)"
                                        + (f"; without --weights, {default_model}" if default_model else ""))
    parser.set_defaults(default_model=default_model)
    parser.add_argument("--weights", metavar="W",
                        help="weights file (pixelforge safetensors, an official checkpoint, or with the spandrel "
                             "extra any layout spandrel knows); default: the model's bundled pretrained weights")
    parser.add_argument("--tile", type=_tile, default=512, metavar="N|auto",
                        help="tile size in input pixels; 0 processes whole images at once; auto: the largest tile "
                             "the free memory of the device allows (default 512). On a CUDA out-of-memory error the "
                             "tile is halved and the image retried")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="M",
                        help="pixels shared by neighbouring tiles, blended (default: the model's receptive-field "
                             "recommendation, e.g. 80 for HAT, 32 for most others)")
    parser.add_argument("--outscale", type=_outscale, metavar="S",
                        help="final scale of the output relative to the input (e.g. 3.5), reached by a Lanczos "
                             "resize after the model (default: the model's scale)")
    parser.add_argument("--suffix", default="", help="added to output names in a folder: NAME_SUFFIX.EXT "
                                                     "(default: none)")
    parser.add_argument("--ext", choices=EXTENSIONS, default="png",
                        help="output format in a folder: png (default), jpg, webp, or auto (the input's format); "
                             "images with alpha are written as PNG when the format has no alpha (jpg)")
    parser.add_argument("--alpha", choices=("bicubic", "model"), default="bicubic",
                        help="how an alpha channel is upscaled: bicubic (default) or by the model, as a gray image")
    add_precision_argument(parser)
    add_device_argument(parser)
    add_backend_argument(parser)


def collect_jobs(inputs: list[str], output: str, suffix: str = "", ext: str = "png") -> list[tuple[Path, Path]]:
    """(input file, output file) pairs. A single input file with an image suffix on ``output`` writes that file;
    otherwise outputs are ``output/NAME[_suffix].ext`` (``ext`` ``auto``: the input's own suffix)."""
    out = Path(output)
    if len(inputs) == 1 and not Path(inputs[0]).is_dir() and out.suffix.lower() in IMAGE_SUFFIXES \
            and not out.is_dir():
        return [(Path(inputs[0]), out)]
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_image_files(item)
            if not found:
                raise RunnerError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            files += found
        else:
            files.append(item)
    tail = f"_{suffix}" if suffix else ""
    return [(f, out / f"{f.stem}{tail}{f.suffix.lower() if ext == 'auto' else '.' + ext}") for f in files]


def make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and its missing parents); returns the folders created, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunnerError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    return missing


def run_image_to_image(args: argparse.Namespace, command: str) -> int:
    """Process every input of an image-to-image command (arguments from :func:`add_image_to_image_arguments`).

    Returns the exit code: 0 when every image was written, 2 when some were, 1 when none was (setup errors are
    one line ``pixelforge COMMAND: error: ...`` on stderr). Outputs that cannot be written are found before the
    model is loaded; output folders are created when their first image is written, so a failed run leaves none.
    """
    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"pixelforge {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():  # e.g. RRFormer's random VGG-19 notice or an out-of-memory retry, as one line
        warnings.simplefilter("default")
        warnings.showwarning = one_line_warning
        return _run_jobs(args, command)


def _run_jobs(args: argparse.Namespace, command: str) -> int:
    from tqdm import tqdm

    try:
        jobs = collect_jobs(args.inputs, args.output, args.suffix, args.ext)
        for _, dst in jobs:
            check_writable(dst)
        device = resolve_device(args.device)
        overlap, tile = args.tile_overlap, None if args.tile in (0, "auto") else args.tile
        if (tile is not None and tile < 0) or (overlap is not None and (overlap < 0 or (tile and overlap >= tile))):
            raise RunnerError(f"need --tile >= 0 and --tile-overlap in [0, --tile), got --tile {args.tile} and "
                              f"--tile-overlap {args.tile_overlap}")
        model, choice, tile = load_runner(args.model, args.weights, device, default=args.default_model, tile=tile,
                                          precision=args.precision, backend=args.backend,
                                          model_args=getattr(args, "model_args", None))
        if args.tile == "auto":
            tile = auto_tile(model, device)
            print(f"pixelforge {command}: note: --tile auto chose tile {tile}", file=sys.stderr)
        tile, overlap, notes = plan_tiles(model, tile, args.tile_overlap)
        for note in notes:  # once for the run, not once per image
            print(f"pixelforge {command}: note: {note}", file=sys.stderr)
    except (RunnerError, ImageIOError, ValueError) as exc:
        return fail(command, exc)
    announce(choice, f"pixelforge {command}")
    for folder in {dst.parent for _, dst in jobs}:  # left by runs killed while writing
        remove_stale_temporaries(folder)

    failures, seen, created = [], {}, []
    bar = tqdm(jobs, desc=command, unit="img", disable=True if len(jobs) == 1 else None, file=sys.stderr)
    for src, dst in bar:
        try:
            key = dst.resolve()
            if key == src.resolve():
                raise RunnerError(f"{src}: the output would overwrite the input; choose another -o")
            if key in seen:
                raise RunnerError(f"{src}: {dst} is already written for {seen[key]} (same file name)")
            seen[key] = src
            image = read_image(src)
            result = process_image(model, image, tile, overlap, choice.precision, device, alpha=args.alpha,
                                   outscale=args.outscale)
            if result.alpha is not None and dst.suffix.lower() in (".jpg", ".jpeg") and dst != Path(args.output):
                dst = dst.with_suffix(".png")  # JPEG has no alpha: as Real-ESRGAN, such images are written as PNG
            created += make_folder(dst.parent)
            write_image(dst, result.pixels, result.alpha, result.bit_depth, icc_profile=result.icc_profile,
                        exif=result.exif)
            if len(jobs) == 1:
                print(f"wrote {dst} ({result.pixels.shape[-1]}x{result.pixels.shape[-2]})")
        except (RunnerError, ImageIOError) as exc:  # their messages name the file
            message = one_line(exc)
        except MemoryError as exc:  # a full-size buffer (the output's, a decoder's) that does not fit: tiles won't help
            message = f"{src}: {one_line(exc)}"
        except (RuntimeError, ValueError) as exc:  # NaN/inf output, out of memory, a model rejecting the size...
            message = f"{src}: {one_line(exc)}" + ("; try a smaller --tile" if "memory" in str(exc) else "")
        else:
            continue
        failures.append(src)
        bar.write(f"pixelforge {command}: error: {message}", file=sys.stderr)
    for folder in sorted(set(created), key=lambda p: len(p.parts), reverse=True):  # a failed run leaves none empty
        try:
            folder.rmdir()
        except OSError:  # not empty
            pass
    if len(jobs) > 1:
        done = len(jobs) - len(failures)
        print(f"wrote {done} of {len(jobs)} images to {Path(args.output)}")
        if failures:
            print(f"pixelforge {command}: {len(failures)} failed: {', '.join(map(str, failures))}", file=sys.stderr)
    return EXIT_OK if not failures else EXIT_PARTIAL if len(failures) < len(jobs) else EXIT_ERROR

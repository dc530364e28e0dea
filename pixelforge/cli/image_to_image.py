"""What the image-to-image commands (``upscale``, ``dereflect``) share: their arguments and the batch of files.

Inputs are files or folders (the images directly inside, by suffix); outputs are PNG files named after the inputs in
the ``-o`` folder, or the ``-o`` file itself for a single input file. A file that fails is reported on one stderr
line and leaves no output; the others are still processed and a summary names the failures (exit code 2 when some
images were written, 1 when none was).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.image_io import (IMAGE_SUFFIXES, ImageIOError, check_writable, list_image_files, read_image,
                             remove_stale_temporaries, write_image)
from ..infer.precision import announce, resolve_device
from ..infer.runner import RunnerError, load_runner, one_line, process_image
from ..infer.tiling import plan_tiles
from .common import (EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, add_backend_argument, add_device_argument,
                     add_precision_argument, fail)

__all__ = ["add_image_to_image_arguments", "collect_jobs", "make_folder", "run_image_to_image"]


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
    parser.add_argument("--tile", type=int, default=512, metavar="N",
                        help="tile size in input pixels; 0 processes whole images at once (default 512)")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="M",
                        help="pixels shared by neighbouring tiles, blended (default: the model's receptive-field "
                             "recommendation, e.g. 80 for HAT, 32 for most others)")
    add_precision_argument(parser)
    add_device_argument(parser)
    add_backend_argument(parser)


def collect_jobs(inputs: list[str], output: str) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs. A single input file with an image suffix on ``output`` writes that file."""
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
    return [(f, out / f"{f.stem}.png") for f in files]


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

    Returns the exit code: 0 when every image was written, 1 otherwise (including setup errors, each reported as
    one line ``pixelforge COMMAND: error: ...`` on stderr). Outputs that cannot be written are found before the
    model is loaded; output folders are created when their first image is written, so a failed run leaves none.
    """
    from tqdm import tqdm

    try:
        jobs = collect_jobs(args.inputs, args.output)
        for _, dst in jobs:
            check_writable(dst)
        device = resolve_device(args.device)
        overlap = args.tile_overlap
        if args.tile < 0 or (overlap is not None and (overlap < 0 or (args.tile and overlap >= args.tile))):
            raise RunnerError(f"need --tile >= 0 and --tile-overlap in [0, --tile), got --tile {args.tile} and "
                               f"--tile-overlap {args.tile_overlap}")
        tile = args.tile or None
        model, choice, tile = load_runner(args.model, args.weights, device, default=args.default_model, tile=tile,
                                          precision=args.precision, backend=args.backend,
                                          model_args=getattr(args, "model_args", None))
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
            result = process_image(model, image, tile, overlap, choice.precision, device)
            created += make_folder(dst.parent)
            write_image(dst, result.pixels, result.alpha, result.bit_depth)
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

"""The work behind the page, on the command-line runners: upscale / dereflect and generate, one job at a time.

A job runs in the server's single worker thread and reports through its :class:`Job` (state, per-tile progress,
one entry per input or sample), which the page polls. Nothing here knows about HTTP: files come in as paths inside
the visit's folder and go out as paths registered with the visit (``register(path, download name) -> url``).
"""
from __future__ import annotations

import secrets
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Job", "UpscaleRequest", "GenerateRequest", "run_upscale", "run_generate", "check_pixel_limit"]

Register = Callable[[Path, str], str]  # (file in the visit folder, download name) -> URL


class Job:
    """The state of one job, written by the worker thread and read (as :meth:`snapshot`) by the page.

    ``names`` maps the server's copies of uploads (paths) to the names the user gave them: messages and errors
    name the user's files, never the server's folders.
    """

    def __init__(self, kind: str, names: dict[Path, str] | None = None):
        self.id, self.kind = secrets.token_hex(8), kind
        self._names = sorted(((str(p), str(p.name), n) for p, n in (names or {}).items()), key=lambda t: -len(t[0]))
        self._lock = threading.Lock()
        self._state = {"id": self.id, "kind": kind, "state": "queued", "message": "", "notes": [], "items": [],
                       "progress": None, "zip": None, "grid": None}

    def _public(self, value):
        if isinstance(value, dict):
            return {k: self._public(v) if k in ("error", "message") else v for k, v in value.items()}
        if isinstance(value, str):
            for path, file, name in self._names:
                value = value.replace(path, name).replace(file, name)
        return value

    def update(self, **fields) -> None:
        with self._lock:
            self._state.update({k: self._public(v) if k == "message" else v for k, v in fields.items()})

    def add(self, key: str, value) -> None:
        """Append ``value`` to the list ``key`` (``items`` or ``notes``)."""
        with self._lock:
            self._state[key] = [*self._state[key], self._public(value)]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._state)

    @property
    def finished(self) -> bool:
        return self.snapshot()["state"] in ("done", "failed")


@dataclass
class UpscaleRequest:
    """Inputs as (path in the visit folder, name shown) pairs; the options of ``pixelforge upscale``."""

    inputs: list[tuple[Path, str]]
    model: str | None
    weights: Path | None
    tile: int
    tile_overlap: int | None
    precision: str
    outscale: float | None
    device: str
    max_pixels: int


@dataclass
class GenerateRequest:
    """The options of ``pixelforge generate`` for one model; ``weights`` are paths (uploaded or server files)."""

    model: str
    weights: list[Path]
    vae_weights: Path | None
    classes: str
    n: int
    seed: int
    device: str
    allowed_roots: list[Path]  # folders a weights file may name its tokenizer in (the visit's, the weights dirs)
    options: dict = field(default_factory=dict)  # other generate options: precision, cfg, top_k, top_p (VAR),
    # task, scheduler, steps, guidance (diffusion)


def check_pixel_limit(path: Path, name: str, limit: int) -> None:
    """Refuse an image with more than ``limit`` pixels from its header, before anything is decoded."""
    from PIL import Image

    from ..data.image_io import ImageReadError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception:  # not an image Pillow knows, a decompression bomb...: read_image reports it properly
        return
    if width * height > limit:
        raise ImageReadError(name, f"{width}x{height} is {width * height:,} pixels, over this server's limit of "
                                   f"{limit:,} (pixelforge serve --max-pixels)")


def _zip(files: list[tuple[Path, str]], dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive:  # PNGs are already compressed
        for path, name in files:
            archive.write(path, name)
    return dest


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, suffix = name.rpartition(".")
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{stem}-{k}{dot}{suffix}", k + 1
    taken.add(candidate)
    return candidate


def run_upscale(job: Job, req: UpscaleRequest, out_dir: Path, register: Register) -> None:
    """Load the model as ``pixelforge upscale`` does (``load_runner``), then process each input: a bad file is
    reported on its own item, the others are still processed. Results are PNG files as the command writes them."""
    from ..data.image_io import ImageIOError, read_image, write_image
    from ..infer.precision import resolve_device
    from ..infer.runner import RunnerError, load_runner, model_name, one_line, process_image

    job.update(state="running", message="loading the model")
    try:
        if req.tile < 0 or (req.tile_overlap is not None and not 0 <= req.tile_overlap < max(req.tile, 1)):
            raise RunnerError(f"need tile >= 0 and overlap in [0, tile), got tile {req.tile} and overlap "
                              f"{req.tile_overlap}")
        device = resolve_device(req.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, choice, tile = load_runner(req.model, None if req.weights is None else str(req.weights), device,
                                              tile=req.tile or None, precision=req.precision)
        for w in caught:
            job.add("notes", " ".join(str(w.message).split()))
    except (RunnerError, ValueError) as exc:
        job.update(state="failed", message=one_line(exc))
        return
    name = model_name(model, req.model)
    job.update(message=f"{name}, precision {choice.precision} ({choice.reason})")
    done, taken = [], set()
    for index, (path, shown) in enumerate(req.inputs):
        job.update(progress={"image": index + 1, "images": len(req.inputs), "name": shown, "tile": 0, "tiles": 0})
        try:
            check_pixel_limit(path, shown, req.max_pixels)
            image = read_image(path)
            before = write_image(out_dir / f"{path.stem}-before.png", image.pixels, image.alpha)

            def progress(tile_done: int, tiles: int, index=index) -> None:
                job.update(progress={"image": index + 1, "images": len(req.inputs), "name": shown,
                                     "tile": tile_done, "tiles": tiles})

            result = process_image(model, image, tile, req.tile_overlap, choice.precision, device, progress,
                                   outscale=req.outscale)  # as `pixelforge upscale --outscale` (Lanczos)
            pixels = result.pixels
            download = _unique(f"{Path(shown).stem}-{name}.png", taken)
            after = write_image(out_dir / f"{path.stem}-after.png", pixels, result.alpha, result.bit_depth,
                                icc_profile=result.icc_profile, exif=result.exif)
        except ImageIOError as exc:  # the message names the uploaded file, not the server's copy
            job.add("items", {"name": shown, "error": f"{shown}: {exc.problem}"})
            continue
        except (RuntimeError, ValueError) as exc:  # NaN/inf output, out of memory, a model rejecting the size...
            hint = "; try a smaller tile" if "memory" in str(exc) else ""
            job.add("items", {"name": shown, "error": f"{shown}: {one_line(exc)}{hint}"})
            continue
        done.append((after, download))
        job.add("items", {"name": shown, "before": register(before, f"{Path(shown).stem}-input.png"),
                          "after": register(after, download), "download": download,
                          "size_in": list(image.pixels.shape[-1:-3:-1]), "size_out": list(pixels.shape[-1:-3:-1])})
    zip_url = register(_zip(done, out_dir / f"results-{job.id}.zip"), "pixelforge-results.zip") if done else None
    failed = len(req.inputs) - len(done)
    job.update(state="done", zip=zip_url, progress=None,
               message=f"{len(done)} of {len(req.inputs)} images done" + (f", {failed} failed" if failed else ""))


def _check_tokenizer_path(weights: Path, allowed: list[Path]) -> None:
    """A training config names its tokenizer by path: only files inside the page's own folders are read."""
    from ..zoo import stored_training_config

    named = stored_training_config(weights).get("vqvae", {}).get("weights")
    if named and not any(Path(named).resolve().is_relative_to(root.resolve()) for root in allowed):
        raise ValueError(f"{weights.name} names its tokenizer weights by a path on the server; upload the tokenizer "
                         f"file as well")


def run_generate(job: Job, req: GenerateRequest, out_dir: Path, register: Register) -> None:
    """Generate with ``pixelforge generate``'s VAR or diffusion path; a grid plus every sample as a PNG."""
    from ..data.image_io import ImageIOError, write_image
    from ..cli.generate import options_from_args
    from ..data.grid import make_grid
    from ..generative.generate import generate, is_var
    from ..infer.runner import one_line
    from ..zoo import pretrained_status
    from .catalog import cli_args

    job.update(state="running", message=f"generating with {req.model}")
    try:
        if not 1 <= req.n <= 64:
            raise ValueError("the number of images per class must be between 1 and 64")
        if not req.weights and pretrained_status(req.model) in ("-", "missing"):
            raise ValueError(f"no weights for {req.model}: its bundled weights are not installed; upload "
                             f"a weights file (a VAR model also needs its tokenizer) or start the page with "
                             f"`pixelforge serve --weights {req.model}=PATH`")
        args = cli_args("generate", ["--model", req.model])
        args.weights = [str(w) for w in req.weights] or None
        args.vae_weights = None if req.vae_weights is None else str(req.vae_weights)
        args.n, args.seed, args.device = req.n, req.seed, req.device
        for key, value in req.options.items():
            setattr(args, key, value)
        args.classes = req.classes
        options = options_from_args(args)
        if is_var(req.model) and req.vae_weights is None and req.weights:
            _check_tokenizer_path(req.weights[0], req.allowed_roots)
        images, labels, _ = generate(options)
        nrow = args.n if options.classes and len(options.classes) > 1 else min(len(images), 8)
        grid = write_image(out_dir / f"grid-{job.id}.png", make_grid(images, nrow))
        files = []
        for i, (image, label) in enumerate(zip(images, labels)):
            name = f"{req.model}-s{req.seed}-{i:03d}" + (f"-c{label}" if label >= 0 else "") + ".png"
            files.append((write_image(out_dir / f"sample-{job.id}-{i:03d}.png", image), name))
            job.add("items", {"name": name, "url": register(files[-1][0], name), "label": int(label)})
    except (ValueError, FileNotFoundError, ImageIOError, RuntimeError) as exc:
        job.update(state="failed", message=one_line(exc))
        return
    job.update(state="done", grid=register(grid, f"{req.model}-grid.png"),
               zip=register(_zip(files, out_dir / f"samples-{job.id}.zip"), f"{req.model}-samples.zip"),
               message=f"{len(files)} images from {req.model}")

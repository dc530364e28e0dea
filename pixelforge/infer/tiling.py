"""The tiled image-to-image runner: any model mapping (B, C, H, W) to (B, C', s·H, s·W), on images of any size.

Tiles overlap and are blended with separable weights that fade each tile out towards the edges it shares with a
neighbour: over the overlap, a tile's weight is 0 on the outer quarter (the pixels that see the tile border) and
rises as sin² over the middle half. The weights are normalised per axis to sum to 1, so the output accumulator is the
only full-size buffer and memory grows with the tile, not the image. Whole-image inference (``tile=None``) is the same
code with a single tile, and returns exactly ``model(image)``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..vision.dense import DenseImageModel
from .precision import autocast, check_finite

__all__ = ["run_tiled", "tile_starts", "plan_tiles", "auto_tile", "MIN_TILE", "MAX_AUTO_TILE", "OutputTooLargeError"]

MIN_TILE = 16  # smaller tiles save no memory and multiply the model calls (per-call overhead would dominate)
MAX_AUTO_TILE = 1024  # --tile auto never goes beyond: larger tiles gain little and delay the first progress


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with at least ``overlap`` shared pixels.

    The last tile is aligned to the end, so every tile has the full length (when ``size >= tile``).
    """
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


class OutputTooLargeError(MemoryError):
    """The full-size output buffer of a tiled run does not fit in memory (a smaller tile does not shrink it)."""


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _output_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """A zeroed float32 CPU buffer of ``shape`` (B, C, H, W), or :class:`OutputTooLargeError` naming the output size
    when it exceeds the available memory or its allocation fails."""
    nbytes = 4 * math.prod(shape)
    available = _available_memory()
    problem = None
    if available is not None and nbytes > available:
        problem = f"only {available / 2 ** 30:.1f} GiB of memory is available"
    else:
        try:
            return torch.zeros(shape)
        except RuntimeError as exc:  # the allocator's out-of-memory error
            problem = f"allocating it failed ({' '.join(str(exc).split())[:120]})"
    raise OutputTooLargeError(f"the {shape[-1]}x{shape[-2]} output needs {nbytes / 2 ** 30:.1f} GiB for its "
                              f"full-size float32 buffer and {problem}; a smaller tile does not reduce it (process a "
                              f"smaller or cropped image)")


def _bytes_per_pixel(model: nn.Module, device: torch.device) -> float:
    """Memory one input pixel costs in a forward: measured on CUDA (peak allocation of a 64x64 probe, batch 1),
    estimated on the CPU as 16 live float32 maps of the model's widest layer, inputs included (the largest of the
    first two sides of its 2-D and 4-D weights, parameters or buffers: no peak counter there)."""
    if device.type == "cuda":
        multiple = int(getattr(model, "spatial_multiple", 1))
        side = -(-64 // multiple) * multiple
        probe = torch.rand(1, int(getattr(model, "in_chans", 3)), side, side, device=device)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            _forward(model, probe, multiple, int(getattr(model, "upscale", 1)))
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / side ** 2
    widest = max((max(t.shape[:2]) for t in model.state_dict().values() if t.ndim in (2, 4)), default=64)
    return 4.0 * 16 * widest


def auto_tile(model: nn.Module, device: torch.device | str, free_bytes: int | None = None) -> int:
    """``--tile auto``: the largest tile whose forward should fit in half the free memory of ``device`` (CUDA:
    ``mem_get_info``; CPU: ``MemAvailable``), a multiple of ``model.spatial_multiple`` in
    [:data:`MIN_TILE`, :data:`MAX_AUTO_TILE`]. Memory per pixel: :func:`_bytes_per_pixel`. A forward that still runs
    out of CUDA memory is retried with half the tile by the image runner."""
    device = torch.device(device)
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _available_memory()
    multiple = int(getattr(model, "spatial_multiple", 1))
    if free_bytes is None:  # unknown: the default of the commands
        return -(-512 // multiple) * multiple
    side = int(math.sqrt(free_bytes / 2 / _bytes_per_pixel(model, device)))
    side = min(max(side, MIN_TILE), MAX_AUTO_TILE)
    return max(side // multiple, 1) * multiple


def plan_tiles(model: nn.Module, tile: int | None, overlap: int | None = None) -> tuple[int | None, int, list[str]]:
    """The tile side and overlap :func:`run_tiled` uses for ``model``, and notes on what was changed.

    The tile is rounded up to ``model.spatial_multiple`` and raised to the model's minimum (:data:`MIN_TILE`, or
    the multiple when larger). The overlap (``None``: the model's ``tile_overlap``, default 16) is rounded up to the
    multiple and capped at half the tile, so tiles always advance by at least half their side: a small tile can
    never collapse the stride into a crawl of one-pixel steps.

    Returns:
        (tile or None for whole images, overlap, notes): each note is one sentence saying what was raised or
        reduced and why (empty when the arguments were used as given).
    Raises:
        ValueError: ``tile`` < 1, or an explicit ``overlap`` outside [0, tile).
    """
    if tile is None:
        return None, 0, []
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if overlap is not None and not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got {overlap} with tile {tile}")
    multiple = int(getattr(model, "spatial_multiple", 1))
    notes = []
    wanted = int(getattr(model, "tile_overlap", 16)) if overlap is None else overlap
    minimum = -(-max(MIN_TILE, multiple) // multiple) * multiple
    if tile < minimum:
        notes.append(f"tile {tile} raised to {minimum}, the smallest tile for this model")
        tile = minimum
    tile = -(-tile // multiple) * multiple
    used = min(-(-wanted // multiple) * multiple, tile // 2 // multiple * multiple)
    if used < wanted:
        source = "the model's" if overlap is None else "the"
        notes.append(f"{source} tile overlap {wanted} reduced to {used} for tile {tile} (tiles must advance by at "
                     f"least half their size)")
    return tile, used, notes


def _ramp_weights(starts: list[int], length: int, size: int, overlap: int, scale: int) -> list[torch.Tensor]:
    """Per-tile 1-D output weights along one axis, normalised so that they sum to 1 at every output pixel."""
    n, ov = length * scale, overlap * scale
    ramp = None
    if ov:  # 0 over the outer quarter of the overlap (the least accurate pixels), sin² rise over the middle half
        margin = ov // 4
        ramp = torch.ones(ov, dtype=torch.float64)
        ramp[:margin] = 0
        k = torch.arange(ov - 2 * margin, dtype=torch.float64)
        ramp[margin:ov - margin] = torch.sin(0.5 * math.pi * (k + 0.5) / (ov - 2 * margin)) ** 2
    weights, total = [], torch.zeros(size * scale, dtype=torch.float64)
    for start in starts:
        w = torch.ones(n, dtype=torch.float64)
        if ov and start > 0:
            w[:ov] = ramp
        if ov and start + length < size:
            w[-ov:] = torch.minimum(w[-ov:], ramp.flip(0))
        total[start * scale:start * scale + n] += w
        weights.append(w)
    return [(w / total[s * scale:s * scale + n]).float() for w, s in zip(weights, starts)]


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad x bottom/right to ``multiple`` (reflect, or replicate when too small)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")


def _forward(model: nn.Module, x: torch.Tensor, multiple: int, scale: int) -> torch.Tensor:
    """model(x), padding x bottom/right to ``multiple`` (:func:`_pad_to`) for models that do not pad themselves (a
    :class:`DenseImageModel` applies its official padding), then cropping the output back."""
    h, w = x.shape[-2:]
    if isinstance(model, DenseImageModel):
        return model(x)
    return model(_pad_to(x, multiple))[..., : h * scale, : w * scale]


def _redo_tile(model: nn.Module, patch: torch.Tensor, multiple: int, scale: int, device) -> tuple[torch.Tensor, str]:
    """A tile whose fp16 output was not finite, again in bf16 (same speed class, fp32's range) and, if still not
    finite, in fp32: (output, precision used)."""
    kind = torch.device(device).type
    bf16 = kind == "cpu" or torch.cuda.is_bf16_supported()
    for used in (("bf16",) if bf16 else ()) + ("fp32",):
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=used == "bf16"):
            res = _forward(model, patch, multiple, scale).float()
        if torch.isfinite(res).all():
            break
    return res, used


def run_tiled(model: nn.Module, image: torch.Tensor, tile: int | None = None, overlap: int | None = None,
              precision: str = "fp32", device: torch.device | str | None = None,
              progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run an image-to-image model over ``image`` in overlapping tiles.

    Args:
        model: maps (B, C, h, w) → (B, C', s·h, s·w), s = ``model.upscale`` (1 when absent: restoration).
            ``model.spatial_multiple`` (default 1) is the size multiple it needs; tiles are rounded up to it.
        image: (B, C, H, W) float in [0, 1], on any device.
        tile: tile side in input pixels; None (or ≥ the image) runs the whole image at once. Raised to the
            model's minimum when smaller (see :func:`plan_tiles`; a warning says so).
        overlap: input pixels shared by neighbouring tiles (0 ≤ overlap < tile); they are blended. None: the
            model's ``tile_overlap`` (default 16). Capped at half the tile, with a warning.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast). A tile whose fp16 output is not finite is redone in
            bf16, then fp32 (one warning per call); other non-finite outputs raise NonFiniteOutputError.
        device: where the model runs (default: the device of its parameters). Tiles move there one at a time.
        progress: called as ``progress(tiles done, tiles in all)`` after each tile (e.g. by the web page).
    Returns:
        (B, C', s·H, s·W) float32 on the CPU.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) image, got shape {tuple(image.shape)}")
    batch, _, height, width = image.shape
    if height == 0 or width == 0:
        raise ValueError(f"cannot process a zero-size image ({width}x{height})")
    scale = int(getattr(model, "upscale", 1))
    out_h, out_w = height * scale, width * scale
    multiple = int(getattr(model, "spatial_multiple", 1))
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    tile, overlap, notes = plan_tiles(model, tile, overlap)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    if tile is None:
        th, tw = height, width
    else:
        # keep every tile on the model's window grid (as in whole-image inference): pad the image to the multiple;
        # tile and overlap are multiples of it, so all tile starts are too
        image = _pad_to(image, multiple)
        height, width = image.shape[-2:]
        th, tw = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    wys = _ramp_weights(ys, th, height, overlap, scale)
    wxs = _ramp_weights(xs, tw, width, overlap, scale)
    single = len(ys) == 1 and len(xs) == 1
    # the accumulator is allocated before the model runs: an output too large for memory fails at once, by name
    out = None if single else _output_buffer((batch, int(getattr(model, "out_chans", image.shape[1])),
                                              height * scale, width * scale))
    done, total, redone = 0, len(ys) * len(xs), 0
    with torch.inference_mode(), autocast(precision, device):
        for y, wy in zip(ys, wys):
            for x, wx in zip(xs, wxs):
                patch = image[:, :, y:y + th, x:x + tw].to(device=device, dtype=torch.float32)
                res = _forward(model, patch, multiple, scale).float()
                if precision == "fp16" and not torch.isfinite(res).all():  # fp16's range overflowed: redo the tile
                    res, used = _redo_tile(model, patch, multiple, scale, device)
                    if not redone:
                        warnings.warn(f"a tile came out NaN/inf in fp16; such tiles are redone in {used}",
                                      stacklevel=2)
                    redone += 1
                res = check_finite(res, precision).cpu()
                if res.shape[-2:] != (th * scale, tw * scale) or res.shape[0] != batch:
                    raise ValueError(f"model output {tuple(res.shape)} does not match its input "
                                     f"{tuple(patch.shape)} at scale {scale}")
                if progress is not None:
                    done += 1
                    progress(done, total)
                if single:
                    return res[..., :out_h, :out_w]
                if res.shape[1] != out.shape[1]:
                    out = _output_buffer((batch, res.shape[1], height * scale, width * scale))
                out[:, :, y * scale:(y + th) * scale, x * scale:(x + tw) * scale] += res * (wy[:, None] * wx[None])
    return out[..., :out_h, :out_w]

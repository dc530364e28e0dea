"""Reading and writing image files: the one place where files become tensors and tensors become files.

- Read: 8-bit grayscale / RGB / RGBA (palette, 1-bit, CMYK, YCbCr... converted), 16-bit PNG (any colour type, own
  decoder since Pillow reads 16-bit colour PNGs as 8-bit) and 16-bit grayscale TIFF. The EXIF orientation is
  applied. Pixels become a float32 (C, H, W) tensor in [0, 1] with C = 1 or 3; an alpha channel is returned
  separately (the caller processes it on its own and writes it back). The ICC profile and the EXIF block (its
  orientation reset to 1, since the pixels are turned upright) come along, for the output to keep them.
- Write: the format follows the file suffix; 16-bit output is written as PNG (own encoder), 8-bit through Pillow.
  Writes are atomic: a temporary file in the same folder, then ``os.replace``; a failed write leaves nothing behind,
  and the temporary file of a writer killed outright (SIGKILL) is removed by :func:`remove_stale_temporaries`.
  :func:`check_writable` tells whether an output can be written before any work is spent on it.
- Errors are :class:`ImageIOError` subclasses whose message names the file and the problem.
"""
from __future__ import annotations

import io
import os
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageData", "ImageIOError", "ImageReadError", "UnsupportedImageError", "EmptyImageError",
           "ImageWriteError", "read_image", "write_image", "quantize", "atomic_open", "check_writable",
           "remove_stale_temporaries", "list_image_files",
           "IMAGE_SUFFIXES", "LUMA_BT601"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LUMA_BT601 = (0.299, 0.587, 0.114)  # grayscale from RGB, as Pillow's convert("L")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
# Pillow modes read as they are (8 bit) or through a conversion; anything else is unsupported
_MODE_CONVERSIONS = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "1": "L", "La": "LA", "PA": "RGBA",
                     "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}
_MODES_16 = ("I;16", "I;16L", "I;16B", "I;16N")
_PNG16_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type → samples per pixel
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")  # atomic_open's temporary files
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


class ImageIOError(Exception):
    """An image file that cannot be read or written; the message names the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


class ImageReadError(ImageIOError):
    """Missing, unreadable, truncated or corrupt image file."""


class UnsupportedImageError(ImageReadError):
    """An image whose pixel mode pixelforge does not handle (32-bit integer or float images, for example)."""


class EmptyImageError(ImageReadError):
    """An image with zero width or height."""


class ImageWriteError(ImageIOError):
    """The output file cannot be written (folder missing or not writable, unknown format...)."""


@dataclass
class ImageData:
    """A decoded image.

    Attributes:
        pixels: (C, H, W) float32 in [0, 1], C = 1 (grayscale) or 3 (RGB).
        alpha: (1, H, W) float32 in [0, 1], or None when the image has no alpha channel.
        bit_depth: 8 or 16, the precision of the file (write the result back with the same depth).
        icc_profile: the file's embedded ICC colour profile (bytes), or None.
        exif: the file's EXIF block with the orientation reset to 1 (the pixels are upright), or None.
    """

    pixels: torch.Tensor
    alpha: torch.Tensor | None = None
    bit_depth: int = 8
    icc_profile: bytes | None = None
    exif: bytes | None = None


# ----------------------------------------------------------------------------------------------------------- read
def read_image(path: str | os.PathLike, channels: int | None = None) -> ImageData:
    """Read an image file into float tensors, with the EXIF orientation applied.

    Args:
        path: the image file.
        channels: None keeps grayscale as 1 channel and colour as 3; 3 replicates grayscale to 3 identical channels
            (as OpenCV ``IMREAD_COLOR`` and the SR benchmarks do); 1 converts colour to BT.601 luma.
    Raises:
        ImageReadError, UnsupportedImageError, EmptyImageError (messages name the file).
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 33 and data[12:16] == b"IHDR":
        width, height, depth = struct.unpack(">IIB", data[16:25])
        if width == 0 or height == 0:
            raise EmptyImageError(path, f"zero-size image ({width}x{height})")
        _check_pixel_limit(width, height, path)
        if depth == 16:
            arr, exif, icc = _decode_png16(data, path)
            return _to_image_data(_orient(arr, _orientation(exif)), 16, channels, icc, _upright(exif))
    arr, depth, exif, icc = _decode_pil(data, path)
    return _to_image_data(_orient(arr, _orientation(exif)), depth, channels, icc, _upright(exif))


def _orientation(exif: Image.Exif | None) -> int:
    return int(exif.get(_EXIF_ORIENTATION, 1)) if exif is not None else 1


def _upright(exif: Image.Exif | None) -> bytes | None:
    """The EXIF block to write with upright pixels (orientation 1), in the ``Exif\\0\\0`` form Pillow writes; None
    when the file has none."""
    if exif is None or not len(exif):
        return None
    if _EXIF_ORIENTATION in exif:
        exif[_EXIF_ORIENTATION] = 1
    return exif.tobytes()


def _check_pixel_limit(width: int, height: int, path: Path) -> None:
    """Refuse an image above Pillow's decompression-bomb limit (2 × ``PIL.Image.MAX_IMAGE_PIXELS``), from its
    header, with Pillow's message: one limit and one message for every decoder, checked before any allocation."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > 2 * limit:
        raise ImageReadError(path, f"Image size ({width * height} pixels) exceeds limit of {2 * limit} pixels, "
                                   f"could be decompression bomb DOS attack.")


def _decode_pil(data: bytes, path: Path) -> tuple[np.ndarray, int, Image.Exif, bytes | None]:
    """Decode with Pillow → (uint8/uint16 H×W or H×W×C array, bit depth, EXIF, ICC profile)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width == 0 or im.height == 0:
                raise EmptyImageError(path, f"zero-size image ({im.width}x{im.height})")
            im.load()
            exif, icc = im.getexif(), im.info.get("icc_profile") or None
            if im.mode in _MODES_16:
                return np.asarray(im).astype(np.uint16), 16, exif, icc
            if im.mode not in _MODE_CONVERSIONS and im.mode != "P":
                raise UnsupportedImageError(path, f"unsupported image mode '{im.mode}' (pixelforge reads 8-bit and "
                                                  f"16-bit grayscale, RGB and RGBA images)")
            has_alpha = "transparency" in im.info and im.mode in ("L", "RGB", "P")
            target = _MODE_CONVERSIONS.get(im.mode, "RGB")
            if has_alpha:
                target = "LA" if im.mode == "L" else "RGBA"
            elif im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA":
                target = "RGBA"
            if target != im.mode:
                im = im.convert(target)
            return np.asarray(im), 8, exif, icc
    except ImageIOError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file, or a format pixelforge cannot read") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        problem = str(exc) or type(exc).__name__
        if "truncated" in problem.lower():
            problem = f"truncated or incomplete file ({problem})"
        raise ImageReadError(path, f"cannot decode the image: {problem}") from None


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1–8) to an H×W(×C) array, as Pillow's ``ImageOps.exif_transpose``."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _to_image_data(arr: np.ndarray, bit_depth: int, channels: int | None, icc: bytes | None = None,
                   exif: bytes | None = None) -> ImageData:
    """uint8/uint16 H×W, H×W×2 (gray+alpha), H×W×3 or H×W×4 → :class:`ImageData`."""
    arr = arr[..., None] if arr.ndim == 2 else arr
    t = torch.from_numpy(arr.astype(np.int32 if arr.dtype == np.uint16 else np.uint8)).permute(2, 0, 1)
    t = t.float() / (65535.0 if bit_depth == 16 else 255.0)
    pixels, alpha = (t[:-1], t[-1:]) if t.shape[0] in (2, 4) else (t, None)
    if channels == 3 and pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1).contiguous()
    elif channels == 1 and pixels.shape[0] == 3:
        pixels = torch.tensordot(pixels.new_tensor(LUMA_BT601), pixels, dims=1)[None]
    return ImageData(pixels.contiguous(), None if alpha is None else alpha.contiguous(), bit_depth, icc, exif)


# ------------------------------------------------------------------------------------------------- 16-bit PNG
def _decode_png16(data: bytes, path: Path) -> tuple[np.ndarray, Image.Exif | None, bytes | None]:
    """A 16-bit PNG → (uint16 H×W×C array, EXIF, ICC profile). Checks chunk CRCs and the stream's completeness."""
    pos, idat, trns, exif, icc, header = 8, [], None, None, None, None
    while True:
        if pos + 8 > len(data):
            raise ImageReadError(path, "truncated or incomplete file (PNG ends before its IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) < length or pos + 12 + length > len(data):
            raise ImageReadError(path, "truncated or incomplete file (PNG chunk cut short)")
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if kind[0] & 0x20 == 0 and zlib.crc32(kind + body) & 0xFFFFFFFF != crc:  # critical chunks
            raise ImageReadError(path, f"corrupt PNG (bad CRC in {kind.decode('latin-1')} chunk)")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS":
            trns = body
        elif kind == b"eXIf":
            exif = Image.Exif()
            exif.load(body)
        elif kind == b"iCCP":  # profile name, NUL, compression method (0: zlib), compressed profile
            try:
                icc = zlib.decompress(body[body.index(b"\0") + 2:])
            except (ValueError, zlib.error):  # a damaged profile is dropped, as Pillow does
                icc = None
        elif kind == b"IEND":
            break
    width, height, _, color_type, _, _, interlace = header
    if color_type not in _PNG16_CHANNELS:
        raise UnsupportedImageError(path, f"unsupported 16-bit PNG colour type {color_type}")
    n_chan = _PNG16_CHANNELS[color_type]
    bpp = 2 * n_chan
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = sum(-(-(height - y0) // dy) * (-(-(width - x0) // dx) * bpp + 1)
                   for x0, y0, dx, dy in passes if width > x0 and height > y0)
    stream = zlib.decompressobj()
    try:  # never more than the image needs: a compressed stream cannot inflate past its header's size
        raw = stream.decompress(b"".join(idat), expected)
    except zlib.error as exc:
        raise ImageReadError(path, f"corrupt PNG image data ({exc})") from None
    if len(raw) < expected and not stream.eof:
        raise ImageReadError(path, "truncated or incomplete file (PNG image data ends early)")
    out = np.zeros((height, width, bpp), np.uint8)
    offset = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pw <= 0 or ph <= 0:
            continue
        size = ph * (pw * bpp + 1)
        if offset + size > len(raw):
            raise ImageReadError(path, "truncated or incomplete file (PNG image data ends early)")
        out[y0::dy, x0::dx] = _unfilter(np.frombuffer(raw, np.uint8, size, offset).reshape(ph, -1), pw, bpp, path)
        offset += size
    arr = out.reshape(height, width, n_chan, 2).astype(np.uint16)
    arr = (arr[..., 0] << 8) | arr[..., 1]
    if trns is not None and n_chan in (1, 3) and len(trns) == 2 * n_chan:
        key = np.frombuffer(trns, ">u2").astype(np.uint16)
        alpha = np.where((arr == key).all(axis=-1), 0, 65535).astype(np.uint16)
        arr = np.concatenate([arr, alpha[..., None]], axis=-1)
    return arr, exif, icc


def _unfilter(rows: np.ndarray, width: int, bpp: int, path: Path) -> np.ndarray:
    """Undo PNG row filters: rows (H, 1 + width·bpp) uint8 → (H, width, bpp) uint8.

    A pixel depends on its left, upper and upper-left neighbours, so all pixels on one anti-diagonal are
    reconstructed together (H + W − 1 vectorised steps instead of H·W scalar ones).
    """
    height = rows.shape[0]
    ftype = rows[:, 0].astype(np.int32)
    if (ftype > 4).any():
        raise ImageReadError(path, f"corrupt PNG (unknown row filter {int(ftype.max())})")
    filt = rows[:, 1:].reshape(height, width, bpp).astype(np.int32)
    rec = np.zeros((height + 1, width + 1, bpp), np.int32)  # zero row above and column left of the image
    for k in range(height + width - 1):
        r = np.arange(max(0, k - width + 1), min(height - 1, k) + 1)
        x = k - r
        a, b, c = rec[r + 1, x], rec[r, x + 1], rec[r, x]
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        t = ftype[r][:, None]
        pred = np.choose(t, [np.zeros_like(a), a, b, (a + b) >> 1, paeth])
        rec[r + 1, x + 1] = (filt[r, x] + pred) & 0xFF
    return rec[1:, 1:].astype(np.uint8)


def _encode_png16(arr: np.ndarray, icc_profile: bytes | None = None, exif: bytes | None = None) -> bytes:
    """uint16 H×W×C (C = 1..4: gray, gray+alpha, RGB, RGBA) → PNG bytes (16-bit, "Up" row filter), with an ICC
    profile (iCCP) and an EXIF block (eXIf) when given."""
    height, width, n_chan = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[n_chan]
    rows = np.ascontiguousarray(arr, dtype=">u2").view(np.uint8).reshape(height, width * n_chan * 2)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter defines
    raw = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    extra = chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile)) if icc_profile else b""
    if exif:
        extra += chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    return (_PNG_SIGNATURE + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------------------- write
def quantize(img: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """(C, H, W) float in [0, 1] → uint8/uint16 H×W×C: clamp, scale, round half to even (BasicSR ``tensor2img``)."""
    if img.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(img.shape)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    peak = np.float32(255.0 if bit_depth == 8 else 65535.0)
    arr = np.round(img.detach().float().cpu().clamp(0, 1).numpy() * peak)
    return arr.astype(np.uint8 if bit_depth == 8 else np.uint16).transpose(1, 2, 0)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``, on error it vanishes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # named by its writer's PID
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None when there is no such process, -inf when it
    runs but its start time is unknown (no ``/proc``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except (PermissionError, OverflowError):
        pass
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("-inf")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_open` left in ``folder`` when its writer was killed outright.

    A temporary file is stale when the process named in it is gone, or started after the file was last written
    (its PID was reused); the files of live writers are kept. Returns the removed paths.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None:
            continue
        try:
            written = entry.stat().st_mtime
            started = _process_start(int(match["pid"]))
            if started is None or started > written + 2:  # /proc/stat's boot time is whole seconds
                entry.unlink()
                removed.append(entry)
        except OSError:  # removed meanwhile, or not ours to remove
            continue
    return removed


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`ImageWriteError` unless ``path`` can be written: it is not a folder, and its folder is a
    writable folder or can be created inside one. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise ImageWriteError(path, "is a folder, not an output file")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ImageWriteError(path, f"cannot create output folder {path.parent} ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ImageWriteError(path, f"cannot write into {existing} (permission denied or read-only file system)")


def write_image(path: str | os.PathLike, pixels: torch.Tensor, alpha: torch.Tensor | None = None,
                bit_depth: int = 8, quality: int = 95, icc_profile: bytes | None = None,
                exif: bytes | None = None) -> Path:
    """Write (C, H, W) float pixels in [0, 1] (C = 1 or 3) and an optional (1, H, W) alpha atomically.

    The format follows the suffix (PNG, JPEG, WebP, BMP, TIFF). ``bit_depth`` 16 is honoured for PNG (other formats
    get 8 bits). ``quality`` applies to JPEG and WebP. ``icc_profile`` and ``exif`` (e.g. an input's, from
    :class:`ImageData`) are embedded where the format stores them (PNG, JPEG, WebP, TIFF). Raises
    :class:`ImageWriteError` naming the file.
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageWriteError(path, f"unknown image format '{path.suffix}' (use one of {', '.join(IMAGE_SUFFIXES)})")
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"pixels must be (1 or 3, H, W), got {tuple(pixels.shape)}")
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise ImageWriteError(path, f"cannot write a zero-size image ({pixels.shape[2]}x{pixels.shape[1]})")
    if alpha is not None:
        if fmt == "JPEG":
            raise ImageWriteError(path, "JPEG cannot store the alpha channel; write a .png instead")
        pixels = torch.cat([pixels, alpha.to(pixels)], dim=0)
    depth = 16 if (bit_depth == 16 and fmt == "PNG") else 8
    arr = quantize(pixels, depth)
    try:
        with atomic_open(path) as f:
            if depth == 16:
                f.write(_encode_png16(arr, icc_profile, exif))
            else:
                im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
                options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
                if fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
                    options.update({k: v for k, v in (("icc_profile", icc_profile), ("exif", exif)) if v})
                im.save(f, format=fmt, **options)
    except OSError as exc:
        raise ImageWriteError(path, f"cannot write the file ({exc.strerror or exc})") from None
    return path


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files (by suffix, :data:`IMAGE_SUFFIXES`) directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))

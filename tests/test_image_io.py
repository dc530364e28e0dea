"""Image I/O: modes, alpha, 16-bit PNG (every row filter, interlacing), EXIF orientation, errors, atomic writes."""
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pixelforge.data import (EmptyImageError, ImageReadError, ImageWriteError, UnsupportedImageError, list_image_files,
                             quantize, read_image, write_image)
from pixelforge.data.image_io import check_writable, remove_stale_temporaries

RNG = np.random.default_rng(0)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _filter_rows(img: np.ndarray, filters) -> bytes:
    """PNG-filter a (H, W, bytes per pixel) uint8 image, row r with filter ``filters[r % len(filters)]``."""
    x = img.astype(np.int32)
    a = np.zeros_like(x)
    a[:, 1:] = x[:, :-1]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    c = np.zeros_like(x)
    c[1:, 1:] = x[:-1, :-1]
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    preds = [np.zeros_like(x), a, b, (a + b) // 2, paeth]
    out = b""
    for r in range(x.shape[0]):
        f = filters[r % len(filters)]
        out += bytes([f]) + ((x[r] - preds[f][r]) % 256).astype(np.uint8).tobytes()
    return out


def _png16(arr: np.ndarray, filters=(0, 1, 2, 3, 4), interlace=False, extra=b"") -> bytes:
    """A 16-bit PNG of uint16 H×W×C written independently of pixelforge's encoder (any filters, Adam7)."""
    h, w, c = arr.shape
    planes = arr.astype(">u2").view(np.uint8).reshape(h, w, 2 * c)
    if interlace:
        raw = b"".join(_filter_rows(planes[y0::dy, x0::dx], filters) for x0, y0, dx, dy in ADAM7
                       if planes[y0::dy, x0::dx].size)
    else:
        raw = _filter_rows(planes, filters)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _as_uint16(data) -> np.ndarray:
    t = torch.cat([data.pixels] + ([data.alpha] if data.alpha is not None else []))
    return np.round(t.numpy() * 65535).astype(np.uint16).transpose(1, 2, 0)


def test_rgb_gray_rgba_round_trip(tmp_path):
    for mode, shape in [("RGB", (3, 3)), ("L", (1, 1)), ("RGBA", (3, 4)), ("LA", (1, 2))]:
        arr = RNG.integers(0, 256, (13, 17, shape[1]), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(tmp_path / f"{mode}.png")
        data = read_image(tmp_path / f"{mode}.png")
        assert data.bit_depth == 8 and data.pixels.shape == (shape[0], 13, 17) and data.pixels.dtype == torch.float32
        assert (data.alpha is not None) == (mode in ("RGBA", "LA"))
        write_image(tmp_path / f"{mode}_out.png", data.pixels, data.alpha)
        with Image.open(tmp_path / f"{mode}_out.png") as im:
            assert im.mode == mode and np.array_equal(np.asarray(im), arr[..., 0] if mode == "L" else arr)


def test_channel_conversions(tmp_path):
    gray = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    as_rgb = read_image(tmp_path / "g.png", channels=3).pixels
    assert as_rgb.shape == (3, 9, 11) and torch.equal(as_rgb[0], as_rgb[2])
    assert torch.equal(as_rgb[0], torch.from_numpy(gray).float() / 255)  # value / 255 in float32, as BasicSR
    rgb = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    luma = read_image(tmp_path / "c.png", channels=1).pixels
    assert luma.shape == (1, 9, 11)
    ref = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    assert np.abs(luma[0].numpy() - ref).max() <= 1 / 255
    # palette with a transparent entry → RGBA; 1-bit → gray
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png").alpha is not None
    Image.fromarray(gray > 128).save(tmp_path / "b.png")
    assert read_image(tmp_path / "b.png").pixels.unique().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_every_filter_and_interlace(tmp_path, channels):
    arr = RNG.integers(0, 65536, (11, 13, channels), dtype=np.uint16)
    arr[3:7, 2:9] = (40000 + np.arange(7, dtype=np.uint16) * 3)[None, :, None]  # smooth region: non-trivial Avg/Paeth predictions
    for interlace in (False, True):
        (tmp_path / "a.png").write_bytes(_png16(arr, interlace=interlace))
        data = read_image(tmp_path / "a.png")
        assert data.bit_depth == 16 and np.array_equal(_as_uint16(data), arr)
    # our writer → Pillow agrees for grayscale (the one 16-bit mode Pillow keeps), and we read it back exactly
    write_image(tmp_path / "w.png", data.pixels, data.alpha, bit_depth=16)
    assert np.array_equal(_as_uint16(read_image(tmp_path / "w.png")), arr)
    if channels == 1:
        with Image.open(tmp_path / "w.png") as im:
            assert np.array_equal(np.asarray(im).astype(np.uint16), arr[..., 0])


def test_png16_transparent_colour_and_pillow_gray16(tmp_path):
    arr = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    arr[2, 3] = (1, 2, 3)
    (tmp_path / "t.png").write_bytes(_png16(arr, extra=_chunk(b"tRNS", struct.pack(">3H", 1, 2, 3))))
    alpha = read_image(tmp_path / "t.png").alpha[0]
    assert alpha[2, 3] == 0 and alpha.sum() == alpha.numel() - 1
    gray = RNG.integers(0, 65536, (8, 5), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    Image.fromarray(gray).save(tmp_path / "g16.tif")
    for name in ("g16.png", "g16.tif"):
        data = read_image(tmp_path / name)
        assert data.bit_depth == 16 and np.array_equal(_as_uint16(data)[..., 0], gray)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path, orientation):
    arr = RNG.integers(0, 256, (5, 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as im:
        ref = np.asarray(ImageOps.exif_transpose(im))
    got = quantize(read_image(tmp_path / "o.png").pixels)
    assert np.array_equal(got, ref)
    # the 16-bit decoder reads the eXIf chunk too
    arr16 = arr.astype(np.uint16) * 257
    (tmp_path / "o16.png").write_bytes(_png16(arr16, extra=_chunk(b"eXIf", exif.tobytes())))
    assert np.array_equal(_as_uint16(read_image(tmp_path / "o16.png")), ref.astype(np.uint16) * 257)


def test_read_errors_name_the_file_and_the_problem(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "good.png")
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "good.jpg")
    for name in ("good.png", "good.jpg"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"trunc_{name}").write_bytes(data[: len(data) // 2])
    (tmp_path / "trunc16.png").write_bytes(_png16(RNG.integers(0, 65536, (20, 20, 3), dtype=np.uint16))[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"hello, not an image")
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    (tmp_path / "zero.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""))
    Image.fromarray(RNG.random((4, 4)).astype(np.float32)).save(tmp_path / "float.tif")
    cases = {
        "missing.png": (ImageReadError, "no such file"),
        "empty.png": (ImageReadError, "empty file"),
        "text.png": (ImageReadError, "not an image"),
        "trunc_good.png": (ImageReadError, "truncated"),
        "trunc_good.jpg": (ImageReadError, "truncated"),
        "trunc16.png": (ImageReadError, "truncated"),
        "zero.png": (EmptyImageError, "zero-size image \\(0x5\\)"),
        "float.tif": (UnsupportedImageError, "unsupported image mode 'F'"),
    }
    for name, (kind, message) in cases.items():
        with pytest.raises(kind, match=message) as info:
            read_image(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name)) and "\n" not in str(info.value)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_one_pixel_limit_for_every_decoder(tmp_path, monkeypatch):
    """16-bit PNGs, decoded by pixelforge, are refused from their header above Pillow's decompression-bomb limit
    with the message 8-bit files get (a 14000² gray16 file once decoded for 89 s at 4.5 GB before failing)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2000 pixels
    arr = RNG.integers(0, 65536, (50, 41, 1), dtype=np.uint16)
    (tmp_path / "gray16.png").write_bytes(_png16(arr))
    Image.fromarray((arr[..., 0] >> 8).astype(np.uint8)).save(tmp_path / "gray8.png")
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 16, 2, 0, 0, 0)  # header only: nothing may be allocated for it
    (tmp_path / "huge16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""))
    messages = []
    for name in ("gray8.png", "gray16.png", "huge16.png"):
        with pytest.raises(ImageReadError, match="exceeds limit of 2000 pixels") as info:
            read_image(tmp_path / name)
        messages.append(str(info.value).replace(name, "NAME"))
    assert messages[0] == messages[1] and "\n" not in messages[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1025)  # 2050 pixels: both read
    assert read_image(tmp_path / "gray16.png").bit_depth == 16 and read_image(tmp_path / "gray8.png").bit_depth == 8


def test_png16_stream_longer_than_its_header_is_not_inflated(tmp_path):
    """The IDAT stream is inflated only up to the size the header declares (a zlib bomb cannot grow past it)."""
    arr = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    raw = _filter_rows(arr.astype(">u2").view(np.uint8).reshape(6, 5, 6), (0,))
    ihdr = struct.pack(">IIBBBBB", 5, 6, 16, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw + bytes(10 ** 7)))
            + _chunk(b"IEND", b""))
    (tmp_path / "long.png").write_bytes(data)
    assert np.array_equal(_as_uint16(read_image(tmp_path / "long.png")), arr)


def test_writes_are_atomic(tmp_path, monkeypatch):
    pixels = torch.rand(3, 8, 9)
    with pytest.raises(ImageWriteError, match="cannot write") as info:
        write_image(tmp_path / "missing" / "x.png", pixels)
    assert str(tmp_path / "missing" / "x.png") in str(info.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(ImageWriteError):
        write_image(tmp_path / "file" / "x.png", pixels)  # parent is a file
    with pytest.raises(ImageWriteError, match="unknown image format"):
        write_image(tmp_path / "x.xyz", pixels)
    with pytest.raises(ImageWriteError, match="alpha"):
        write_image(tmp_path / "x.jpg", pixels, torch.ones(1, 8, 9))
    # a failure half-way through leaves the previous file untouched and no temporary file behind
    target = write_image(tmp_path / "keep.png", pixels)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageWriteError, match="No space left"):
        write_image(target, torch.rand(3, 8, 9))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "keep.png"]


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    """A writer killed with SIGKILL inside atomic_open leaves its hidden temporary file; the next run removes it
    (its writer is gone), while a live writer's file is kept."""
    code = ("import sys, time\n"
            "from pixelforge.data.image_io import atomic_open\n"
            "with atomic_open(sys.argv[1]) as f:\n"
            "    f.write(b'partial'); f.flush(); print('writing', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "x.png")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".x.png.{proc.pid}-") and left[0].endswith(".tmp")
    live = tmp_path / f".y.png.{os.getpid()}-0123abcd.tmp"
    live.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [tmp_path / left[0]]
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def test_check_writable_names_the_problem(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "x.png")  # folders that can be created
    assert list(tmp_path.iterdir()) == []  # nothing created
    (tmp_path / "file").write_text("")
    with pytest.raises(ImageWriteError, match="cannot create output folder"):
        check_writable(tmp_path / "file" / "sub" / "x.png")
    (tmp_path / "x.png").mkdir()
    with pytest.raises(ImageWriteError, match="is a folder"):
        check_writable(tmp_path / "x.png")
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(ImageWriteError, match="cannot write into"):
            check_writable(tmp_path / "locked" / "x.png")


def test_write_formats_and_listing(tmp_path):
    pixels = torch.rand(3, 10, 12)
    for suffix in (".png", ".jpg", ".webp", ".bmp", ".tif"):
        write_image(tmp_path / f"x{suffix}", pixels, bit_depth=16)  # 16 bits only for PNG, 8 bits elsewhere
        data = read_image(tmp_path / f"x{suffix}")
        assert data.pixels.shape == (3, 10, 12) and data.bit_depth == (16 if suffix == ".png" else 8)
    (tmp_path / "notes.txt").write_text("")
    assert [p.suffix for p in list_image_files(tmp_path)] == [".bmp", ".jpg", ".png", ".tif", ".webp"]
    assert np.array_equal(quantize(torch.tensor([[[0.5 / 255, 1.5 / 255, 2 / 255]]])), [[[0], [2], [2]]])

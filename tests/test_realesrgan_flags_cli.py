"""Real-ESRGAN habits of `upscale`/`dereflect`: --outscale, --suffix, --ext, --alpha, --tile auto, the
out-of-memory retry, the fp16 redo (tests/test_tiling.py) and ICC profile + EXIF kept in the output."""
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import pixelforge
import pixelforge.infer.tiling
from pixelforge.cli import main
from pixelforge.data.image_io import ImageData, read_image, write_image
from pixelforge.data.resize import lanczos_resize
from pixelforge.infer.runner import process_image
from pixelforge.infer.tiling import MAX_AUTO_TILE, MIN_TILE, auto_tile, run_tiled
from test_upscale_cli import tiny_weights

RNG = np.random.default_rng(7)


@pytest.fixture
def weights(tmp_path):
    tiny_weights(tmp_path / "w.safetensors")  # a small cfsr_x4
    return tmp_path / "w.safetensors"


def _upscale(*argv):
    return main(["upscale", *map(str, argv), "--device", "cpu", "--precision", "fp32"])


def _save(path, size=(20, 16), mode="RGB", **params):
    arr = RNG.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(path, **params)
    return path


def test_outscale_resizes_the_model_output_with_lanczos(weights, tmp_path):
    src = _save(tmp_path / "in.png")
    assert _upscale(src, "-o", tmp_path / "x35.png", "--weights", weights, "--outscale", "3.5", "--tile", 0) == 0
    assert Image.open(tmp_path / "x35.png").size == (70, 56)
    from pixelforge.infer.runner import load_model

    model = load_model(None, weights)
    image = read_image(src)
    plain = process_image(model, image)
    scaled = process_image(model, image, outscale=3.5)
    torch.testing.assert_close(scaled.pixels, lanczos_resize(plain.pixels, (56, 70)).clamp(0, 1))
    assert process_image(model, image, outscale=4).pixels.equal(plain.pixels)  # the model's own scale: no resize
    with pytest.raises(SystemExit) as usage:
        _upscale(src, "-o", tmp_path / "bad.png", "--weights", weights, "--outscale", "0")
    assert usage.value.code == 2


def test_suffix_and_ext(weights, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _save(folder / "a.png")
    _save(folder / "b.jpg", quality=95)
    _save(folder / "c.png", mode="RGBA")
    assert _upscale(folder, "-o", tmp_path / "auto", "--weights", weights, "--suffix", "out", "--ext", "auto") == 0
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == ["a_out.png", "b_out.jpg", "c_out.png"]
    assert Image.open(tmp_path / "auto" / "b_out.jpg").format == "JPEG"
    assert _upscale(folder, "-o", tmp_path / "jpg", "--weights", weights, "--ext", "jpg") == 0
    assert sorted(p.name for p in (tmp_path / "jpg").iterdir()) == ["a.jpg", "b.jpg", "c.png"]  # alpha: PNG
    assert _upscale(folder, "-o", tmp_path / "webp", "--weights", weights, "--ext", "webp") == 0
    assert {Image.open(p).format for p in (tmp_path / "webp").iterdir()} == {"WEBP"}
    assert Image.open(tmp_path / "webp" / "c.webp").mode == "RGBA"
    assert _upscale(folder, "-o", tmp_path / "default", "--weights", weights) == 0
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["a.png", "b.png", "c.png"]


def test_alpha_model_or_bicubic(weights, tmp_path):
    from pixelforge.infer.runner import load_model

    src = _save(tmp_path / "in.png", mode="RGBA")
    image, model = read_image(src), load_model(None, weights)
    by_model = process_image(model, image, alpha="model")
    gray = run_tiled(model, image.alpha.expand(3, -1, -1)[None])[0]
    torch.testing.assert_close(by_model.alpha, torch.tensordot(gray.new_tensor((0.299, 0.587, 0.114)), gray,
                                                               dims=1)[None].clamp(0, 1))
    bicubic = process_image(model, image)
    assert by_model.pixels.equal(bicubic.pixels) and not by_model.alpha.equal(bicubic.alpha)
    for mode in ("model", "bicubic"):
        assert _upscale(src, "-o", tmp_path / f"{mode}.png", "--weights", weights, "--alpha", mode) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "model.png"))[..., 3],
                              np.asarray(Image.open(tmp_path / "bicubic.png"))[..., 3])


def test_tile_auto_follows_free_memory(weights, tmp_path, capsys, monkeypatch):
    from pixelforge.infer.runner import load_model

    model = load_model(None, weights)
    small, large = auto_tile(model, "cpu", free_bytes=2 ** 24), auto_tile(model, "cpu", free_bytes=2 ** 40)
    assert MIN_TILE <= small < large == MAX_AUTO_TILE
    assert small % model.spatial_multiple == 0
    monkeypatch.setattr(pixelforge.infer.tiling, "_available_memory", lambda: 2 ** 24)
    src = _save(tmp_path / "in.png", size=(96, 80))
    assert _upscale(src, "-o", tmp_path / "auto.png", "--weights", weights, "--tile", "auto") == 0
    assert f"--tile auto chose tile {small}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        _upscale(src, "-o", tmp_path / "x.png", "--weights", weights, "--tile", "big")
    assert usage.value.code == 2 and "expected a tile size in pixels or 'auto'" in capsys.readouterr().err


class _OutOfMemoryAbove(torch.nn.Module):
    """Injects a CUDA out-of-memory error for inputs larger than ``side``; a x1 model otherwise."""

    def __init__(self, side):
        super().__init__()
        self.side, self.calls = side, []

    def forward(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > self.side:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x.flip(1)


def test_out_of_memory_halves_the_tile_and_retries():
    model = _OutOfMemoryAbove(side=24)
    image = ImageData(torch.rand(3, 80, 64))
    with pytest.warns(UserWarning) as caught:
        out = process_image(model, image)  # whole image (80) → 40 → 20
    retries = [str(w.message) for w in caught if "out of memory" in str(w.message)]
    assert retries == ["out of memory with whole images; retrying with tile 40",
                       "out of memory with tile 40; retrying with tile 20"]
    torch.testing.assert_close(out.pixels, image.pixels.flip(0))  # blended tiles of a pointwise model
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(UserWarning):
        process_image(_OutOfMemoryAbove(side=4), image, tile=32)  # below the smallest tile: the error stands


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_icc_profile_and_exif_round_trip(weights, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "pixelforge test camera"  # Make
    for name, params in (("in.png", {}), ("in.jpg", {"quality": 95})):
        src = _save(tmp_path / name, size=(20, 16), icc_profile=_icc(), exif=exif.tobytes(), **params)
        out = tmp_path / f"out{src.suffix}"
        assert _upscale(src, "-o", out, "--weights", weights) == 0
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == _icc()
            assert im.size == (16 * 4, 20 * 4)  # written upright
            assert im.getexif().get(0x0112) == 1 and im.getexif().get(0x010F) == "pixelforge test camera"
    # 16-bit PNGs go through pixelforge's own codec: the profile and EXIF survive it too
    image = ImageData(torch.rand(3, 8, 10), None, 16, _icc(), exif.tobytes())
    write_image(tmp_path / "16.png", image.pixels, bit_depth=16, icc_profile=image.icc_profile, exif=image.exif)
    back = read_image(tmp_path / "16.png")
    assert back.bit_depth == 16 and back.icc_profile == _icc() and back.pixels.shape == (3, 10, 8)
    parsed = Image.Exif()
    parsed.load(back.exif)
    assert parsed.get(0x0112) == 1 and parsed.get(0x010F) == "pixelforge test camera"
    assert Image.open(io.BytesIO((tmp_path / "16.png").read_bytes())).info.get("icc_profile") == _icc()

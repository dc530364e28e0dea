"""`pixelforge upscale`: files and folders, image modes, tiling, precision, and every kind of bad input."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pixelforge
import pixelforge.cli.image_to_image
from conftest import PARITY
from pixelforge.cli import main
from pixelforge.data import quantize, read_image, write_image

RNG = np.random.default_rng(0)
TINY = {"embed_dim": 8, "depths": [1]}


def tiny_weights(path, name="cfsr_x4", args=None, metadata=True):
    """A small model of ``name`` saved as ``pixelforge train`` does (its config in the metadata); returns the model."""
    args = dict(TINY if args is None else args)
    torch.manual_seed(0)
    model = pixelforge.create_model(name, **args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    meta = {"model": name, "config": json.dumps({"model": {"name": name, "args": args}})} if metadata else None
    pixelforge.save_weights(model, path, meta)
    return model


def _rgb(path, h=20, w=24):
    arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _run(capsys, *argv):
    argv = list(map(str, argv))
    if "--precision" not in argv:  # outputs are compared with fp32 ones; auto's choice depends on the CPU
        argv += ["--precision", "fp32"]
    rc = main(["upscale", *argv, "--device", "cpu"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_single_file_matches_the_model(tmp_path, capsys):
    model = tiny_weights(tmp_path / "w.safetensors")
    arr = _rgb(tmp_path / "in.png")
    rc, out, err = _run(capsys, tmp_path / "in.png", "-o", tmp_path / "out.png", "--weights", tmp_path / "w.safetensors")
    assert rc == 0 and f"wrote {tmp_path / 'out.png'} (96x80)" in out, err
    with torch.no_grad():
        ref = quantize(model(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)[0])
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (96, 80) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), ref)


def test_folder_of_modes_with_tiles(tmp_path, capsys):
    tiny_weights(tmp_path / "w.safetensors", "cfsr_x2")
    src = tmp_path / "in"
    src.mkdir()
    _rgb(src / "rgb.png")
    Image.fromarray(RNG.integers(0, 256, (18, 22), dtype=np.uint8)).save(src / "gray.png")
    rgba = RNG.integers(0, 256, (16, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(src / "rgba.png")
    write_image(src / "deep.png", torch.rand(3, 14, 18), bit_depth=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise: 12×20 stored, 20×12 shown
    Image.fromarray(RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(src / "turned.png", exif=exif)
    (src / "notes.txt").write_text("not an image: ignored")
    rc, _, err = _run(capsys, src, "-o", tmp_path / "out", "--tile", 16, "--tile-overlap", 8,
                      "--weights", tmp_path / "w.safetensors")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["deep.png", "gray.png", "rgb.png", "rgba.png",
                                                                   "turned.png"]
    with Image.open(tmp_path / "out" / "gray.png") as im:
        assert im.mode == "L" and im.size == (44, 36)
    with Image.open(tmp_path / "out" / "rgba.png") as im:
        assert im.mode == "RGBA" and im.size == (40, 32)
        alpha = torch.from_numpy(rgba[..., 3]).float()[None, None] / 255
        ref = F.interpolate(alpha, size=(32, 40), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        assert np.array_equal(np.asarray(im)[..., 3], quantize(ref)[..., 0])  # alpha upscaled on its own, bicubic
    deep = read_image(tmp_path / "out" / "deep.png")
    assert deep.bit_depth == 16 and deep.pixels.shape == (3, 28, 36)
    assert read_image(tmp_path / "out" / "turned.png").pixels.shape == (3, 40, 24)


def test_bad_files_in_a_folder_are_reported_and_the_rest_done(tmp_path, capsys):
    tiny_weights(tmp_path / "w.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    _rgb(src / "a_good.png")
    data = (src / "a_good.png").read_bytes()
    (src / "b_truncated.png").write_bytes(data[: len(data) // 2])
    ihdr = struct.pack(">IIBBBBB", 0, 9, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    (src / "c_zero.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    Image.fromarray(RNG.random((6, 6)).astype(np.float32)).save(src / "d_float.tif")
    (src / "e_text.jpg").write_text("hello")
    rc, out, err = _run(capsys, src, tmp_path / "missing.png", "-o", tmp_path / "out",
                      "--weights", tmp_path / "w.safetensors")
    assert rc == 2  # partial failure: one image written
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_good.png"]  # no partial or temporary files
    lines = err.strip().splitlines()
    expected = {"b_truncated.png": "truncated", "c_zero.png": "zero-size", "d_float.tif": "unsupported image mode",
                "e_text.jpg": "not an image", "missing.png": "no such file"}
    for name, problem in expected.items():
        assert any(name in line and problem in line and line.startswith("pixelforge upscale: error:")
                   for line in lines), (name, err)
    assert "wrote 1 of 6 images" in out
    assert lines[-1].startswith("pixelforge upscale: 5 failed:") and all(n in lines[-1] for n in expected)


@pytest.mark.parametrize("problem", ["unknown_model", "unfit_weights", "wrong_scale", "no_weights_defined",
                                     "no_weights_installed", "output_not_writable", "truncated_single_file",
                                     "overwrite_input"])
def test_errors_are_one_line_and_leave_no_output(tmp_path, capsys, monkeypatch, problem):
    tiny_weights(tmp_path / "w.safetensors")
    tiny_weights(tmp_path / "plain.safetensors", metadata=False)
    _rgb(tmp_path / "in.png")
    (tmp_path / "afile").write_text("")
    out = tmp_path / "out" / "x.png"
    argv = {
        "unknown_model": ["--model", "cfsr_x5", "--weights", tmp_path / "w.safetensors"],
        "unfit_weights": ["--model", "cfsr_x4", "--weights", tmp_path / "plain.safetensors"],
        "wrong_scale": ["--model", "cfsr_x2", "--weights", PARITY / "cfsr_official_x4" / "checkpoint.pth"],
        "no_weights_defined": ["--model", "cfsr_x3"],
        "no_weights_installed": ["--model", "cfsr_x4"],
        "output_not_writable": ["--weights", tmp_path / "w.safetensors"],
        "truncated_single_file": ["--weights", tmp_path / "w.safetensors"],
        "overwrite_input": ["--weights", tmp_path / "w.safetensors"],
    }[problem]
    expected = {
        "unknown_model": "unknown model 'cfsr_x5'",
        "unfit_weights": "do not fit DenseImageModel: missing keys",
        "wrong_scale": "shape mismatch",
        "no_weights_defined": "'cfsr_x3' has no pretrained weights; pass --weights W",
        "no_weights_installed": "the pretrained weights of 'cfsr_x4', cfsr_x4.safetensors",
        "output_not_writable": "cannot create output folder",
        "truncated_single_file": "truncated",
        "overwrite_input": "would overwrite the input",
    }[problem]
    src = tmp_path / "in.png"
    if problem == "no_weights_installed":
        monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path / "home"))
        monkeypatch.setattr(pixelforge.zoo.weights, "PACKAGE_WEIGHTS", tmp_path / "no_package_weights")
    elif problem == "output_not_writable":
        out = tmp_path / "afile" / "x.png"  # its folder would have to be inside a regular file
    elif problem == "truncated_single_file":
        src.write_bytes(src.read_bytes()[:60])
    elif problem == "overwrite_input":
        out = tmp_path
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, _, err = _run(capsys, src, "-o", out, *argv)
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("pixelforge upscale: error:"), err
    assert expected in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no empty output folder either


def test_precision_and_whole_image_options(tmp_path, capsys):
    tiny_weights(tmp_path / "w.safetensors")
    _rgb(tmp_path / "in.png")
    for precision in ("fp32", "bf16"):
        rc, _, err = _run(capsys, tmp_path / "in.png", "-o", tmp_path / f"{precision}.png", "--tile", 0,
                          "--precision", precision, "--weights", tmp_path / "w.safetensors")
        assert rc == 0, err
    a, b = (np.asarray(Image.open(tmp_path / f"{p}.png"), dtype=int) for p in ("fp32", "bf16"))
    assert 0 < np.abs(a - b).max() <= 8
    rc, _, err = _run(capsys, tmp_path / "in.png", "-o", tmp_path / "x.png", "--tile", 8, "--tile-overlap", 8,
                      "--weights", tmp_path / "w.safetensors")
    assert rc == 1 and "--tile-overlap in [0, --tile)" in err


def test_small_tile_is_noted_once_and_runs_in_few_tiles(tmp_path, capsys, monkeypatch):
    """--tile 32 with CFSR's 32-px overlap once advanced 1 px per tile (a hang on photos); the overlap is halved and
    one note says so for the whole run."""
    tiny_weights(tmp_path / "w.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        _rgb(src / name, 64, 64)
    calls = []
    monkeypatch.setattr(pixelforge.infer.tiling, "_forward", lambda m, x, *a: calls.append(x.shape) or m(x))
    rc, _, err = _run(capsys, src, "-o", tmp_path / "out", "--tile", 32, "--weights", tmp_path / "w.safetensors")
    assert rc == 0, err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert notes == ["pixelforge upscale: note: the model's tile overlap 32 reduced to 16 for tile 32 (tiles must "
                     "advance by at least half their size)"]
    assert len(calls) == 2 * 3 * 3  # starts 0, 16, 32 on each axis, for each image


def test_unwritable_output_is_found_before_the_model_runs(tmp_path, capsys, monkeypatch):
    tiny_weights(tmp_path / "w.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        _rgb(src / name)
    (tmp_path / "out" / "b.png").mkdir(parents=True)  # the output of b.png cannot be written
    ran = []
    monkeypatch.setattr(pixelforge.cli.image_to_image, "process_image", lambda *a, **k: ran.append(a))
    rc, _, err = _run(capsys, src, "-o", tmp_path / "out", "--weights", tmp_path / "w.safetensors")
    assert rc == 1 and ran == []
    assert err.strip() == f"pixelforge upscale: error: {tmp_path / 'out' / 'b.png'}: is a folder, not an output file"


def test_weights_folder_and_output_too_large(tmp_path, capsys, monkeypatch):
    tiny_weights(tmp_path / "w.safetensors")
    _rgb(tmp_path / "in.png", 40, 40)
    rc, _, err = _run(capsys, tmp_path / "in.png", "-o", tmp_path / "x.png", "--weights", tmp_path)
    assert rc == 1 and f"{tmp_path} is a folder, not a checkpoint file" in err
    monkeypatch.setattr(pixelforge.infer.tiling, "_available_memory", lambda: 10_000)
    rc, _, err = _run(capsys, tmp_path / "in.png", "-o", tmp_path / "x.png", "--tile", 16, "--tile-overlap", 4,
                      "--weights", tmp_path / "w.safetensors")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "the 160x160 output needs" in err and "--tile" not in err
    assert not (tmp_path / "x.png").exists()


def test_stale_temporaries_are_removed_and_sigterm_leaves_none(tmp_path):
    """A run killed by SIGTERM while writing removes its temporary file; files left by a SIGKILLed writer (its PID
    gone) are removed by the next run in that folder."""
    import os
    import signal
    import subprocess
    import sys

    tiny_weights(tmp_path / "w.safetensors")
    _rgb(tmp_path / "in.png")
    out = tmp_path / "out"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir()
    stale = out / f".old.png.{gone.stdout.strip()}-89abcdef.tmp"
    stale.write_bytes(b"")
    code = ("import sys, time\n"
            "import pixelforge.cli.image_to_image as up\n"
            "from pixelforge.cli import main\n"
            "from pixelforge.data.image_io import atomic_open\n"
            "def slow_write(path, *args, **kwargs):\n"
            "    with atomic_open(path) as f:\n"
            "        f.write(b'partial'); f.flush(); print('writing', flush=True); time.sleep(120)\n"
            "up.write_image = slow_write\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "upscale", str(tmp_path / "in.png"), "-o", str(out),
                             "--weights", str(tmp_path / "w.safetensors"), "--device", "cpu"],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert not stale.exists()  # removed before the run wrote anything
        assert len([p for p in out.iterdir() if p.name.endswith(".tmp")]) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert list(out.iterdir()) == []

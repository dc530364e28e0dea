"""`pixelforge eval` reproduces BasicSR's scores of the released CFSR weights, and reads the usual folder layouts."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, parity_case
from pixelforge.cli import main
from pixelforge.data import read_image
from pixelforge.infer import run_tiled
from pixelforge.metrics import psnr_ssim, tensor_to_uint8
from test_upscale_cli import tiny_weights


def _bench(name):
    folder = DATA / "sr-bench" / name
    if not folder.is_dir():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"benchmark data missing: {folder}")
        pytest.skip(f"benchmark data not available: {folder}")
    return folder


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_released_cfsr_scores(tmp_path, capsys, scale, dataset):
    """Per image within 1e-4 dB / 1e-5 SSIM of BasicSR's own run (parity/cfsr_official_x*/scores.json)."""
    _, _, folder = parity_case(f"cfsr_official_x{scale}")
    reference = json.loads((folder / "scores.json").read_text())["results"][dataset]
    rc = main(["eval", "--model", f"cfsr_x{scale}", "--weights", str(folder / "checkpoint.pth"),
               "--data", str(_bench(dataset)), "--scale", str(scale), "--json", str(tmp_path / "scores.json"),
               "--device", "cpu", "--precision", "fp32"])
    printed = capsys.readouterr().out
    assert rc == 0
    got = json.loads((tmp_path / "scores.json").read_text())
    assert got["scale"] == got["crop_border"] == scale and got["test_y_channel"] is True
    assert sorted(got["per_image"]) == sorted(reference["per_image"])
    for name, ref in reference["per_image"].items():
        assert abs(got["per_image"][name]["psnr_y"] - ref["psnr_y"]) < 1e-4, name
        assert abs(got["per_image"][name]["ssim_y"] - ref["ssim_y"]) < 1e-5, name
        assert got["per_image"][name]["hr_hw"] == ref["hr_hw"]
        assert f"{got['per_image'][name]['psnr_y']:.4f}" in printed
    assert abs(got["mean"]["psnr_y"] - reference["mean"]["psnr_y"]) < 1e-4
    assert printed.strip().splitlines()[-1].split()[0] == "mean"


def test_lr_hr_layout_tiles_and_grayscale(tmp_path, capsys):
    """LR/ + HR/ folders; a grayscale pair is scored as 3 channels; --tile runs the tiled path."""
    model = tiny_weights(tmp_path / "w.safetensors", "cfsr_x2")
    rng = np.random.default_rng(0)
    for sub in ("LR", "HR"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for name, shape in [("a", (20, 24, 3)), ("b", (18, 16))]:
        hr = rng.integers(0, 256, (2 * shape[0] + 1, 2 * shape[1] + 1) + shape[2:], dtype=np.uint8)  # not mod 2
        Image.fromarray(hr).save(tmp_path / "data" / "HR" / f"{name}.png")
        Image.fromarray(hr[::2, ::2][: shape[0], : shape[1]]).save(tmp_path / "data" / "LR" / f"{name}.png")
    rc = main(["eval", "--model", "cfsr_x2", "--weights", str(tmp_path / "w.safetensors"),
               "--data", str(tmp_path / "data"), "--tile", "16", "--tile-overlap", "8", "--json",
               str(tmp_path / "s.json"), "--precision", "fp32"])
    assert rc == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["scale"] == 2 and got["tile"] == 16
    lr = read_image(tmp_path / "data" / "LR" / "b.png", channels=3).pixels
    hr = read_image(tmp_path / "data" / "HR" / "b.png", channels=3).pixels[:, :36, :32]
    sr = run_tiled(model, lr[None], tile=16, overlap=8)[0]
    ref = psnr_ssim(tensor_to_uint8(sr), tensor_to_uint8(hr), 2, test_y_channel=True)
    assert got["per_image"]["b"]["psnr_y"] == pytest.approx(ref["psnr"], abs=1e-12)
    assert got["per_image"]["b"]["ssim_y"] == pytest.approx(ref["ssim"], abs=1e-12)
    assert got["mean"]["psnr_y"] == pytest.approx((got["per_image"]["a"]["psnr_y"] + ref["psnr"]) / 2)


def test_eval_errors(tmp_path, capsys):
    tiny_weights(tmp_path / "w.safetensors", "cfsr_x2")
    (tmp_path / "empty").mkdir()
    base = ["eval", "--model", "cfsr_x2", "--weights", str(tmp_path / "w.safetensors")]
    cases = [
        (["--data", str(tmp_path / "empty")], "no LR/HR pairs"),
        (["--data", str(tmp_path / "nowhere")], "benchmark folder not found"),
        (["--data", str(tmp_path / "empty"), "--scale", "4"], "--scale 4 does not match the model cfsr_x2"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 1
        err = capsys.readouterr().err
        assert err.startswith("pixelforge eval: error:") and message in err and len(err.splitlines()) == 1

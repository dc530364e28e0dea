"""PSNR/SSIM against BasicSR's own values (parity/sr_metrics) and the protocol's invariants."""
import math

import numpy as np
import pytest
import torch

from conftest import parity_case
from pixelforge.metrics import psnr, psnr_ssim, psnr_ssim_tensor, rgb_to_y, ssim, tensor_to_uint8

SETTINGS = [(False, 0), (False, 4), (True, 0), (True, 4)]  # (test_y_channel, crop_border): the fixture's columns


def _pairs(case):
    return [name[len("hr_"):] for name in case["inputs"] if name.startswith("hr_")]


def test_matches_basicsr():
    case, io, _ = parity_case("sr_metrics")
    assert case["output_columns"] == ["rgb_crop0", "rgb_crop4", "y_crop0", "y_crop4"]
    for i, pair in enumerate(_pairs(case)):
        hr, sr = io[f"hr_{pair}"].numpy(), io[f"sr_{pair}"].numpy()
        for j, (y, crop) in enumerate(SETTINGS):
            assert psnr(sr, hr, crop, y) == pytest.approx(io["psnr"][i, j].item(), abs=case["atol"]), (pair, y, crop)
            assert ssim(sr, hr, crop, y) == pytest.approx(io["ssim"][i, j].item(), abs=case["atol"]), (pair, y, crop)
            both = psnr_ssim(sr, hr, crop, y)
            assert both["psnr"] == psnr(sr, hr, crop, y) and both["ssim"] == ssim(sr, hr, crop, y)


def test_float32_step_of_the_y_conversion_matters():
    """A pure-float64 Y is off by ~3e-6 dB on `tiny_error`; the exact BasicSR path is within 1e-6."""
    case, io, _ = parity_case("sr_metrics")
    i = _pairs(case).index("tiny_error")
    hr, sr = io["hr_tiny_error"].numpy()[4:-4, 4:-4], io["sr_tiny_error"].numpy()[4:-4, 4:-4]
    ref = io["psnr"][i, 3].item()

    def y64(img):
        img = img.astype(np.float64)
        return 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255

    naive = 10 * math.log10(255 ** 2 / np.mean((y64(sr) - y64(hr)) ** 2))
    assert abs(naive - ref) > 1e-6
    assert abs(psnr(io["sr_tiny_error"].numpy(), io["hr_tiny_error"].numpy(), 4, True) - ref) < 1e-9


def test_gray_as_rgb_is_scored_on_studio_swing_y():
    """Y of a gray image replicated to RGB is 16 + 219/255·v: its PSNR is 20·log10(255/219) dB above the raw one."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    out = np.clip(gt.astype(int) + rng.integers(-6, 7, gt.shape), 0, 255).astype(np.uint8)
    raw = psnr(out, gt, 2, test_y_channel=True)  # a 2-D image: "Y" is the value itself
    assert raw == pytest.approx(psnr(out, gt, 2), abs=1e-9)
    rgb = psnr(np.repeat(out[..., None], 3, -1), np.repeat(gt[..., None], 3, -1), 2, test_y_channel=True)
    assert rgb - raw == pytest.approx(20 * math.log10(255 / 219), abs=1e-4)
    y = rgb_to_y(np.repeat(gt[..., None], 3, -1))
    assert y.dtype == np.float32 and np.allclose(y, 16 + gt.astype(np.float64) * 219 / 255, atol=1e-4)


def test_identical_images_and_errors():
    img = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert psnr(img, img) == math.inf
    assert ssim(img, img, 2, True) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(img, img[:-1])
    with pytest.raises(ValueError, match="nothing left"):
        psnr(img, img, crop_border=12)
    with pytest.raises(ValueError, match="11×11"):
        ssim(img, img, crop_border=8)


def test_tensor_path_rounds_like_tensor2img():
    t = torch.tensor([-0.2, 0.0, 0.2, 1.0, 1.3, 2.5 / 255, 3.5 / 255]).view(1, 1, 7)
    assert tensor_to_uint8(t).tolist() == [[0, 0, 51, 255, 255, 2, 4]]  # clamp, ×255, round half to even
    rng = torch.Generator().manual_seed(0)
    sr, gt = torch.rand(3, 30, 32, generator=rng), torch.rand(3, 30, 32, generator=rng)
    got = psnr_ssim_tensor(sr, gt, crop_border=3)
    ref = psnr_ssim(tensor_to_uint8(sr), tensor_to_uint8(gt), 3, test_y_channel=True)
    assert got == ref
    assert psnr_ssim_tensor(sr, gt, crop_border=3, ssim=False) == {"psnr": ref["psnr"]}

"""SR training on the shared loop: MATLAB-bicubic data, exact resume, merged export loadable by name."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import pixelforge
from conftest import DATA
from pixelforge.data.image_io import read_image
from pixelforge.data.resize import imresize
from pixelforge.data.sr_datasets import HRPatchPairs, degrade_bicubic
from pixelforge.train.loop import train


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(6):
        img = (rng.random((40, 44, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i}.png")
    return root


def _config(out, root, **train_args):
    return {
        "recipe": "sr", "seed": 3, "output_dir": str(out),
        "model": {"name": "cfsr_x2", "args": {"deploy": False, "embed_dim": 8, "depths": [1], "dw_size": 5}},
        "data": {"scale": 2, "train_roots": [str(root)], "val_holdout": 1, "patch_size": 8, "repeat": 2},
        "train": {"batch_size": 2, "total_steps": 6, "log_every": 2, "eval_every": 3, "checkpoint_every": 2,
                  "ema_decay": 0.9, **train_args},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "scheduler": {"name": "cosine", "warmup_steps": 1},
    }


def test_imresize_matches_benchmark_lr():
    """Our MATLAB bicubic reproduces the provided Set5 x4 LR to within rounding on most pixels."""
    hr = read_image(DATA / "sr-bench/Set5/x4/img_002_SRF_4_HR.png", channels=3).pixels
    lr = read_image(DATA / "sr-bench/Set5/x4/img_002_SRF_4_LR.png", channels=3).pixels
    ours = degrade_bicubic(hr, 4)
    diff = (ours - lr).abs() * 255
    assert ours.shape == lr.shape
    assert diff.mean() < 0.2 and (diff > 1.5).float().mean() < 0.01


def test_imresize_is_linear_and_preserves_constants():
    x = torch.full((3, 17, 23), 0.25, dtype=torch.float64)
    assert torch.allclose(imresize(x, 1 / 3), torch.full((3, 6, 8), 0.25, dtype=torch.float64))
    a, b = torch.rand(2, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(imresize(a + 2 * b, 0.5), imresize(a, 0.5) + 2 * imresize(b, 0.5))


def test_patch_pairs_shapes(hr_folder):
    ds = HRPatchPairs(sorted(hr_folder.glob("*.png")), scale=2, patch_size=8)
    lr, hr = ds[0]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
    assert torch.equal(lr, (lr * 255).round() / 255)  # quantised like 8-bit LR files


def test_resume_is_exact_and_export_loads(hr_folder, tmp_path):
    straight = train(_config(tmp_path / "a", hr_folder))
    interrupted = tmp_path / "b"
    train(_config(interrupted, hr_folder, max_minutes=0))  # stops after its first step, with a checkpoint
    resumed = train(_config(interrupted, hr_folder))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    with safe_open(str(straight / "model.safetensors"), framework="pt") as f:
        cfg = json.loads(f.metadata()["config"])
    assert cfg["model"]["args"]["deploy"] is True  # the export is the merged form
    model = pixelforge.create_model("cfsr_x2", weights=straight / "model.safetensors", **cfg["model"]["args"])
    assert model(torch.rand(1, 3, 9, 10)).shape == (1, 3, 18, 20)
    evals = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in r and np.isfinite(r["eval"]["psnr_y"]) for r in evals)

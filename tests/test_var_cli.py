"""`pixelforge generate` with VAR models: grid + individual images, config from the training metadata, errors."""
import json

import pytest
import torch

import pixelforge
from pixelforge.cli import main
from pixelforge.data.image_io import read_image
from pixelforge.data.grid import make_grid
from pixelforge.zoo import save_weights

# scales other than the tokenizer's registered ones: generate hands the transformer's scales to the tokenizer
SMALL = {"depth": 1, "embed_dim": 64, "num_heads": 2, "patch_nums": [1, 2, 4, 8]}


@pytest.fixture
def small_weights(tmp_path):
    torch.manual_seed(0)
    vq = pixelforge.create_model("var_vqvae_f4_32", ch=32, vocab_size=64)
    var = pixelforge.create_model("var_d6_32", vocab_size=64, **SMALL)
    vq_path = save_weights(vq, tmp_path / "vq.safetensors")
    cfg = {"task": "var", "model": {"name": "var_d6_32", "args": {"vocab_size": 64, **SMALL}},
           "vqvae": {"name": "var_vqvae_f4_32", "weights": str(vq_path), "args": {"ch": 32, "vocab_size": 64}}}
    return save_weights(var, tmp_path / "var.safetensors", metadata={"config": json.dumps(cfg)}), vq_path


def test_generate_writes_grid_and_images(small_weights, tmp_path, capsys):
    var_path, _ = small_weights
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", "var_d6_32", "--weights", str(var_path), "--classes", "1,2,3", "-n", "2",
                 "-o", str(out), "--batch-size", "4", "--top-k", "900"]) == 0
    grid = read_image(out).pixels
    assert grid.shape == (3, 3 * 34 + 2, 2 * 34 + 2)  # 3 class rows of 2 images, 2 px padding
    names = sorted(p.name for p in tmp_path.glob("grid-*.png"))
    assert names == [f"grid-{i:03d}-c{c}.png" for i, c in enumerate([1, 1, 2, 2, 3, 3])]
    first = read_image(tmp_path / names[0]).pixels
    torch.testing.assert_close(grid[:, 2:34, 2:34], first)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


def test_generate_errors(small_weights, tmp_path, capsys):
    var_path, vq_path = small_weights
    args = ["generate", "--weights", str(var_path), "-o", str(tmp_path / "x.png")]
    assert main(["generate", "--model", "var_d6_32", "--weights", str(var_path), "--classes", "1,10",
                 "-o", str(tmp_path / "x.png")]) == 1
    assert "classes must be in [0, 9]" in capsys.readouterr().err
    assert main(["generate", "--model", "var_vqvae_f4_32", *args[3:]]) == 1
    assert "tokenizer" in capsys.readouterr().err
    assert main(["generate", "--model", "var_d6_32", "--classes", "a,b", *args[1:]]) == 1
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(["generate", "--model", "var_d6_32", *args[1:3], "-o", str(tmp_path / "missing" / "x.png")]) == 1
    assert "output folder does not exist" in capsys.readouterr().err


def test_make_grid_layout():
    images = torch.stack([torch.full((3, 2, 2), v) for v in (0.0, 0.5, 1.0)])
    grid = make_grid(images, nrow=2, padding=1)
    assert grid.shape == (3, 7, 7)
    assert grid[0, 1, 1] == 0.0 and grid[0, 1, 4] == 0.5 and grid[0, 4, 1] == 1.0 and grid[0, 4, 4] == 1.0

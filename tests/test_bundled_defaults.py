"""Every command runs without --weights once its bundled file is installed (a one-file drop into
$PIXELFORGE_HOME/weights or the package's weights folder), and says which file and which config when it is not.

These tests hide the package's files and drop small random-weight files of the same models (same names, same
metadata as `pixelforge train` writes) into a temporary $PIXELFORGE_HOME; tests/test_generators_bundled.py and
tests/test_dereflect_bundled.py run the real bundled files.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import pixelforge
import pixelforge.zoo.weights
from pixelforge.cli import main
from pixelforge.data.image_io import read_image
from pixelforge.zoo import save_weights


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty $PIXELFORGE_HOME and no package weights: only what a test drops in counts."""
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path / "home"))
    package = pixelforge.zoo.weights.PACKAGE_WEIGHTS
    (tmp_path / "package" / "weights").mkdir(parents=True)
    (tmp_path / "package" / "samples").symlink_to(package.parent / "samples")  # the precision probe's photo
    monkeypatch.setattr(pixelforge.zoo.weights, "PACKAGE_WEIGHTS", tmp_path / "package" / "weights")
    (tmp_path / "home" / "weights").mkdir(parents=True)
    return tmp_path / "home" / "weights"


def _photo(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)
    return path


def _random(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def test_missing_bundled_file_names_it_and_its_training_config(home, tmp_path, capsys):
    rc = main(["dereflect", str(_photo(tmp_path / "photo.png")), "-o", str(tmp_path / "clean.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and err.startswith("pixelforge dereflect: error:")
    assert "rrformer_small_dereflect.safetensors" in err
    assert "pixelforge train configs/dereflect/rrformer_small.yaml" in err and "--weights W" in err
    assert main(["generate", "--model", "var_d6_32", "-o", str(tmp_path / "g.png")]) == 1
    assert "pixelforge train configs/var/var_d6_cifar10.yaml" in capsys.readouterr().err


def test_dereflect_runs_with_no_weights_from_a_bf16_bundled_file(home, tmp_path, capsys):
    model = _random(pixelforge.create_model("rrformer_small")).eval()
    cfg = {"task": "dereflect", "model": {"name": "rrformer", "args": {"embed_dim": 32, "mid_dim": 64,
                                                                       "head": "restore", "residual": True,
                                                                       "kernel_size": 3}}}
    full = save_weights(model, tmp_path / "fp32.safetensors", metadata={"config": json.dumps(cfg)})
    save_weights({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()},
                 home / "rrformer_small_dereflect.safetensors", metadata={"config": json.dumps(cfg)})
    photo = _photo(tmp_path / "photo.jpg")
    common = ["--device", "cpu", "--precision", "fp32", "--tile", "0"]
    assert main(["dereflect", str(photo), "-o", str(tmp_path / "clean.png"), *common]) == 0
    assert main(["dereflect", str(photo), "-o", str(tmp_path / "fp32.png"), "--weights", str(full), *common]) == 0
    bundled, reference = read_image(tmp_path / "clean.png").pixels, read_image(tmp_path / "fp32.png").pixels
    assert bundled.shape == (3, 24, 20)
    # bf16 storage rounds each weight to 8 bits of mantissa: the outputs stay within a few 8-bit levels
    assert (bundled - reference).abs().max() <= 4 / 255


VAR_SMALL = {"depth": 1, "embed_dim": 64, "num_heads": 2, "patch_nums": [1, 2, 4, 8], "vocab_size": 64}


def test_generate_var_with_no_weights(home, tmp_path, capsys):
    vq = _random(pixelforge.create_model("var_vqvae_f4_32", ch=32, vocab_size=64))
    save_weights(vq, home / "var_vqvae_f4_32_cifar10.safetensors")
    var = _random(pixelforge.create_model("var_d6_32", **VAR_SMALL), seed=1)
    cfg = {"task": "var", "model": {"name": "var_d6_32", "args": VAR_SMALL},  # the tokenizer path of the training
           "vqvae": {"name": "var_vqvae_f4_32", "weights": "runs/var_vqvae_cifar10/model.safetensors",  # machine
                     "args": {"ch": 32, "vocab_size": 64}}}
    save_weights(var, home / "var_d6_32_cifar10.safetensors", metadata={"config": json.dumps(cfg)})
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", "var_d6_32", "--classes", "3,5", "-n", "4", "-o", str(out),
                 "--device", "cpu", "--precision", "fp32"]) == 0, capsys.readouterr().err
    assert read_image(out).pixels.shape == (3, 2 * 34 + 2, 4 * 34 + 2)
    assert len(list(tmp_path.glob("grid-*-c3.png"))) == 4 and len(list(tmp_path.glob("grid-*-c5.png"))) == 4


def test_generate_dit_task_with_no_weights(home, tmp_path, capsys):
    small = dict(sample_size=8, patch_size=2, num_layers=1, hidden_size=32, num_heads=2, num_classes=5)
    base = _random(pixelforge.create_model("dit_tiny_4", **small))
    save_weights(base, home / "dit_tiny_4_cifar_animals.safetensors",
                 metadata={"config": json.dumps({"model": {"name": "dit_tiny_4", "args": small}})})
    base.apply_adapter("diffscaler", rank=2, tasks=[{"name": "vehicles", "num_classes": 3}])
    _random(base, seed=2)
    base.save_task("vehicles", home / "dit_tiny_4_cifar_animals-task-vehicles.safetensors")
    out = tmp_path / "cars.png"
    assert main(["generate", "--model", "dit_tiny_4", "--task", "vehicles", "--classes", "0,2", "-n", "1",
                 "--steps", "2", "-o", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert read_image(out).pixels.shape[-2:] == (2 * 8 + 6, 8 + 4)  # one row per class
    assert main(["generate", "--model", "dit_tiny_4", "--task", "textures", "--steps", "2", "-o", str(out),
                 "--device", "cpu"]) == 1
    assert "textures" in capsys.readouterr().err

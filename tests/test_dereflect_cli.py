"""``pixelforge dereflect``: outputs, model/weights resolution, and bad-input handling."""
import json

import pytest
import torch

import pixelforge
from pixelforge.cli import main
from pixelforge.data import read_image, write_image
from pixelforge.layers import vgg as vgg_module
from pixelforge.zoo import save_weights


@pytest.fixture
def trained(tmp_path, tmp_home, monkeypatch):
    """A small RRFormer saved as ``pixelforge train`` does (its config in the safetensors metadata)."""
    monkeypatch.setattr(vgg_module, "_RANDOM_WARNED", True)
    torch.manual_seed(0)
    args = {"embed_dim": 8, "head": "restore", "residual": True}
    model = pixelforge.create_model("rrformer", **args).eval()
    path = save_weights(model, tmp_path / "model.safetensors",
                        {"config": json.dumps({"task": "dereflect", "model": {"name": "rrformer", "args": args}})})
    return model, path


def test_batch_continues_past_bad_inputs(tmp_path, trained, capsys):
    model, weights = trained
    good = tmp_path / "photo.png"
    image = torch.rand(3, 45, 70)
    write_image(good, image)
    gray16 = tmp_path / "gray16.png"
    write_image(gray16, torch.rand(1, 40, 36), bit_depth=16)
    rgba = tmp_path / "rgba.png"
    alpha = torch.rand(1, 36, 36)
    write_image(rgba, torch.rand(3, 36, 36), alpha)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["dereflect", str(good), str(tmp_path / "broken.png"), str(tmp_path / "missing.png"),
                 str(tmp_path / "empty.jpg"), str(gray16), str(rgba), "-o", str(out), "--weights", str(weights),
                 "--tile", "0", "--precision", "fp32"])  # compared with the fp32 output below
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2  # partial failure: the good images are written
    assert sorted(p.name for p in out.iterdir()) == ["gray16.png", "photo.png", "rgba.png"]  # nothing partial
    assert any("broken.png" in line for line in err) and any("missing.png: no such file" in line for line in err)
    assert any("empty.jpg: empty file" in line for line in err)
    assert err[-1].startswith("pixelforge dereflect: 3 failed:") and "broken.png" in err[-1]
    assert not any("Warning" in line for line in err)  # warnings, if any, are one-line notices
    with torch.no_grad():
        expected = model(read_image(good).pixels[None])[0].clamp(0, 1)
    got = read_image(out / "photo.png").pixels
    assert (got - expected).abs().max() <= 0.5 / 255 + 1e-6  # the whole image, rounded to 8 bits
    g = read_image(out / "gray16.png")
    assert g.pixels.shape == (1, 40, 36) and g.bit_depth == 16
    assert torch.allclose(read_image(out / "rgba.png").alpha, read_image(rgba).alpha)


def test_tiled_run_matches_whole_image_inside_tiles(tmp_path, trained, capsys):
    model, weights = trained
    write_image(tmp_path / "wide.png", torch.rand(3, 64, 150))
    assert main(["dereflect", str(tmp_path / "wide.png"), "-o", str(tmp_path / "o"), "--weights", str(weights),
                 "--tile", "64", "--tile-overlap", "16", "--precision", "fp32"]) == 0
    tiled = read_image(tmp_path / "o" / "wide.png").pixels
    with torch.no_grad():
        first_tile = model(read_image(tmp_path / "wide.png").pixels[None, :, :, :64])[0].clamp(0, 1)
    # away from the blended seam, the output is the first tile's own output
    assert (tiled[:, :, :48] - first_tile[:, :, :48]).abs().max() <= 0.5 / 255 + 1e-6
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "rrformer"], "'rrformer' has no pretrained weights"),
    (["--model", "cfsr_dereflect", "--vgg-weights", "{w}"], "--vgg-weights applies to RRFormer models only"),
    (["--vgg-weights", "{d}/vgg19.pth"], "VGG-19 weights file not found"),
    (["--weights", "{d}/none.safetensors"], "checkpoint not found"),
    (["--model", "cfsr_dereflect", "--weights", "{w}"], "do not fit"),
    (["--weights", "{w}", "--tile", "32", "--tile-overlap", "32"], "--tile-overlap in [0, --tile)"),
])
def test_command_errors_are_one_line(tmp_path, trained, capsys, argv, message):
    _, weights = trained
    write_image(tmp_path / "a.png", torch.rand(3, 40, 40))
    argv = [a.format(w=weights, d=tmp_path) for a in argv]
    code = main(["dereflect", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0] and err[0].startswith("pixelforge dereflect: error:")
    assert not (tmp_path / "out").exists()


def test_vgg_weights_option_and_random_vgg_notice(tmp_path, trained, capsys, monkeypatch):
    _, weights = trained
    write_image(tmp_path / "a.png", torch.rand(3, 40, 40))
    monkeypatch.setattr(vgg_module, "_RANDOM_WARNED", False)
    assert main(["dereflect", str(tmp_path / "a.png"), "-o", str(tmp_path / "o1"), "--weights", str(weights),
                 "--precision", "fp32"]) == 0  # (auto would announce its choice on stderr too)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pixelforge dereflect: warning:") and "RANDOMLY INITIALISED" in err[0]
    monkeypatch.setattr(vgg_module, "_RANDOM_WARNED", False)
    vgg = {}  # torchvision layout, the 13 convs up to conv5_1
    for idx, cin, cout in vgg_module._CONVS[:13]:
        vgg[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3) * 0.05
        vgg[f"features.{idx}.bias"] = torch.zeros(cout)
    torch.save(vgg, tmp_path / "vgg19.pth")
    assert main(["dereflect", str(tmp_path / "a.png"), "-o", str(tmp_path / "o2"), "--weights", str(weights),
                 "--vgg-weights", str(tmp_path / "vgg19.pth"), "--precision", "fp32"]) == 0
    assert capsys.readouterr().err == ""
    assert not torch.equal(read_image(tmp_path / "o1" / "a.png").pixels, read_image(tmp_path / "o2" / "a.png").pixels)

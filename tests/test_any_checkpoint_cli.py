"""`--weights FILE` without `--model`: pixelforge files by their metadata, official checkpoints by their layout,
unknown files refused with one line naming what was tried (upscale, dereflect, eval alike)."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PARITY
from pixelforge.cli import main
from pixelforge.data.image_io import read_image
from pixelforge.infer.runner import RunnerError, identify_checkpoint, load_model
from test_upscale_cli import tiny_weights

CFSR_X4 = PARITY / "cfsr_official_x4" / "checkpoint.pth"


def _photo(path, size=(20, 24)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.skipif(not CFSR_X4.is_file(), reason="parity fixtures not present")
def test_official_cfsr_with_and_without_model_gives_identical_outputs(tmp_path, capsys):
    src = _photo(tmp_path / "in.png")
    for name, extra in (("named.png", ["--model", "cfsr_x4"]), ("found.png", [])):
        assert main(["upscale", str(src), "-o", str(tmp_path / name), "--weights", str(CFSR_X4), "--device", "cpu",
                     "--precision", "fp32", "--tile", "0", *extra]) == 0, capsys.readouterr().err
    named, found = read_image(tmp_path / "named.png").pixels, read_image(tmp_path / "found.png").pixels
    assert named.shape == (3, 80, 96)
    assert torch.equal(named, found)


@pytest.mark.skipif(not CFSR_X4.is_file(), reason="parity fixtures not present")
def test_converted_file_names_its_model(tmp_path, capsys):
    assert main(["convert", "cfsr_x4", str(CFSR_X4), "-o", str(tmp_path / "conv.safetensors")]) == 0
    assert identify_checkpoint(tmp_path / "conv.safetensors")[0::2] == ("cfsr_x4", "pixelforge_model metadata")
    src = _photo(tmp_path / "in.png")
    for name, weights in (("official.png", CFSR_X4), ("converted.png", tmp_path / "conv.safetensors")):
        assert main(["upscale", str(src), "-o", str(tmp_path / name), "--weights", str(weights), "--device", "cpu",
                     "--precision", "fp32", "--tile", "0"]) == 0
    assert torch.equal(read_image(tmp_path / "official.png").pixels, read_image(tmp_path / "converted.png").pixels)


def test_pixelforge_files_name_their_model(tmp_path):
    tiny_weights(tmp_path / "trained.safetensors", name="cfsr_x2")
    assert identify_checkpoint(tmp_path / "trained.safetensors")[0::2] == ("cfsr_x2", "training config")
    model = load_model(None, tmp_path / "trained.safetensors", default="cfsr_x4")
    assert model.upscale == 2  # the file's model, not the command's default


def test_unknown_file_is_one_line_naming_what_was_tried(tmp_path, capsys):
    torch.save({"params": {"foo.weight": torch.zeros(3, 3)}}, tmp_path / "mystery.pth")
    src = _photo(tmp_path / "in.png")
    for command in ("upscale", "dereflect"):
        rc = main([command, str(src), "-o", str(tmp_path / "out.png"), "--weights", str(tmp_path / "mystery.pth"),
                   "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and len(err.splitlines()) == 1 and err.startswith(f"pixelforge {command}: error:")
        assert "cannot tell which model" in err and "official layouts (" in err and "cfsr" in err
        assert "spandrel" in err and "--model" in err
    assert main(["eval", "--weights", str(tmp_path / "mystery.pth"), "--data", str(tmp_path)]) == 1
    assert "cannot tell which model" in capsys.readouterr().err
    with pytest.raises(RunnerError, match="checkpoint not found"):
        load_model(None, tmp_path / "missing.pth")


@pytest.mark.skipif(importlib.util.find_spec("spandrel") is None, reason="spandrel extra not installed")
def test_spandrel_layouts_run_through_the_tiler(tmp_path):
    """A layout only spandrel knows (its SRVGGNetCompact, Real-ESRGAN's compact model) runs through run_tiled."""
    from pixelforge.infer import run_tiled
    from pixelforge.infer.spandrel_backend import load_spandrel

    torch.manual_seed(0)
    state = {"body.0.weight": torch.randn(16, 3, 3, 3) * 0.1, "body.0.bias": torch.zeros(16),
             "body.1.weight": torch.full((16,), 0.25),
             "body.2.weight": torch.randn(16, 16, 3, 3) * 0.1, "body.2.bias": torch.zeros(16),
             "body.3.weight": torch.full((16,), 0.25),
             "body.4.weight": torch.randn(48, 16, 3, 3) * 0.1, "body.4.bias": torch.zeros(48)}
    torch.save({"params": state}, tmp_path / "compact.pth")
    model = load_spandrel(tmp_path / "compact.pth")
    x = torch.rand(1, 3, 20, 24)
    assert model.upscale == 4
    with torch.no_grad():
        torch.testing.assert_close(run_tiled(model, x), model(x), atol=1e-6, rtol=0)
    assert load_model(None, tmp_path / "compact.pth").upscale == 4

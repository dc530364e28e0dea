"""`pixelforge export` (ONNX at a fixed tile) and the onnxruntime backend of the tiled runner."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the optional 'onnx' package (pip install 'pixelforge[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs 'onnxruntime' (pip install 'pixelforge[onnx]')")

import pixelforge  # noqa: E402
from pixelforge.cli import main  # noqa: E402
from pixelforge.data.image_io import read_image, write_image  # noqa: E402
from pixelforge.export import export_onnx  # noqa: E402
from pixelforge.infer import run_tiled  # noqa: E402
from pixelforge.infer.onnx_backend import OnnxRuntimeModel  # noqa: E402
from test_upscale_cli import tiny_weights  # noqa: E402


def test_image_model_at_a_fixed_tile(tmp_path):
    torch.manual_seed(0)
    model = pixelforge.create_model("cfsr_x2", embed_dim=8, depths=(1,)).eval()
    data = export_onnx(model, tmp_path / "m.onnx", "cfsr_x2", tile=24)
    assert (tmp_path / "m.onnx").read_bytes() == data
    runner = OnnxRuntimeModel(tmp_path / "m.onnx")
    assert runner.tile == 24 and runner.upscale == 2 and runner.meta["model"] == "cfsr_x2"
    assert runner.tile_overlap == model.tile_overlap and runner.in_chans == 3
    x = torch.rand(2, 3, 24, 24)  # a batch runs image by image through the batch-1 graph
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(runner(x), ref, atol=1e-4, rtol=0)
    small = x[:1, :, :20, :17]  # padded up to the tile (replicate), output cropped
    with torch.no_grad():
        padded = model(torch.nn.functional.pad(small, (0, 7, 0, 4), mode="replicate"))[..., :40, :34]
    torch.testing.assert_close(runner(small), padded, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="larger than the 24x24"):
        runner(torch.rand(1, 3, 25, 24))
    # the tiled runner drives it as any model: same result as the PyTorch model tiled the same way
    image = torch.rand(1, 3, 40, 56)
    torch.testing.assert_close(run_tiled(runner, image, tile=24, overlap=8),
                               run_tiled(model, image, tile=24, overlap=8), atol=1e-4, rtol=0)


def test_classifier_keeps_a_dynamic_batch():
    torch.manual_seed(0)
    model = pixelforge.create_model("cct_2_3x2_32", pretrained=True).eval()
    runner = OnnxRuntimeModel(export_onnx(model, None, "cct_2_3x2_32"))
    assert runner.input_size == (3, 32, 32) and not hasattr(runner, "upscale")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(runner(x), ref, atol=1e-4, rtol=1e-4)


def test_export_errors(tmp_path):
    model = pixelforge.create_model("cfsr_x2", embed_dim=8, depths=(1,)).eval()
    with pytest.raises(ValueError, match="fixed tile size"):
        export_onnx(model, None, "cfsr_x2")
    with pytest.raises(ValueError, match="not written by `pixelforge export`"):
        import onnx

        plain = tmp_path / "plain.onnx"
        torch.onnx.export(model, (torch.rand(1, 3, 8, 8),), str(plain), dynamo=False)
        onnx.load(str(plain))  # a valid ONNX file, without our metadata
        OnnxRuntimeModel(plain)


def test_export_command_and_onnxruntime_backend(tmp_path, capsys):
    tiny_weights(tmp_path / "w.safetensors", "cfsr_x2")
    write_image(tmp_path / "in.png", torch.rand(3, 30, 44))
    assert main(["export", "cfsr_x2", "-o", str(tmp_path / "m.onnx"), "--tile", "24",
                 "--weights", str(tmp_path / "w.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "input 3x24x24, opset 17" in out and "ONNX Runtime vs PyTorch on a probe" in out
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "ort.png"), "--backend", "onnxruntime",
                 "--weights", str(tmp_path / "m.onnx"), "--tile", "64"]) == 0  # --tile capped at the export's 24
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "torch.png"), "--tile", "24",
                 "--precision", "fp32", "--weights", str(tmp_path / "w.safetensors")]) == 0
    ort, ref = read_image(tmp_path / "ort.png").pixels, read_image(tmp_path / "torch.png").pixels
    assert ort.shape == ref.shape == (3, 60, 88) and (ort - ref).abs().max() <= 1 / 255 + 1e-6
    # on the fly: the model exported at --tile, then run by onnxruntime
    assert main(["eval", "--model", "cfsr_x2", "--weights", str(tmp_path / "w.safetensors"), "--backend",
                 "onnxruntime", "--data", str(tmp_path / "nowhere"), "--tile", "24"]) == 1
    assert "benchmark folder not found" in capsys.readouterr().err
    errors = [
        (["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.png"), "--backend", "onnxruntime",
          "--weights", str(tmp_path / "w.safetensors"), "--tile", "0"], "pass --tile N"),
        (["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.png"), "--backend", "onnxruntime",
          "--weights", str(tmp_path / "m.onnx"), "--precision", "bf16"], "runs fp32 on the CPU"),
        (["export", "cfsr_x2", "-o", str(tmp_path / "m.pt")], "must be an .onnx file"),
    ]
    for argv, message in errors:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_eval_json_names_the_backend(tmp_path, capsys):
    tiny_weights(tmp_path / "w.safetensors", "cfsr_x2")
    for folder, size in (("LR", 24), ("HR", 48)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        write_image(tmp_path / "data" / folder / "a.png", torch.rand(3, size, size))
    assert main(["eval", "--model", "cfsr_x2", "--weights", str(tmp_path / "w.safetensors"), "--backend",
                 "onnxruntime", "--data", str(tmp_path / "data"), "--tile", "24", "--json",
                 str(tmp_path / "s.json")]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["backend"] == "onnxruntime" and report["precision"] == "fp32" and report["tile"] == 24
    assert report["precision_choice"]["reason"] == "onnxruntime backend"

"""The bundled dereflection model (rrformer_small, `pixelforge dereflect`'s default): it removes synthetic reflections
from held-out BSDS500 test photos (never trained on) under the RRFormer protocol, and the command runs with no
--weights."""
import numpy as np
import pytest
import torch

import pixelforge
from conftest import DATA
from pixelforge.cli import main
from pixelforge.data.image_io import read_image
from pixelforge.data.reflection import ReflectionSynthesis, SyntheticReflectionPairs
from pixelforge.data.sr_datasets import list_images
from pixelforge.metrics.reflection import score_pair

VAL = DATA / "sr-train" / "BSDS200-test"
needs_data = pytest.mark.skipif(not VAL.is_dir(), reason="shared data not present")


@needs_data
def test_bundled_model_removes_reflections_on_held_out_pairs():
    pairs = SyntheticReflectionPairs(list_images([VAL])[:8], None, 128, 8, ReflectionSynthesis.from_config(
        {"preset": "errnet"}), seed=2024, augment=False)
    model = pixelforge.create_model("rrformer_small", pretrained=True).eval()
    gains = []
    with torch.no_grad():
        for blend, clean in pairs:
            out = model(blend[None])[0]
            gains.append(score_pair(out, clean)["psnr"] - score_pair(blend, clean)["psnr"])
    assert np.mean(gains) > 1.0, gains


@needs_data
def test_dereflect_command_runs_with_no_weights(tmp_path):
    photo = list_images([VAL])[0]
    assert main(["dereflect", str(photo), "-o", str(tmp_path / "clean.png"), "--precision", "fp32"]) == 0
    assert read_image(tmp_path / "clean.png").pixels.shape == read_image(photo).pixels.shape

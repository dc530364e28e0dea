"""CFSR against the official fixtures, the released layouts, and the training ↔ merged forms."""
import pytest
import torch

import pixelforge
from conftest import case_checkpoint, keys_manifest, parity_case, random_state_from_manifest


@pytest.mark.parametrize("name", ["cfsr_small", "cfsr_official_x2", "cfsr_official_x3", "cfsr_official_x4"])
def test_official_parity(name):
    case, io, folder = parity_case(name)
    model = pixelforge.load_official(case_checkpoint(case, folder), case["model"], case["official"]["kwargs"])
    with torch.no_grad():
        out = model(io["input"])
    torch.testing.assert_close(out, io["output"], atol=case["atol"], rtol=case["rtol"])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_released_layout_loads_strictly(scale):
    state = random_state_from_manifest(keys_manifest(f"cfsr_x{scale}"))
    model = pixelforge.load_official(state)  # family recognised from the keys
    assert model.upscale == scale
    assert model(torch.rand(1, 3, 11, 13)).shape == (1, 3, 11 * scale, 13 * scale)
    # the same layout also loads into the registered model directly
    pixelforge.create_model(f"cfsr_x{scale}", weights=state)


def test_merge_is_exact():
    torch.manual_seed(0)
    model = pixelforge.create_model("cfsr_x3", deploy=False, embed_dim=16, depths=(1, 2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        x = torch.rand(1, 3, 17, 19)
        before = model(x)
        model.backbone.merge()
        after = model(x)
    assert not any("edges" in k or "lkb_origin" in k for k in model.state_dict())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_restoration_head_keeps_size():
    model = pixelforge.create_model("cfsr_x4", head="restore", embed_dim=16, depths=(1,))
    assert model(torch.rand(2, 3, 10, 12)).shape == (2, 3, 10, 12)


def test_mlp_ratio_must_be_int():
    with pytest.raises(ValueError, match="mlp_ratio"):
        pixelforge.create_model("cfsr_x4", mlp_ratio=2.5)


@pytest.mark.parametrize("scale, floor", [(2, 36.3), (4, 30.3)])
def test_bundled_weights_beat_the_targets_on_set5(scale, floor):
    from conftest import DATA
    from pixelforge.infer.evaluate import evaluate_sr, find_pairs

    model = pixelforge.create_model(f"cfsr_x{scale}", pretrained=True).eval()
    scores = evaluate_sr(model, find_pairs(DATA / "sr-bench" / "Set5", scale), scale)["mean"]
    assert scores["psnr_y"] >= floor

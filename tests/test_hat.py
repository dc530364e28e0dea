"""HAT against the official fixtures and released layouts; padding, precision, heads, checkpointing."""
import pytest
import torch

import pixelforge
from conftest import DATA, case_checkpoint, keys_manifest, parity_case, random_state_from_manifest
from pixelforge.data import read_image
from pixelforge.infer import run_tiled
from pixelforge.vision.hat import HATBackbone

SMALL = dict(embed_dim=24, depths=(2, 2), num_heads=(2, 3), window_size=8, compress_ratio=3, squeeze_factor=8)


def _small(name="hat_s_x4", seed=0, **kw):
    torch.manual_seed(seed)
    model = pixelforge.create_model(name, **{**SMALL, **kw}).eval()
    with torch.no_grad():  # make every branch matter (the official init leaves the output nearly constant)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("name", ["hat_small", "hat_small_pad"])
def test_official_parity(name):
    case, io, folder = parity_case(name)
    model = pixelforge.load_official(case_checkpoint(case, folder), case["model"], case["official"]["kwargs"])
    assert isinstance(model.backbone, HATBackbone)
    with torch.no_grad():
        out = model(io["input"])  # hat_small_pad: 21x30, padded by the model itself, output cropped back
    assert out.shape == io["output"].shape
    torch.testing.assert_close(out, io["output"], atol=case["atol"], rtol=case["rtol"])


def test_shift_mask_value_is_a_parameter():
    case, io, folder = parity_case("hat_small")
    model = pixelforge.load_official(case_checkpoint(case, folder), "hat", case["official"]["kwargs"])
    with torch.no_grad():
        ref = model(io["input"])
        model.backbone.mask_value = float("-inf")
        same = model(io["input"])  # -100 and -inf agree here (spec: both underflow after softmax)
        model.backbone.mask_value = 0.0
        unmasked = model(io["input"])
    torch.testing.assert_close(same, ref, atol=1e-5, rtol=0)
    assert (unmasked - ref).abs().max() > 0.1


@pytest.mark.parametrize("variant,dim,groups,scale", [
    ("hat-s_x2", 144, 6, 2), ("hat-s_x3", 144, 6, 3), ("hat-s_x4", 144, 6, 4),
    ("hat_x2", 180, 6, 2), ("hat_x3", 180, 6, 3), ("hat_x4", 180, 6, 4),
    ("hat-l_x2", 180, 12, 2), ("hat-l_x3", 180, 12, 3), ("hat-l_x4", 180, 12, 4)])
def test_released_layout_loads_strictly(variant, dim, groups, scale):
    state = random_state_from_manifest(keys_manifest(variant))
    model = pixelforge.load_official(state)  # family and hyper-parameters from the keys and shapes
    bb = model.backbone
    assert (model.upscale, bb.num_features, len(bb.layers), bb.window_size) == (scale, dim, groups, 16)
    assert bb.layers[0].overlap_attn.overlap_win_size == 24
    if variant.startswith("hat-s"):  # forward on the smallest one only (the others differ in widths/depths)
        with torch.no_grad():
            out = model(torch.rand(1, 3, 16, 16))
        assert out.shape == (1, 3, 16 * scale, 16 * scale) and torch.isfinite(out).all()


def test_registered_configs_match_the_release():
    """hat_s_x4 has exactly the released keys and parameter count (spec: 9,621,183)."""
    model = pixelforge.create_model("hat_s_x4")
    assert sum(p.numel() for p in model.parameters()) == 9_621_183
    manifest = keys_manifest("hat-s_x4")
    pixelforge.create_model("hat_s_x4", weights=random_state_from_manifest(manifest))


def test_any_input_size():
    model = _small()
    for h, w in [(8, 8), (13, 21), (5, 3)]:  # 5x3 needs more padding than reflect allows in one go
        with torch.no_grad():
            out = model(torch.rand(1, 3, h, w))
        assert out.shape == (1, 3, 4 * h, 4 * w) and torch.isfinite(out).all()


def test_restoration_head():
    model = pixelforge.create_model("hat_s_x4", head="restore", **SMALL)
    x = torch.rand(2, 3, 12, 20)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward(dtype):
    model = _small()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype))  # the official class fails here (fp32 mask); ours builds it in dtype
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_autocast():
    model = _small()
    x = torch.rand(1, 3, 16, 24)
    seen = {}
    model.backbone.conv_first.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert seen["dtype"] == torch.float32  # the shallow features (long residual) stay float32 under autocast


def test_grad_checkpointing_same_gradients():
    model = _small(drop_path_rate=0.0).train()
    x = torch.rand(1, 3, 16, 16)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_overrides_and_errors():
    model = pixelforge.create_model("hat_x3", embed_dim=32, depths=(1,), num_heads=4, window_size=4, mlp_ratio=1.5,
                                    overlap_ratio=1.0, upsampler="pixelshuffledirect")
    assert model.backbone.layers[0].overlap_attn.overlap_win_size == 8 and model.upscale == 3
    assert model(torch.rand(1, 3, 7, 9)).shape == (1, 3, 21, 27)
    with pytest.raises(ValueError, match="must be even"):
        pixelforge.create_model("hat_x4", window_size=6, overlap_ratio=0.5)
    with pytest.raises(ValueError, match="divisible"):
        pixelforge.create_model("hat_x4", embed_dim=50, num_heads=6)


def test_our_checkpoint_roundtrip(tmp_path):
    model = _small()
    path = pixelforge.save_weights(model, tmp_path / "hat.safetensors")
    again = pixelforge.create_model("hat_s_x4", weights=path, **SMALL).eval()
    x = torch.rand(1, 3, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_tiled_inference_matches_whole_image():
    """Tiles on the window grid with enough overlap reproduce whole-image inference within 1/255.

    Small HAT (window 8, 2 groups of 2 HABs, official init), an odd-sized real crop: 16 px of overlap suffice
    (measured 0.07/255; 8 px: 2.5/255). HAT-S needs more, see ``HATBackbone.tile_overlap``.
    """
    torch.manual_seed(0)
    model = pixelforge.create_model("hat_s_x4", **SMALL).eval()
    x = read_image(DATA / "sr-bench/Set14/x4/img_013_SRF_4_LR.png", channels=3).pixels[None, :, :61, :53]
    ref = run_tiled(model, x)
    assert (run_tiled(model, x, tile=32, overlap=16) - ref).abs().max() < 1 / 255
    assert (run_tiled(model, x, tile=32, overlap=0) - ref).abs().max() > 5 / 255  # seams without overlap

"""CRAFT against the official fixture and released layouts; padding protocols, position bias, precision, heads."""
import pytest
import torch

import pixelforge
from conftest import case_checkpoint, keys_manifest, parity_case, random_state_from_manifest
from pixelforge.layers.window import relative_coordinates, relative_position_index
from pixelforge.vision.craft import CRAFTBackbone, DynamicPosBias

SMALL = dict(embed_dim=32, depths=(1, 1), num_heads=(4, 2))


def _small(name="craft_x2", seed=0, **kw):
    torch.manual_seed(seed)
    model = pixelforge.create_model(name, **{**SMALL, **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _fixture_model(**config):
    case, io, folder = parity_case("craft_small")
    kwargs = {**case["official"]["kwargs"], **config}
    return pixelforge.load_official(case_checkpoint(case, folder), case["model"], kwargs), case, io


def test_official_parity():
    model, case, io = _fixture_model()
    assert isinstance(model.backbone, CRAFTBackbone) and model.backbone.split_size == (4, 16)
    with torch.no_grad():
        out = model(io["input"])  # 32x43: always mirror-padded (+16 rows even though 32 is a multiple of 16)
    torch.testing.assert_close(out, io["output"], atol=case["atol"], rtol=case["rtol"])


def test_reflect_pad_mode_is_the_other_protocol():
    model, case, io = _fixture_model(pad_mode="reflect")
    assert model.backbone.pad_input(io["input"]).shape[-2:] == (32, 48)  # only where needed
    with torch.no_grad():
        out = model(io["input"])
    assert out.shape == io["output"].shape and (out - io["output"]).abs().max() > 0.1  # spec: differs by ~3.7


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_released_layout_loads_strictly(scale):
    state = random_state_from_manifest(keys_manifest(f"craft_x{scale}"))
    model = pixelforge.load_official(state)  # placeholder buffers: windows from the config defaults (4, 16)
    assert model.upscale == scale and model.backbone.split_size == (4, 16) and len(model.backbone.layers) == 4
    with torch.no_grad():
        out = model(torch.rand(1, 3, 20, 16))
    assert out.shape == (1, 3, 20 * scale, 16 * scale) and torch.isfinite(out).all()
    pixelforge.create_model(f"craft_x{scale}", weights=state)
    assert sum(p.numel() for p in model.parameters()) == {2: 737_756, 3: 744_251, 4: 753_344}[scale]


def _official_keys(model) -> dict:
    """Our state dict in the official CRAFT key layout (the inverse of checkpoint_filter_fn)."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.split(".", 1)[1]
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] != "conv":
            parts.insert(2, "residual_group")
        if parts[0] == "norm" or "hf_blocks" in parts and parts[-2] in ("norm1", "norm2"):
            parts.insert(len(parts) - 1, "body")
        out[".".join(parts)] = v
    return out


def test_windows_inferred_from_the_coordinate_buffer():
    """(a, b) and (b, a) have the same shapes; the values of ``biases_h`` tell them apart."""
    torch.manual_seed(0)
    state = _official_keys(pixelforge.create_model("craft_x2", split_size_0=16, split_size_1=4, **SMALL))
    state.update(biases_h=relative_coordinates((16, 4)), biases_v=relative_coordinates((4, 16)),
                 relative_position_index_h=relative_position_index((16, 4)),
                 relative_position_index_v=relative_position_index((4, 16)))
    model = pixelforge.load_official({"params": state})
    assert model.backbone.split_size == (16, 4)
    with pytest.raises(pixelforge.CheckpointError, match=r"windows \(16, 4\) differ"):
        pixelforge.create_model("craft_x2", weights=state, **SMALL)  # registered default is (4, 16)


def test_dynamic_position_bias_is_inert_at_48_and_live_from_64():
    """p = ((C/2)//4)//4: 1 at C = 48 (a per-head constant, softmax ignores it); 2 at C = 64 (position-dependent)."""
    x = torch.rand(1, 3, 16, 16)
    changes = {}
    for dim in (48, 64):
        model = _small(embed_dim=dim, num_heads=(4, 4))
        with torch.no_grad():
            ref = model(x)
            for m in model.modules():
                if isinstance(m, DynamicPosBias):
                    for p in m.parameters():
                        p.add_(torch.randn_like(p))
            changes[dim] = (model(x) - ref).abs().max().item()
    assert changes[48] < 1e-4 and changes[64] > 1e-2, changes


def test_restoration_head():
    model = pixelforge.create_model("craft_x4", head="restore", **SMALL)
    x = torch.rand(2, 3, 12, 20)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward(dtype):
    model = _small()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_autocast():
    model = _small()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_grad_checkpointing_same_gradients():
    model = _small().train()
    x = torch.rand(1, 3, 16, 16)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="embed_dim >= 32"):
        pixelforge.create_model("craft_x4", embed_dim=16, num_heads=2)
    with pytest.raises(ValueError, match="pad_mode"):
        pixelforge.create_model("craft_x4", pad_mode="zeros")

"""Vision Mamba against the official fixture, the released layouts and the timm API."""
import pytest
import timm
import torch

import pixelforge
from conftest import PARITY, case_checkpoint, keys_manifest, parity_case, random_state_from_manifest
from pixelforge.vision.vim import MambaDirection

_SMALL = dict(img_size=32, patch_size=8, stride=8, embed_dim=32, depth=2, num_classes=5)


def test_official_parity():
    case, io, folder = parity_case("vim_small")
    model = pixelforge.load_official(case_checkpoint(case, folder), case["model"], case["official"]["kwargs"])
    assert model.cls_index == 32
    with torch.no_grad():
        out = model(io["input"])
    torch.testing.assert_close(out, io["logits"], atol=case["atol"], rtol=case["rtol"])


def test_backward_direction_is_the_flipped_forward_branch():
    """reverse=True with the anti-causal conv == the reference's flip → causal branch → flip back."""
    torch.manual_seed(0)
    fwd = MambaDirection(24, 8, 2, 4, reverse=False)
    bwd = MambaDirection(24, 8, 2, 4, reverse=True)
    bwd.load_state_dict(fwd.state_dict())
    x, z = torch.randn(2, 24, 19), torch.randn(2, 24, 19)
    with torch.no_grad():
        torch.testing.assert_close(bwd(x, z), fwd(x.flip(-1), z.flip(-1)).flip(-1), atol=1e-5, rtol=1e-5)


_MANIFESTS = sorted(p.stem for p in (PARITY / "keys").glob("vim_*.json")) or [
    "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"]


@pytest.mark.parametrize("variant", _MANIFESTS)
def test_released_layout_loads_strictly(variant):
    manifest = keys_manifest(variant)
    state = random_state_from_manifest(manifest, device="meta")
    with torch.device("meta"):
        official = pixelforge.load_official(state, config=manifest["official"]["kwargs"])  # family from the keys
        registered = pixelforge.create_model(variant, weights=state[manifest["wrapper"]])
    for model in (official, registered):
        assert sum(p.numel() for p in model.parameters()) == manifest["n_params"]
        assert model.cls_index == manifest["cls_token_index"]
    assert official.patch_embed.stride == registered.patch_embed.stride


def test_middle_class_token_survives_a_resolution_change():
    case, _, folder = parity_case("vim_small")
    model = pixelforge.create_model("vim_tiny_patch16_224", img_size=48, patch_size=8, stride=8, embed_dim=48,
                                    depth=4, num_classes=10, weights=case_checkpoint(case, folder))
    pe = torch.load(case_checkpoint(case, folder), weights_only=True)["model"]["pos_embed"]
    assert model.pos_embed.shape == (1, 37, 48) and model.cls_index == 18
    assert torch.equal(model.pos_embed[0, 18], pe[0, 32])
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_unsupported_official_settings_are_refused():
    case, _, folder = parity_case("vim_small")
    with pytest.raises(pixelforge.CheckpointError, match="bimamba_type"):
        pixelforge.load_official(case_checkpoint(case, folder), "vim", {"bimamba_type": "v1"})


def test_timm_api():
    model = timm.create_model("vim_tiny_patch16_224", **_SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    seq = model.forward_features(x)
    assert seq.shape == (2, 17, 32) and model.cls_index == 8
    assert model.forward_head(seq, pre_logits=True).shape == (2, 32)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    final, inter = model.forward_intermediates(x)
    assert [t.shape for t in inter] == [(2, 32, 4, 4)] * 2
    torch.testing.assert_close(final, seq)
    feats = timm.create_model("vim_tiny_patch16_224", features_only=True, out_indices=(1,), **_SMALL)
    assert [f.shape for f in feats(x)] == [(2, 32, 4, 4)] and feats.feature_info.reduction() == [8]
    with pytest.raises(ValueError, match="input size"):
        model(torch.randn(1, 3, 40, 40))


def test_training_step_with_checkpointing_and_bf16():
    torch.manual_seed(0)
    model = pixelforge.create_model("vim_tiny_patch16_224", drop_path_rate=0.0, **_SMALL)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).logsumexp(-1).sum().backward()
        grads.append(model.layers[0].mixer.bwd.A_log.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out).all()

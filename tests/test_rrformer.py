"""RRFormer: the released network against the official fixture, the released key layout, the hypercolumn, the VGG-19
weights handling and the paper-style self-attention stage."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import pixelforge
from conftest import case_checkpoint, keys_manifest, parity_case, random_state_from_manifest
from pixelforge.layers import vgg as vgg_module
from pixelforge.layers.vgg import VGG19Features, VGGPerceptualLoss
from pixelforge.zoo import CheckpointError


@pytest.fixture
def quiet_vgg(monkeypatch):
    """Random VGG-19 without the (once per process) warning."""
    monkeypatch.setattr(vgg_module, "_RANDOM_WARNED", True)


def test_official_parity():
    case, io, folder = parity_case("rrformer_small")
    ckpt = case_checkpoint(case, folder)
    # the fixture's seeded VGG-19 sits next to the official 'icnn' weights in the same file
    model = pixelforge.load_official(ckpt, case["model"], {**case["official"]["kwargs"], "vgg_weights": ckpt})
    assert model.backbone.transformer is None and model.backbone.vgg.pretrained
    with torch.no_grad():
        out = model(io["input"])
        taps = model.backbone.vgg(io["input"])
    torch.testing.assert_close(out, io["output"], atol=case["atol"], rtol=case["rtol"])
    for name, tap in zip(("vgg_relu3_1", "vgg_relu4_1", "vgg_relu5_1"), taps[2:]):
        torch.testing.assert_close(tap, io[name], atol=case["atol"], rtol=case["rtol"])


def test_released_layout_drops_the_dead_transformer(quiet_vgg):
    manifest = keys_manifest("rrformer")
    state = random_state_from_manifest(manifest)
    model = pixelforge.load_official(state)  # recognised from the keys, 'icnn' unwrapped
    assert model.backbone.num_features == 256 and model.backbone.transformer is None
    assert sum(p.numel() for p in model.parameters()) == manifest["n_params_effective"]
    assert not any(k.startswith("backbone.vgg") for k in model.state_dict())  # VGG is not part of the weights
    pixelforge.create_model("rrformer", weights=state)  # our registered model reads the official layout too


def _one_group_swin(manifest: dict) -> dict:
    """The released layout reduced to one Swin group of two blocks (official names and shapes)."""
    keep = {}
    for k, v in manifest["keys"].items():
        parts = k.split(".")
        if k.startswith("swinir_block.layers.") and (parts[2] != "0" or (len(parts) > 5 and int(parts[5]) > 1)):
            continue
        keep[k] = v
    return {**manifest, "keys": keep}


def test_paper_style_stage_from_official_keys(quiet_vgg):
    state = random_state_from_manifest(_one_group_swin(keys_manifest("rrformer")))
    paper = pixelforge.load_official(state, "rrformer", {"self_attention": "paper"})
    stage = paper.backbone.transformer
    assert [len(g.blocks) for g in stage.layers] == [2] and stage.window_size == 8
    assert stage.layers[0].blocks[0].attn.num_heads == 6
    released = pixelforge.load_official(state, "rrformer")
    x = torch.rand(1, 3, 36, 44)
    with torch.no_grad():
        assert (paper(x) - released(x)).abs().max() > 1e-3  # the stage now acts
        paper.backbone.transformer = None
        torch.testing.assert_close(paper(x), released(x), atol=0, rtol=0)  # and is the only difference


def test_paper_stage_trains_and_checkpoints(quiet_vgg):
    torch.manual_seed(0)
    model = pixelforge.create_model("rrformer_paper", embed_dim=8, mid_dim=16, sa_depths=(2,), sa_num_heads=(2,),
                                    window_size=4, drop_path_rate=0.0, head="restore", residual=True)
    x = torch.rand(2, 3, 34, 40)  # half resolution 17x20 is padded to the window inside the stage
    out = model(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    table = model.backbone.transformer.layers[0].blocks[1].attn.relative_position_bias_table
    assert table.grad is not None and table.grad.abs().sum() > 0
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), out.detach())


def test_fused_hypercolumn_equals_concatenation(quiet_vgg):
    model = pixelforge.create_model("rrformer", embed_dim=8).eval()
    bb = model.backbone
    x = torch.rand(1, 3, 37, 50)
    with torch.no_grad():
        taps = bb.vgg(x)
        column = torch.cat([x] + [F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False)
                                  for t in taps], dim=1)
        assert column.shape[1] == 1475
        torch.testing.assert_close(bb.embed(x), F.relu(bb.conv1(column)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [(17, 35), (33, 50), (64, 64)])
def test_any_size_keeps_size(quiet_vgg, size):
    model = pixelforge.create_model("rrformer", embed_dim=8).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, *size)).shape == (1, 3, *size)


def test_backbone_with_other_heads(quiet_vgg):
    residual = pixelforge.create_model("rrformer", embed_dim=8, head="restore", residual=True, kernel_size=3)
    assert residual.head.residual and residual.head.act is None
    sr = pixelforge.create_model("rrformer", embed_dim=8, head="upsample", upscale=2, upsampler="pixelshuffledirect")
    with torch.no_grad():
        assert sr(torch.rand(1, 3, 32, 40)).shape == (1, 3, 64, 80)


def test_random_vgg_warns_once_and_is_deterministic(tmp_home, monkeypatch):
    monkeypatch.setattr(vgg_module, "_RANDOM_WARNED", False)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED frozen VGG-19") as record:
        a = VGG19Features(("relu2_1",), purpose="the RRFormer hypercolumn")
        b = VGG19Features(("relu2_1",))
    assert len([w for w in record if "VGG-19" in str(w.message)]) == 1
    assert "the RRFormer hypercolumn" in str(record[0].message)
    assert not a.pretrained
    torch.testing.assert_close(a.features[2].weight, b.features[2].weight, atol=0, rtol=0)


def test_local_vgg_file_is_used(tmp_home):
    case, _, folder = parity_case("rrformer_small")
    ckpt = torch.load(case_checkpoint(case, folder), map_location="cpu", weights_only=True)
    (tmp_home / "weights").mkdir(parents=True)
    torch.save(ckpt["vgg19_features_random_fp16"], tmp_home / "weights" / "vgg19.pth")  # fp16, torchvision names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feats = VGG19Features(("relu1_1",))
        loss = VGGPerceptualLoss()
    assert feats.pretrained and feats.features[0].weight.dtype == torch.float32
    stored = ckpt["vgg19_features_random_fp16"]["features.0.weight"]
    torch.testing.assert_close(feats.features[0].weight, stored.float())
    x = torch.rand(1, 3, 32, 32)
    assert loss(x, x).item() == 0 and loss(x, x.flip(-1)).item() > 0


def test_bad_vgg_weights_are_named(tmp_home):
    bad = {"features.0.weight": torch.zeros(64, 3, 5, 5), "features.0.bias": torch.zeros(64)}
    with pytest.raises(CheckpointError, match=r"features\.0\.weight \(64, 3, 5, 5\)"):
        VGG19Features(("relu1_1",), weights=bad)
    with pytest.raises(CheckpointError, match="no torchvision VGG-19 weights"):
        VGG19Features(("relu1_1",), weights={"conv.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="perceptual loss needs VGG-19 weights"):
        VGGPerceptualLoss()  # $PIXELFORGE_HOME is empty


@pytest.mark.parametrize("name, args", [
    ("cfsr_dereflect", dict(embed_dim=8, depths=(1,))),
    ("hat_s_dereflect", dict(embed_dim=12, depths=(1,), num_heads=2, window_size=8, compress_ratio=3,
                             squeeze_factor=4)),
    ("craft_dereflect", dict(embed_dim=32, depths=(1,), num_heads=2, split_size_0=4, split_size_1=8)),
])
def test_sr_backbones_as_dereflection_models(name, args):
    model = pixelforge.create_model(name, **args).eval()
    assert model.upscale == 1 and model.head.residual  # restoration head: input + correction
    with torch.no_grad():
        assert model(torch.rand(1, 3, 19, 27)).shape == (1, 3, 19, 27)
    with pytest.raises(FileNotFoundError, match="no pretrained weights"):
        pixelforge.create_model(name, pretrained=True, **args)

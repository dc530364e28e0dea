"""SReT against the official fixtures (incl. eval-time slice shuffles), the released layouts and the timm API."""
import pytest
import timm
import torch

import pixelforge
from conftest import PARITY, case_checkpoint, keys_manifest, parity_case, random_state_from_manifest
from pixelforge.vision.sret import official_state_dict


def _load(name):
    case, io, folder = parity_case(name)
    model = pixelforge.load_official(case_checkpoint(case, folder), case["model"], case["official"]["kwargs"])
    return case, io, model


def test_official_parity():
    case, io, model = _load("sret_small")
    with torch.no_grad():
        out = model(io["input"])
    torch.testing.assert_close(out, io["logits"], atol=case["atol"], rtol=case["rtol"])


def test_shuffle_fixture_by_injected_permutations():
    case, io, model = _load("sret_small_shuffle")
    stored = iter([io[p["tensor"]] for p in case["permutations"]])
    calls = []

    def source(stage, position, num_tokens):
        calls.append((stage, position, num_tokens))
        return next(stored)

    model.set_slice_permutation(source)
    with torch.no_grad():
        out = model(io["input"])
    torch.testing.assert_close(out, io["logits"], atol=case["atol"], rtol=case["rtol"])
    assert calls == [(p["stage"], p["block_position"], p["tokens"]) for p in case["permutations"]]


def test_shuffle_fixture_by_seeding_the_default_generator():
    case, io, model = _load("sret_small_shuffle")  # default source: torch.randperm at the official call sites
    torch.manual_seed(case["randperm_seed"])
    with torch.no_grad():
        out = model(io["input"])
    torch.testing.assert_close(out, io["logits"], atol=case["atol"], rtol=case["rtol"])


def test_permutation_sources():
    torch.manual_seed(0)
    model = pixelforge.create_model("SReT_T", img_size=64, base_dims=(8, 8, 8), depth=(2, 2, 2),
                                    recursive_num=(1, 1, 1), num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.set_slice_permutation(torch.Generator().manual_seed(1))
        a = model(x)
        model.set_slice_permutation(torch.Generator().manual_seed(1))
        b = model(x)
        model.set_slice_permutation("off")
        c = model(x)
        model.set_slice_permutation(lambda stage, pos, n: torch.arange(n))  # identity = no shuffle
        d = model(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(c, d)
    with pytest.raises(ValueError, match="slice permutation"):
        model.set_slice_permutation("fixed")


def test_recursive_flag_follows_list_positions():
    """loops = 3: the official rule marks positions 2, 6, 10 (not 'every second use')."""
    model = pixelforge.create_model("SReT_T", img_size=32, base_dims=(8,), heads=(2,), depth=(6,),
                                    recursive_num=(2,), groups1=(1,), groups2=(2,), num_classes=3)
    positions = []
    model.set_slice_permutation(lambda stage, pos, n: positions.append(pos) or torch.randperm(n))
    model(torch.randn(1, 3, 32, 32))
    assert model.stages[0].loops == 3 and positions == [2, 6, 10]


_MANIFESTS = sorted(p.stem for p in (PARITY / "keys").glob("SReT_*.json")) or ["SReT_T"]


@pytest.mark.parametrize("variant", _MANIFESTS)
def test_released_layout_loads_strictly(variant):
    manifest = keys_manifest(variant)
    state = random_state_from_manifest(manifest, device="meta")[manifest["wrapper"]]
    with torch.device("meta"):
        official = pixelforge.load_official({"model": state, "epoch": torch.tensor(3)},
                                            config=manifest["official"]["kwargs"])
        registered = pixelforge.create_model(variant, weights=state)
    for model in (official, registered):
        assert sum(p.numel() for p in model.parameters()) == manifest["n_params"]
        assert len(model.state_dict()) == manifest["n_unique_tensors"]  # shared blocks stored once
    assert [s.groups1 for s in official.stages] == [s.groups1 for s in registered.stages]
    assert [s.groups2 for s in official.stages] == [s.groups2 for s in registered.stages]
    assert set(official_state_dict(registered)) == set(manifest["keys"])


def test_aliases_must_agree():
    case, _, folder = parity_case("sret_small")
    raw = torch.load(case_checkpoint(case, folder), weights_only=True)
    state = dict(raw["model"])
    key = "transformers.0.blocks.2.attn.qkv.weight"
    state[key] = state[key] + 1
    with pytest.raises(pixelforge.CheckpointError, match=key):
        pixelforge.load_official({"model": state}, "sret", case["official"]["kwargs"])


def test_official_layout_round_trip():
    case, io, model = _load("sret_small")
    again = pixelforge.load_official({"model": official_state_dict(model)}, "sret", case["official"]["kwargs"])
    with torch.no_grad():
        torch.testing.assert_close(again(io["input"]), io["logits"], atol=case["atol"], rtol=case["rtol"])


def test_inferred_configuration_without_kwargs():
    """Depth, recursion (from the aliases), widths and MLP ratios come from the weights alone."""
    case, io, _ = _load("sret_small")
    cfg = {k: case["official"]["kwargs"][k] for k in ("heads", "groups1", "groups2")}
    model = pixelforge.load_official(case_checkpoint(case, PARITY / "sret_small"), config=cfg)
    assert [s.loops for s in model.stages] == [2, 2, 2] and model.img_size == 96
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=case["atol"], rtol=case["rtol"])


def test_timm_api_and_features():
    kw = dict(img_size=64, base_dims=(8, 8, 8), depth=(2, 2, 2), recursive_num=(1, 1, 1))
    model = timm.create_model("SReT_T", num_classes=4, **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    model.set_slice_permutation("off")
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 2, 2) and model.num_features == 64
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    model.reset_classifier(2)
    assert model(x).shape == (2, 2)
    fm = timm.create_model("SReT_T_wo_slice", features_only=True, out_indices=(0, 1, 2), **kw)
    assert [f.shape[1:] for f in fm(x)] == [(16, 8, 8), (32, 4, 4), (64, 2, 2)]
    assert fm.feature_info.reduction() == [8, 16, 32]
    with pytest.raises(ValueError, match="equal slices"):
        pixelforge.create_model("SReT_T", groups1=(5, 4, 1), **kw)(x)

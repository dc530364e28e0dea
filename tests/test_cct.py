"""CCT / CVT / ViT-Lite against the official fixtures, the released layouts and the timm model API."""
import json

import pytest
import timm
import torch

import pixelforge
from conftest import PARITY, case_checkpoint, keys_manifest, parity_case, random_state_from_manifest
from pixelforge.layers.pos_embed import sinusoidal_table


@pytest.mark.parametrize("name", ["cct_small", "cct_sine", "cvt_small", "vit_lite_small"])
def test_official_parity(name):
    case, io, folder = parity_case(name)
    model = pixelforge.load_official(case_checkpoint(case, folder), case["model"], case["official"]["kwargs"])
    with torch.no_grad():
        out = model(io["input"])
    torch.testing.assert_close(out, io["logits"], atol=case["atol"], rtol=case["rtol"])


def test_sinusoid_table_is_bit_exact():
    _, io, _ = parity_case("cct_sine")
    table = io["sine_positional_emb"]
    assert torch.equal(sinusoidal_table(table.shape[1], table.shape[2]), table)


def test_sine_factories_build_a_real_sinusoid():
    model = pixelforge.create_model("cct_2_3x2_32_sine")
    assert torch.equal(model.pos_embed, sinusoidal_table(64, 128))
    assert "pos_embed" not in dict(model.named_parameters())  # fixed, not trained
    assert "pos_embed" in model.state_dict()  # but stored, as in the official checkpoints


_MANIFESTS = sorted(p.stem for p in (PARITY / "keys").glob("cct_*.json")) or ["cct_2_3x2_32"]


@pytest.mark.parametrize("variant", _MANIFESTS)
def test_released_layout_loads_strictly(variant):
    manifest = keys_manifest(variant)
    state = random_state_from_manifest(manifest, device="meta")  # shapes and keys only: fast for the large ones
    with torch.device("meta"):
        official = pixelforge.load_official(state, config=manifest["official"]["kwargs"])  # family from the keys
        registered = pixelforge.create_model(variant, weights=state)
    for model in (official, registered):
        assert model.pos_embed_type == ("sine" if "_sine" in variant else "learnable")
        if "_sine" not in variant:
            assert sum(p.numel() for p in model.parameters()) == manifest["n_params"]
    tok_o, tok_r = official.tokenizer, registered.tokenizer
    assert (tok_o.stride, tok_o.padding, official.grid_size) == (tok_r.stride, tok_r.padding, registered.grid_size)


def test_parameter_counts_of_the_paper_table():
    counts = {"cct_2_3x2_32": 283_723, "cct_7_3x1_32": 3_760_139, "cvt_2_4_32": 214_539, "vit_2_4_32": 214_666,
              "cct_6_3x1_32": 3_233_803}
    for name, n in counts.items():
        with torch.device("meta"):
            model = pixelforge.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == n, name


def test_learnable_embedding_is_resized_on_load():
    case, io, folder = parity_case("vit_lite_small")
    model = pixelforge.create_model("vit_2_4_32", img_size=48, weights=case_checkpoint(case, folder))
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 128)
    official_pe = torch.load(case_checkpoint(case, folder), weights_only=True)["classifier.positional_emb"]
    assert torch.equal(model.pos_embed[:, 0], official_pe[:, 0])  # the class row is kept as is
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_wrong_input_size_is_a_clear_error():
    model = pixelforge.create_model("cct_2_3x2_32")
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.randn(1, 3, 64, 64))


def test_timm_api():
    model = timm.create_model("cct_2_3x2_32", num_classes=7, depth=3).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 64, 128) and model.num_features == 128
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 128)
    assert model(x).shape == (2, 7)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    assert model.no_weight_decay() >= {"pos_embed"}
    final, inter = model.forward_intermediates(x, indices=2)
    assert [t.shape for t in inter] == [(2, 128, 8, 8)] * 2
    torch.testing.assert_close(final, tokens)
    vit = timm.create_model("vit_2_4_32", features_only=True, out_indices=(0, 1))
    assert [f.shape for f in vit(x)] == [(2, 128, 8, 8)] * 2
    assert vit.feature_info.reduction() == [4, 4]


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = pixelforge.create_model("cct_2_3x2_32", drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)  # the same attention-dropout draws: recomputation must replay them
        model(x).square().sum().backward()
        grads.append(model.tokenizer.convs[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_unknown_pos_embed_kind_is_refused():
    with pytest.raises(ValueError, match="pos_embed"):
        pixelforge.create_model("cct_2_3x2_32", pos_embed="rope")


def test_manifests_cover_the_official_names():
    names = {p.stem for p in (PARITY / "keys").glob("cct_*.json")}
    if not names:
        pytest.skip("keys manifests not available")
    assert names <= set(pixelforge.list_models("cct_*"))
    assert all(json.loads((PARITY / "keys" / f"{n}.json").read_text())["wrapper"] is None for n in names)


def test_attention_dropout_in_training_only():
    """Official CCT drops attention probabilities (p = attention_dropout, 0.1) in training; eval is deterministic."""
    torch.manual_seed(0)
    model = pixelforge.create_model("cct_2_3x2_32", drop_path_rate=0.0)
    assert model.blocks[0].attn.attn_drop == 0.1
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    quiet = pixelforge.create_model("cct_2_3x2_32", drop_path_rate=0.0, attn_drop_rate=0.0)
    assert torch.equal(quiet(x), quiet(x))

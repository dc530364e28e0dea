"""VAR tokenizer and transformer against the official fixtures, the released layouts, and sampling invariants."""
import pytest
import torch
from torch import nn

import pixelforge
from conftest import case_checkpoint, keys_manifest, parity_case, random_state_from_manifest
from pixelforge.generative.var import VAR, VQVAE, block_causal_mask, filter_logits_, phi_indices, sample
from pixelforge.generative.var import transformer as var_transformer
from pixelforge.generative.var import vqvae as var_vqvae
from pixelforge.zoo import CheckpointError


def _load(name):
    case, io, folder = parity_case(name)
    model = pixelforge.load_official(case_checkpoint(case, folder), case["model"], case["official"]["kwargs"])
    return case, io, model


def _pair():
    """The var_small transformer and the var_vqvae_small tokenizer it was built with."""
    _, _, var = _load("var_small")
    _, _, vqvae = _load("var_vqvae_small")
    return var, vqvae


def _close(actual, expected, case, atol=None):
    torch.testing.assert_close(actual, expected, atol=atol or case["atol"], rtol=case["rtol"])


@pytest.mark.parametrize("name", ["var_vqvae_small", "var_vqvae_phi10"])
def test_vqvae_parity(name):
    case, io, model = _load(name)
    assert model.quantize.phi_index == case["config"]["phi_index_per_scale"]
    image = io["image"]
    with torch.no_grad():
        f = model.encode(image)
        _close(f, io["enc_f"], case)
        idx = model.img_to_idx(image)
        for i, t in enumerate(idx):
            assert torch.equal(t, io[f"idx_s{i}"]), f"tokens of scale {i} differ"
        assert torch.equal(torch.cat(idx, 1), io["idx_BL"])
        fhat = model.quantize.f_to_idx(f, to_fhat=True)
        _close(torch.stack(fhat), io["fhat_cumulative"], case)
        _close(model.idx_to_img(idx), io["recon_from_idx"], case)
        _close(model.quantize.idx_to_var_input(idx), io["x_BLCv_wo_first_l"], case)
        if "recon_progressive" in io:
            _close(model.quantize.idx_to_fhat(idx), io["fhat_from_idx"], case)
            _close(torch.stack(model.idx_to_img(idx, progressive=True)), io["recon_progressive"], case)
            _close(model.reconstruct(image), io["recon_direct"], case)
            _close(model.fhat_to_img(fhat[-1]), io["recon_from_fhat"], case)


def test_phi_index_table_with_float64_ties():
    table = {2: [0, 3], 3: [0, 2, 3], 5: [0, 1, 2, 2, 3], 7: [0, 0, 1, 2, 2, 3, 3], 9: [0, 0, 1, 1, 2, 2, 2, 3, 3],
             10: [0, 0, 1, 1, 1, 2, 2, 3, 3, 3], 13: [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3],
             14: [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]}
    for scales, expected in table.items():
        assert phi_indices(4, scales) == expected, scales
    assert phi_indices(1, 5) == [0] * 5
    assert phi_indices(10, 10) == list(range(10))  # one Phi per scale


def test_var_parity_teacher_forcing():
    case, io, var = _load("var_small")
    assert (var.depth, var.num_heads, var.patch_nums, var.num_classes) == (3, 4, (1, 2, 3, 4, 6, 8), 10)
    states = []
    hooks = [b.register_forward_hook(lambda m, i, o: states.append(o)) for b in var.blocks]
    with torch.no_grad():
        logits = var(io["label_B"], io["x_BLCv_wo_first_l"])
        for h in hooks:
            h.remove()
        logits_null = var(io["label_B_null"], io["x_BLCv_wo_first_l"])
    _close(logits, io["logits_BLV"], case)
    _close(logits_null, io["logits_BLV_null"], case)
    for i, s in enumerate(states):
        _close(s, io[f"block{i}_out"], case)
    ce = nn.functional.cross_entropy(logits.transpose(1, 2), io["gt_idx_BL"], reduction="none")
    _close(ce, io["ce_per_token"], case)
    _close((ce / var.L).sum(-1).mean(), io["train_loss"], case)


def test_kv_cache_fixture_and_uncached_equality():
    case, io, _ = parity_case("var_small_kvcache")
    var, vqvae = _pair()
    labels = io["label_B"]
    cached = sample(var, vqvae, 2, labels, cfg=1.5, top_k=42, top_p=0.9, generator=torch.Generator().manual_seed(42),
                    keep_logits=True)
    assert torch.equal(torch.cat(cached.tokens, 1), io["idx_BL"])
    _close(torch.cat(cached.logits_raw, 1), io["ar_logits_raw_2BLV"], case)
    idx = cached.tokens
    with torch.no_grad():
        x = vqvae.quantize.idx_to_var_input(idx)
        _close(x, io["x_BLCv_wo_first_l"], case)
        tf_cond, tf_uncond = var(labels, x), var(io["label_B_null"], x)
        _close(tf_cond, io["tf_logits_cond"], case)
        _close(tf_uncond, io["tf_logits_uncond"], case)
        # our KV-cached logits equal our masked teacher-forcing forward
        _close(torch.cat(cached.logits_raw, 1), torch.cat((tf_cond, tf_uncond)), case)
        _close(vqvae.idx_to_img(idx).add(1).mul(0.5), io["img_from_idx"], case)
    _close(cached.images, io["img_ar"], case)
    uncached = sample(var, vqvae, 2, labels, cfg=1.5, top_k=42, top_p=0.9,
                      generator=torch.Generator().manual_seed(42), use_cache=False, keep_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(uncached.tokens, cached.tokens))
    _close(torch.cat(uncached.logits_raw, 1), torch.cat(cached.logits_raw, 1), case)


@pytest.mark.parametrize("run", ["A", "B", "C"])
def test_seeded_sampling_reproduces_official_tokens(run):
    case, io, _ = parity_case("var_small_sample")
    var, vqvae = _pair()
    args = case["runs"][run]["args"]
    labels = None if args["label_B"] is None else torch.tensor(args["label_B"])
    out = sample(var, vqvae, args["B"], labels, cfg=args["cfg"], top_k=args["top_k"], top_p=args["top_p"],
                 more_smooth=args["more_smooth"], generator=torch.Generator().manual_seed(args["g_seed"]),
                 keep_logits=True)
    assert out.labels.tolist() == case["runs"][run]["labels_used"]
    tol = {k.split("_s*")[0].replace(f"{run}_", ""): v for k, v in case.get("per_tensor_atol", {}).items()
           if k.startswith(f"{run}_")}
    for si in range(len(var.patch_nums)):
        assert torch.equal(out.tokens[si], io[f"{run}_idx_s{si}"]), f"run {run}: tokens of scale {si} differ"
        _close(out.logits_cfg[si], io[f"{run}_logits_cfg_s{si}"], case, tol.get("logits_cfg"))
        expected = io[f"{run}_logits_filtered_s{si}"]
        assert torch.equal(out.logits_filtered[si].isinf(), expected.isinf())
        finite = expected.isfinite()
        _close(out.logits_filtered[si][finite], expected[finite], case, tol.get("logits_filtered"))
        if args["more_smooth"]:
            _close(out.gumbel_soft[si], io[f"{run}_gumbel_soft_s{si}"], case, tol.get("gumbel_soft"))
    _close(out.f_hat, io[f"{run}_fhat"], case, tol.get("fhat"))
    _close(out.images, io[f"{run}_img"], case, tol.get("img"))


@pytest.mark.parametrize("variant,depth,shared", [("var_d12", 12, False), ("var_d16", 16, False),
                                                  ("var_d20", 20, False), ("var_d24", 24, False),
                                                  ("var_d30", 30, False), ("var_d36", 36, True)])
def test_released_var_layouts(variant, depth, shared):
    state = random_state_from_manifest(keys_manifest(variant), device="meta")
    model = pixelforge.load_official(state)  # family, sizes and patch_nums inferred from the keys alone
    assert isinstance(model, VAR)
    assert (model.depth, model.num_heads, model.embed_dim, model.shared_aln) == (depth, depth, 64 * depth, shared)
    assert model.patch_nums == var_transformer.PATCH_NUMS[512 if shared else 256]
    with torch.device("meta"):  # the registered configuration has exactly the released layout
        registered = pixelforge.create_model(variant, weights=state)
    assert registered.patch_nums == model.patch_nums
    assert set(var_transformer.official_state_dict(registered)) == set(keys_manifest(variant)["keys"])


def test_released_vqvae_layout():
    manifest = keys_manifest("vae_ch160v4096z32")
    state = random_state_from_manifest(manifest, device="meta")
    model = pixelforge.load_official(state)
    assert isinstance(model, VQVAE)
    assert model.quantize.phi_index == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert sum(p.numel() for p in model.parameters()) == 108_948_355
    with torch.device("meta"):
        registered = pixelforge.create_model("var_vqvae_f16", weights=state)
    assert registered.image_size == 256
    assert set(var_vqvae.official_state_dict(registered)) == set(manifest["keys"])


@pytest.mark.parametrize("share", [0, 1, 3])
def test_vqvae_official_layout_round_trip(share):
    torch.manual_seed(0)
    model = VQVAE(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, share_quant_resi=share,
                  patch_nums=(1, 2, 4, 8)).eval()
    state = var_vqvae.official_state_dict(model)
    assert any(k.startswith({0: "quantize.quant_resi.0.", 1: "quantize.quant_resi.qresi.",
                             3: "quantize.quant_resi.qresi_ls.2."}[share]) for k in state)
    loaded = pixelforge.load_official(state, config={"v_patch_nums": (1, 2, 4, 8)})
    assert loaded.quantize.phi_index == model.quantize.phi_index
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert [t.tolist() for t in loaded.img_to_idx(x)] == [t.tolist() for t in model.img_to_idx(x)]


def test_var_buffers_are_checked():
    _, _, folder = parity_case("var_small")
    state = torch.load(folder / "checkpoint.pth", weights_only=True)
    state["attn_bias_for_masking"] = torch.zeros_like(state["attn_bias_for_masking"])  # a causal mask gone wrong
    with pytest.raises(CheckpointError, match="attn_bias_for_masking"):
        pixelforge.load_official(state, "var")
    state.pop("attn_bias_for_masking")
    state["lvl_1L"] = torch.zeros_like(state["lvl_1L"])
    with pytest.raises(CheckpointError, match="lvl_1L"):
        pixelforge.load_official(state, "var", {"patch_nums": [1, 2, 3, 4, 6, 8]})


def test_no_global_state_change():
    before = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Embedding)}
    VQVAE(vocab_size=32, z_channels=8, ch=32, ch_mult=(1,), patch_nums=(1, 2))
    VAR(vocab_size=32, Cvae=8, num_classes=3, depth=1, embed_dim=32, num_heads=2, patch_nums=(1, 2))
    assert all(cls.reset_parameters is fn for cls, fn in before.items())
    assert nn.Linear(4, 4).weight.abs().sum() > 0


def test_block_causal_mask():
    mask = block_causal_mask((1, 2, 3))[0]
    allowed = mask == 0
    assert allowed[0].tolist() == [True] + [False] * 13  # the start token sees only itself
    assert allowed[1:5, :5].all() and not allowed[1:5, 5:].any()  # scale 2 sees scales 1-2, all of its own
    assert allowed[5:].all()
    assert mask[~allowed].eq(-torch.inf).all()


def test_top_k_top_p_filter():
    logits = torch.tensor([[[3.0, 1.0, 1.0, 0.0, -1.0]]])
    assert filter_logits_(logits.clone(), top_k=2).isfinite().tolist() == [[[True, True, True, False, False]]]
    kept = filter_logits_(torch.tensor([[[10.0, 0.0, -1.0]]]), top_p=0.5).isfinite()
    assert kept.tolist() == [[[True, False, False]]]  # the largest is always kept
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().view(1, 1, 4)
    assert filter_logits_(probs.clone(), top_p=0.75).isfinite().tolist() == [[[True, True, False, False]]]


def _tiny_pair(shared_aln: bool):
    torch.manual_seed(0)
    patch_nums = (1, 2, 4)
    vqvae = VQVAE(vocab_size=48, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=patch_nums)
    var = VAR(vocab_size=48, Cvae=8, num_classes=5, depth=2, embed_dim=64, num_heads=2, shared_aln=shared_aln,
              patch_nums=patch_nums, init_adaln_gamma=0.5, init_head=1.0)
    return var.eval(), vqvae.eval()


@pytest.mark.parametrize("shared_aln", [False, True])
def test_cached_sampling_equals_masked_forward(shared_aln):
    var, vqvae = _tiny_pair(shared_aln)
    kw = dict(cfg=2.0, top_k=10, top_p=0.9, keep_logits=True)
    cached = sample(var, vqvae, 3, torch.tensor([0, 4, 5]), generator=torch.Generator().manual_seed(1), **kw)
    uncached = sample(var, vqvae, 3, torch.tensor([0, 4, 5]), generator=torch.Generator().manual_seed(1),
                      use_cache=False, **kw)
    assert all(torch.equal(a, b) for a, b in zip(cached.tokens, uncached.tokens))
    torch.testing.assert_close(cached.images, uncached.images, atol=1e-5, rtol=0)
    with torch.no_grad():
        x = vqvae.quantize.idx_to_var_input(cached.tokens)
        tf = torch.cat((var(cached.labels, x), var(torch.full((3,), 5), x)))
    torch.testing.assert_close(torch.cat(cached.logits_raw, 1), tf, atol=1e-5, rtol=1e-5)
    assert cached.images.shape == (3, 3, 8, 8) and 0 <= cached.images.min() and cached.images.max() <= 1


def test_sampling_seeds_labels_and_errors():
    var, vqvae = _tiny_pair(False)
    a = sample(var, vqvae, 2, None, generator=torch.Generator().manual_seed(3))
    b = sample(var, vqvae, 2, None, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.labels, b.labels) and all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    assert sample(var, vqvae, 2, -1, generator=torch.Generator().manual_seed(0)).labels.tolist() == [5, 5]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\]"):
        sample(var, vqvae, 2, torch.tensor([0, 6]))
    other = VQVAE(vocab_size=48, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 4))
    with pytest.raises(ValueError, match="patch_nums"):
        sample(var, other, 1, 0)


def test_label_dropout_only_in_training():
    var, vqvae = _tiny_pair(False)
    var.cond_drop_rate = 1.0
    x = torch.randn(2, var.L - 1, 8)
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        assert not torch.allclose(var(labels, x), var(torch.full((2,), 5), x))
        var.train()
        torch.testing.assert_close(var(labels, x), var(torch.full((2,), 5), x))


def test_vqvae_training_pass_has_straight_through_gradients():
    _, vqvae = _tiny_pair(False)
    vqvae.train()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    recon, vq_loss, idx = vqvae(x)
    assert recon.shape == x.shape and [t.shape for t in idx] == [(2, 1), (2, 4), (2, 16)]
    ((recon - x).abs().mean() + vq_loss).backward()
    assert vqvae.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert vqvae.quantize.embedding.weight.grad.abs().sum() > 0  # codebook term
    assert vqvae.quantize.phis[0].weight.grad.abs().sum() > 0


def test_latent_size_must_match_last_scale():
    _, vqvae = _tiny_pair(False)
    with pytest.raises(ValueError, match="last scale 4x4"):
        vqvae.img_to_idx(torch.zeros(1, 3, 16, 16))


def test_quantizer_runs_in_float32_under_bf16_autocast():
    """Tokenising inside a bf16-autocast training step (codebook re-seeding, evaluation) quantises in float32:
    the same tokens as outside autocast, also for a bfloat16 latent."""
    _, vqvae = _tiny_pair(False)
    q = vqvae.quantize
    f = torch.randn(2, q.dim, 4, 4)
    ref = q.f_to_idx(f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = q.f_to_idx(f)
        x = torch.rand(2, 3, 8, 8) * 2 - 1
        tokens = vqvae.img_to_idx(x)
        recon, vq_loss, _ = vqvae.train()(x)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert [t.shape for t in tokens] == [(2, 1), (2, 4), (2, 16)] and vq_loss.dtype == torch.float32
    assert all(t.shape == r.shape for t, r in zip(q.f_to_idx(f.bfloat16()), ref))

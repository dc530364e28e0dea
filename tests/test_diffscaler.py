"""DiT (layouts: ours/official, diffusers), the DiffScaler Affiner and its baselines, and the sampling pipeline."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import pixelforge
from pixelforge.generative.diffscaler import DiT, apply_diffscaler, route_tasks
from pixelforge.generative.diffscaler import affiner as aff
from pixelforge.generative.diffscaler.dit import sincos_pos_embed_2d, timestep_embedding
from pixelforge.generative.diffscaler.pipeline import DiffScalerPipeline, generate_images, make_scheduler
from pixelforge.zoo import CheckpointError

TINY = dict(sample_size=8, patch_size=2, in_channels=3, num_layers=2, hidden_size=32, num_heads=2, num_classes=5)


def _randomise(module: nn.Module, std: float = 0.1, only: str | None = None, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if only is None or only in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _tiny(learn_sigma: bool = False, **kw) -> DiT:
    model = DiT(**{**TINY, "learn_sigma": learn_sigma, **kw}).eval()
    _randomise(model)
    return model


def _inputs(b: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (b,), generator=gen)
    return x, t


def _adapted(method: str = "diffscaler", rank: int = 4, tasks=None) -> DiT:
    model = _tiny()
    tasks = tasks or [{"name": "a", "num_classes": 3}, {"name": "b", "num_classes": 0},
                      {"name": "c", "num_classes": 7}]
    model.apply_adapter(method, rank=rank, tasks=tasks)
    _randomise(model, only=".tasks.", seed=2)
    return model


# ---- DiT itself ------------------------------------------------------------------------------------------------


def test_embeddings_match_reference_formulas():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding

    t = torch.tensor([0, 1, 17, 999])
    for shift in (0, 1):
        ref = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=shift)
        assert torch.allclose(timestep_embedding(t, 256, shift), ref, atol=1e-6)
    ref = get_2d_sincos_pos_embed(64, (3, 5), base_size=3)  # rows, cols: diffusers' non-square grid
    assert torch.allclose(sincos_pos_embed_2d(64, 3, 5, base_size=3), ref.float(), atol=1e-6)


@pytest.mark.parametrize("learn_sigma,shared", [(True, False), (False, True)])
def test_loads_diffusers_dit_layout(tmp_path, learn_sigma, shared):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    ref = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                out_channels=8 if learn_sigma else 4, num_layers=2, sample_size=8, patch_size=2,
                                num_embeds_ada_norm=7).eval()
    _randomise(ref)
    if shared:  # the released weights: every block holds the same embedder copy
        for blk in ref.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(ref.transformer_blocks[0].norm1.emb.state_dict())
    ref.save_pretrained(tmp_path)
    model = DiT.from_diffusers(tmp_path).eval()
    assert model.config.block_embedders is (not shared)
    assert model.config.out_channels == (8 if learn_sigma else 4) and model.config.timestep_freq_shift == 1
    gen = torch.Generator().manual_seed(3)
    for size in (8, 12):  # native and another grid (diffusers rescales the positions)
        x = torch.randn(3, 4, size, size, generator=gen)
        t, y = torch.tensor([3, 400, 999]), torch.tensor([0, 6, 7])  # 7 = null
        with torch.no_grad():
            diff = (ref(x, t, y).sample - model(x, t, y).sample).abs().max().item()
        assert diff < 2e-6, diff
    if not shared:  # different per-block copies cannot be shared
        with pytest.raises(CheckpointError, match="block_embedders=True"):
            DiT.from_diffusers(tmp_path, block_embedders=False)


def test_official_layout_via_load_official():
    src = _tiny(learn_sigma=True)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["pos_embed"] = src.pos_embed.clone()  # the official checkpoint carries its fixed positions
    model = pixelforge.load_official(state, config={"num_heads": 2})
    assert isinstance(model, DiT) and model.config.num_layers == 2 and model.config.learn_sigma
    assert model.config.sample_size == 8 and model.config.num_classes == 5
    x, t = _inputs()
    y = torch.tensor([0, 1, 4, 5])
    with torch.no_grad():
        assert torch.equal(model(x, t, y).sample, src(x, t, y).sample)


def test_registered_names_and_param_counts():
    assert {"dit_s_2", "dit_xl_2", "dit_tiny_4", "dit_micro_2"} <= set(pixelforge.list_models("dit*"))
    with torch.device("meta"):
        xl = pixelforge.create_model("dit_xl_2")
    # official DiT-XL/2 = 675,129,632 including its 256x1152 fixed pos_embed parameter (a buffer here)
    assert sum(p.numel() for p in xl.parameters()) + 256 * 1152 == 675_129_632
    tiny = pixelforge.create_model("dit_tiny_4")
    assert tiny.config.out_channels == 3 and 4.0e6 < sum(p.numel() for p in tiny.parameters()) < 4.4e6


def test_save_pretrained_offline_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _adapted()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["out_channels"] == 3 and [t["name"] for t in cfg["tasks"]] == ["a", "b", "c"]
    again = DiT.from_pretrained(tmp_path, local_files_only=True).eval()
    saved, loaded = model.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    x, t = _inputs()
    ids, y = torch.tensor([0, 1, 2, -1]), torch.tensor([1, 0, 6, 4])
    with torch.no_grad():  # same parameters; CPU kernels may round differently with their memory alignment
        torch.testing.assert_close(again(x, t, y, task_ids=ids).sample, model(x, t, y, task_ids=ids).sample,
                                   rtol=1e-5, atol=1e-5)


def test_label_dropout_only_in_training_and_uses_task_null():
    model = _adapted()
    x, t = _inputs(64)
    ids = torch.tensor([0, 1, 2, -1]).repeat(16)
    y = torch.zeros(64, dtype=torch.long)
    seen = []
    handle = model.get_submodule("y_embedder").register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    model.train()
    torch.manual_seed(0)
    model(x, t, y, task_ids=ids)
    model.eval()
    model(x, t, y, task_ids=ids)
    handle.remove()
    dropped = seen[0] != 0
    assert 0 < dropped.sum() < 64
    nulls = torch.tensor([3, 0, 7, 5])[[0, 1, 2, 3] * 16]  # per-sample task null rows: a, b, c, base
    assert torch.equal(seen[0][dropped], nulls[dropped]) and torch.equal(seen[1], y)


# ---- the Affiner ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["diffscaler", "difffit", "bitfit", "lora", "full"])
def test_every_task_starts_equal_to_the_base_model(method):
    model = _tiny()
    x, t = _inputs()
    y = torch.full((4,), 5)  # the base null row: each task's table starts as copies of it
    with torch.no_grad():
        base = model(x, t, y).sample
        tasks = [{"name": "a", "num_classes": 4}] if method == "full" else \
            [{"name": "a", "num_classes": 4}, {"name": "b", "num_classes": 0}]
        model.apply_adapter(method, rank=4, tasks=tasks)
        for tid in range(len(tasks)):
            ids = torch.full((4,), tid)
            assert torch.equal(model(x, t, torch.zeros(4, dtype=torch.long), task_ids=ids).sample, base)
        assert torch.equal(model(x, t, y, task_ids=torch.full((4,), -1)).sample, base)


def test_trainable_parameter_formula():
    model = _tiny()
    r = 4
    model.apply_adapter("diffscaler", rank=r, tasks=[{"name": "a", "num_classes": 3}])
    expected = 0
    for name, m in aff.task_modules(model):
        if isinstance(m, aff.AffinerLinear):
            expected += 2 * m.out_features + r * (m.in_features + m.out_features) + 1
    expected += (3 + 1) * 32  # the task's class table
    d = 32
    per_block = sum(2 * o + r * (i + o) + 1 for i, o in [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d), (d, 6 * d)])
    assert expected == 2 * per_block + (2 * 2 * d + r * 3 * d + 1) + (2 * 12 + r * (d + 12) + 1) + 4 * d
    model.trainable_task("a")
    counts = model.parameter_counts()
    assert counts["task"] == counts["trainable"] == expected
    assert counts["base"] == sum(p.numel() for p in _tiny().parameters())


def test_mixed_batch_equals_per_task_batches():
    model = _adapted()
    x, t = _inputs(6)
    ids, y = torch.tensor([2, 0, -1, 1, 0, 2]), torch.tensor([6, 2, 5, 0, 0, 7])
    with torch.no_grad():
        mixed = model(x, t, y, task_ids=ids).sample
        for tid in (-1, 0, 1, 2):
            sel = (ids == tid).nonzero().squeeze(1)
            alone = model(x[sel], t[sel], y[sel], task_ids=ids[sel]).sample
            assert torch.allclose(mixed[sel], alone, atol=1e-6, rtol=0)


def test_mixed_batch_under_bf16_autocast_trains():
    """Under autocast the base layers give bf16 and the float32 task branches float32: a mixed batch must combine
    them (it crashed in index_copy_) and match the per-task batches, forward and backward."""
    model = _adapted()
    model.trainable_task([0, 1, 2])
    x, t = _inputs(6)
    ids, y = torch.tensor([2, 0, -1, 1, 0, 2]), torch.tensor([6, 2, 5, 0, 0, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x, t, y, task_ids=ids).sample
        mixed.float().square().mean().backward()
        for tid in (-1, 0, 1, 2):
            sel = (ids == tid).nonzero().squeeze(1)
            alone = model(x[sel], t[sel], y[sel], task_ids=ids[sel]).sample
            torch.testing.assert_close(mixed[sel].float(), alone.float(), atol=2e-2, rtol=2e-2)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_training_one_task_leaves_the_others_bit_identical():
    model = _adapted()
    x, t = _inputs(6)
    ids, y = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1, 0, 3, 2, 0, 7])
    with torch.no_grad():
        before = model(x, t, y, task_ids=ids).sample
    model.trainable_task("b")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        loss = model(x, t, y, task_ids=ids).sample.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        after = model(x, t, y, task_ids=ids).sample
    other = ids != 1
    assert torch.equal(after[other], before[other])
    assert not torch.allclose(after[~other], before[~other])


@pytest.mark.parametrize("method", ["diffscaler", "lora", "difffit", "full"])
def test_merge_task_equals_adapted_model(tmp_path, method):
    tasks = [{"name": "a", "num_classes": 3}] + ([] if method == "full" else [{"name": "b", "num_classes": 0}])
    model = _adapted(method, tasks=tasks)
    merged = model.merge_task("a").eval()
    kinds = {type(m) for m in merged.modules()}
    assert not kinds & {aff.AffinerLinear, aff.TaskLabelEmbedder}
    assert (aff.BranchedLinear in kinds) == (method == "diffscaler")  # ReLU branches cannot fold into W
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        ref = model(x, t, y, task_ids=torch.zeros(4, dtype=torch.long)).sample
        out = merged(x, t, y).sample
        assert torch.allclose(out, ref, atol=2e-6, rtol=1e-5), (out - ref).abs().max()
        merged.save_pretrained(tmp_path)
        again = DiT.from_pretrained(tmp_path, local_files_only=True).eval()
        assert torch.equal(again(x, t, y).sample, out)


def test_task_files_add_and_reload_without_touching_other_tasks(tmp_path):
    model = _adapted()
    x, t = _inputs(6)
    ids, y = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1, 0, 3, 2, 0, 7])
    with torch.no_grad():
        ref = model(x, t, y, task_ids=ids).sample
    files = [model.save_task(name, tmp_path / f"{name}.safetensors") for name in ("a", "b", "c")]
    fresh = _tiny()
    for f in files[:2]:
        fresh.load_task(f)
    with torch.no_grad():
        first_two = fresh(x[:2], t[:2], y[:2], task_ids=ids[:2]).sample
        fresh.load_task(files[2])
        assert torch.equal(fresh(x[:2], t[:2], y[:2], task_ids=ids[:2]).sample, first_two)
        assert torch.equal(fresh(x, t, y, task_ids=ids).sample, ref)
        new = fresh.add_task("d", num_classes=2)  # a later task: zero start, others unchanged
        assert torch.equal(fresh(x, t, y, task_ids=ids).sample, ref)
        assert torch.equal(fresh(x, t, torch.full((6,), 2), task_ids=torch.full((6,), new)).sample,
                           fresh(x, t, torch.full((6,), 5)).sample)
    lora = _tiny().apply_adapter("lora", rank=4)
    with pytest.raises(CheckpointError, match="trained with adapter 'diffscaler'"):
        lora.load_task(files[0])


def test_conv_affiner_on_a_diffusers_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    x, t = _inputs(4)
    with torch.no_grad():
        base = unet(x, t).sample
        apply_diffscaler(unet, num_tasks=2, rank=2, targets=["*"], exclude=[])
        assert any(isinstance(m, aff.AffinerConv2d) for m in unet.modules())
        ids = torch.tensor([0, 1, 1, -1])
        with route_tasks(unet, ids):
            assert torch.equal(unet(x, t).sample, base)
        _randomise(unet, only=".tasks.", std=0.05)
        with route_tasks(unet, ids):
            mixed = unet(x, t).sample
        with route_tasks(unet, ids[1:3]):
            assert torch.allclose(unet(x[1:3], t[1:3]).sample, mixed[1:3], atol=1e-5)
        aff.merge_task(unet, 1)
        assert torch.allclose(unet(x[1:3], t[1:3]).sample, mixed[1:3], atol=1e-5)


# ---- pipeline ------------------------------------------------------------------------------------------------------


def test_pipeline_reproducible_after_offline_reload_and_scheduler_swap(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = DiffScalerPipeline(_adapted(), make_scheduler("ddpm"))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(class_labels=[0, 2, 0], task=[0, "a", "b"], guidance_scale=1.5, num_inference_steps=4, output_type="pt")
    out = pipe(generator=torch.Generator().manual_seed(7), **kw).images
    pipe.save_pretrained(tmp_path)
    again = DiffScalerPipeline.from_pretrained(tmp_path, local_files_only=True)
    again.set_progress_bar_config(disable=True)
    assert again.vae is None and isinstance(again.transformer, DiT)
    assert torch.equal(again(generator=torch.Generator().manual_seed(7), **kw).images, out)
    assert not torch.equal(again(generator=torch.Generator().manual_seed(8), **kw).images, out)
    for name in ("ddim", "dpm++"):
        again.scheduler = make_scheduler(name, dict(again.scheduler.config))
        imgs = again(generator=torch.Generator().manual_seed(7), **kw).images
        assert imgs.shape == (3, 3, 8, 8) and torch.isfinite(imgs).all()


def test_pipeline_guidance_uses_each_tasks_null_class_and_mixed_batches():
    model = _adapted()
    pipe = DiffScalerPipeline(model, make_scheduler("ddim"))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, k: seen.append((a[2].clone(), k["task_ids"].clone())),
                                             with_kwargs=True)
    kw = dict(guidance_scale=2.0, num_inference_steps=3, output_type="pt")
    mixed = pipe(class_labels=[1, 0, 6], task=["a", "b", 2], generator=torch.Generator().manual_seed(0), **kw).images
    labels, ids = seen[0]
    assert labels.tolist() == [1, 0, 6, 3, 0, 7] and ids.tolist() == [0, 1, 2, 0, 1, 2]
    handle.remove()
    # the first sample's initial noise is the same whether 1 or 3 are drawn, and DDIM (η = 0) draws no more
    single = pipe(class_labels=[1], task="a", generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.allclose(single[0], mixed[0], atol=1e-5)


def test_pipeline_learned_sigma_with_learned_range_ddpm():
    model = _tiny(learn_sigma=True)
    pipe = DiffScalerPipeline(model, make_scheduler("ddpm", {"num_train_timesteps": 1000,
                                                              "variance_type": "learned_range"}))
    pipe.set_progress_bar_config(disable=True)
    imgs = pipe(class_labels=[0, 4], guidance_scale=3.0, num_inference_steps=3, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    assert imgs.shape == (2, 8, 8, 3)


def test_generate_images_from_a_registered_name_with_task_files(tmp_path):
    base = pixelforge.create_model("dit_micro_2").eval()
    _randomise(base, std=0.05)
    pixelforge.save_weights(base, tmp_path / "base.safetensors")
    base.apply_adapter("diffscaler", rank=2, tasks=[{"name": "vehicles", "num_classes": 4}])
    _randomise(base, only=".tasks.", std=0.05, seed=5)
    base.save_task("vehicles", tmp_path / "vehicles.safetensors")
    kw = dict(weights=[tmp_path / "base.safetensors", tmp_path / "vehicles.safetensors"], n=3, task="vehicles",
              steps=2, guidance=1.5, seed=3)
    images = generate_images("dit_micro_2", **kw)
    assert len(images) == 3 and images[0].size == (16, 16) and images[0].mode == "RGB"
    again = generate_images("dit_micro_2", **kw)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, again))
    with pytest.raises(ValueError, match="unknown task 'ships'"):
        generate_images("dit_micro_2", **{**kw, "task": "ships"})


def test_apply_diffscaler_leaves_the_task_parameters_trainable():
    """Like peft's get_peft_model: after wrapping, the base is frozen and the adapters train (all tasks, or the ids
    in trainable_tasks)."""
    def build(**kwargs):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
        return apply_diffscaler(net, num_tasks=3, rank=2, targets=["*"], exclude=[], **kwargs)

    def trainable(net):
        return {n for n, p in net.named_parameters() if p.requires_grad}

    net = build()
    names = trainable(net)
    assert names and all(".tasks." in n for n in names)
    assert {n.split(".tasks.")[1].split(".")[0] for n in names} == {"0", "1", "2"}
    assert all(not p.requires_grad for n, p in net.named_parameters() if ".tasks." not in n)
    only = trainable(build(trainable_tasks=[1]))
    assert only and {n.split(".tasks.")[1].split(".")[0] for n in only} == {"1"}
    assert trainable(build(trainable_tasks=[])) == set()
    # one optimiser step on task 1 changes its outputs only
    net = build(trainable_tasks=[1])
    x = torch.randn(5, 4)
    with torch.no_grad():
        before = {t: _net_out(net, x, t) for t in (0, 1)}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    _net_out(net, x, 1).square().sum().backward()
    opt.step()
    with torch.no_grad():
        assert torch.equal(_net_out(net, x, 0), before[0]) and not torch.allclose(_net_out(net, x, 1), before[1])


def _net_out(net, x, task):
    with route_tasks(net, torch.full((x.shape[0],), task)):
        return net(x)

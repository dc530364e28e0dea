"""DiffScaler training: the diffusion loss, the datasets, and pre-training → adaptation through the shared loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.data.image_io import read_image
from pixelforge.data.image_specs import build_image_dataset
from pixelforge.generative.diffscaler import DiT
from pixelforge.generative.diffscaler.loss import diffusion_loss
from pixelforge.generative.diffscaler.pipeline import DiffScalerPipeline, load_pipeline

MODEL = {"name": "dit_micro_2", "args": {"sample_size": 8, "num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                         "num_classes": 2}}


@pytest.fixture
def image_dirs(tmp_path):
    """An ImageFolder tree (classes a, b, c; 6 images each, 8x8) and a folder of larger images for crops."""
    rng = np.random.default_rng(0)
    for cls in "abc":
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "tree" / cls / f"{i}.png")
    (tmp_path / "big").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "big" / f"{i}.png")
    return tmp_path


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")


def test_vb_term_vanishes_for_the_true_posterior_and_trains_only_sigma():
    sched = _scheduler()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([1, 10, 500, 999])
    xt = sched.add_noise(x0, noise, t)
    # exact ε and v = -1 (σ² = β̃_t, the true posterior variance): MSE 0, KL 0
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1).requires_grad_(True)
    loss, logs = diffusion_loss(out, x0, xt, t, noise, sched)
    assert logs["mse"] == 0 and abs(logs["vb"]) < 1e-5
    # a wrong ε: the VB gradient reaches only the σ channels (mean frozen), the ε channels get the MSE gradient
    out = torch.cat([noise + 0.1, torch.zeros_like(noise)], dim=1).requires_grad_(True)
    vb_only = diffusion_loss(out, x0, xt, t, noise, sched)[0] - (out[:, :3] - noise).square().mean()
    vb_only.backward()
    assert out.grad[:, :3].abs().max() < 1e-12 and out.grad[:, 3:].abs().max() > 0
    # t = 0 uses the discretised decoder likelihood (finite, positive)
    zero = torch.zeros(4, dtype=torch.long)
    _, logs = diffusion_loss(torch.cat([noise, torch.zeros_like(noise)], 1), x0, sched.add_noise(x0, noise, zero),
                             zero, noise, sched)
    assert 0 < logs["vb"] < 100


def test_image_datasets(image_dirs):
    ds = build_image_dataset({"dir": str(image_dirs / "tree"), "classes": ["c", "a"], "limit": 4}, 8, task=2,
                             training=False)
    assert len(ds) == 4 and ds.num_classes == 2
    items = [ds[i] for i in range(4)]
    assert [it["label"] for it in items] == [1, 1, 0, 0] and all(it["task"] == 2 for it in items)  # a = 1, c = 0
    x = items[0]["image"]
    assert x.shape == (3, 8, 8) and x.min() >= -1 and x.max() <= 1
    ref = np.asarray(Image.open(image_dirs / "tree" / "a" / "0.png"), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1))
    inv = build_image_dataset({"dir": str(image_dirs / "tree"), "classes": ["a"], "unconditional": True,
                               "transform": "invert"}, 8, training=False)
    assert inv.num_classes == 0 and inv[0]["label"] == 0 and torch.equal(inv[0]["image"], -x)
    crops = build_image_dataset({"crops": [str(image_dirs / "big")], "length": 5}, 8, training=False)
    assert len(crops) == 5 and crops.num_classes == 0
    assert torch.equal(crops[3]["image"], crops[3]["image"]) and crops[3]["image"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"classes \['z'\] not in"):
        build_image_dataset({"dir": str(image_dirs / "tree"), "classes": ["z"]}, 8)


def test_pretrain_then_adapt_only_task_parameters_change(image_dirs, tmp_path):
    from pixelforge.train.loop import train

    tree = str(image_dirs / "tree")
    common = {"seed": 0, "train": {"batch_size": 4, "val_batch_size": 8, "total_steps": 3, "log_every": 1,
                                   "eval_every": 3, "checkpoint_every": 3},
              "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}, "scheduler": {"name": "constant"}}
    pre = train({**common, "recipe": "dit", "output_dir": str(tmp_path / "pre"), "model": MODEL,
                 "data": {"train": {"dir": tree, "classes": ["a", "b"]}, "val": {"dir": tree, "classes": ["a", "b"]}}})
    metrics = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in m and "val_loss" in m["eval"] for m in metrics)
    assert read_image(pre / "samples" / "step_00000003.png").pixels.shape[1:] == (8 + 4, 8 * 8 + 18)  # 1 x 8 grid
    base = DiT.from_pretrained(pre / "pipeline" / "transformer", local_files_only=True)
    assert base.config.num_classes == 2

    tasks = [{"name": "newcls", "train": {"dir": tree, "classes": ["c", "a"]}, "val": {"dir": tree, "classes": ["c"]}},
             {"name": "crops", "train": {"crops": [str(image_dirs / "big")], "length": 8},
              "val": {"crops": [str(image_dirs / "big")], "length": 4}}]
    out = train({**common, "recipe": "diffscaler", "output_dir": str(tmp_path / "ad"), "base": str(pre / "pipeline"),
                 "adapter": {"method": "diffscaler", "rank": 2}, "tasks": tasks})
    evals = [json.loads(line)["eval"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "eval" in line]
    assert {"val_loss", "val_loss/newcls", "val_loss/crops"} <= set(evals[-1])
    assert read_image(out / "samples" / "step_00000003.png").pixels.shape[1] == 2 * 8 + 6  # a row per task
    pipe = load_pipeline(out / "pipeline")
    adapted = pipe.transformer
    assert [t["name"] for t in adapted.config.tasks] == ["newcls", "crops"]
    assert [t["num_classes"] for t in adapted.config.tasks] == [2, 0]
    base_state, state = base.state_dict(), adapted.state_dict()
    for k, v in base_state.items():  # the frozen base is untouched
        assert torch.equal(state[k], v), k
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if k.endswith(".up"))
    # the task files rebuild the same model on the pre-trained base
    fresh = load_pipeline(pre / "pipeline", weights=[out / "tasks" / "newcls.safetensors",
                                                     out / "tasks" / "crops.safetensors"])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 900])
    with torch.no_grad():
        ref = adapted.eval()(x, t, torch.tensor([1, 0]), task_ids=torch.tensor([0, 1])).sample
        assert torch.equal(fresh.transformer(x, t, torch.tensor([1, 0]), task_ids=torch.tensor([0, 1])).sample, ref)
    assert isinstance(pipe, DiffScalerPipeline) and pipe.scheduler.config.num_train_timesteps == 1000


def test_latent_space_pretraining_with_a_vae(image_dirs, tmp_path):
    from diffusers import AutoencoderKL

    from pixelforge.train.diffscaler import DiTTask

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=8).save_pretrained(tmp_path / "vae")
    cfg = {"recipe": "dit", "vae": str(tmp_path / "vae"),
           "model": {"name": "dit_micro_2", "args": {**MODEL["args"], "sample_size": 4, "in_channels": 4,
                                                     "learn_sigma": True}},
           "data": {"train": {"dir": str(image_dirs / "tree"), "classes": ["a", "b"]}}}
    task = DiTTask(cfg)
    model, train_ds, _ = task.setup()
    assert task.size == 8 and train_ds[0]["image"].shape == (3, 8, 8)  # 4x4 latents of a 2x-downsampling VAE
    batch = torch.utils.data.default_collate([train_ds[i] for i in range(4)])
    loss, logs = task.training_step(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and "vb" in logs and model.x_embedder.proj.weight.grad is not None
    task.export(model.eval(), tmp_path / "run" / "model.safetensors", {})
    pipe = DiffScalerPipeline.from_pretrained(tmp_path / "run" / "pipeline", local_files_only=True)
    assert pipe.vae is not None and pipe.scheduler.config.variance_type == "learned_range"
    assert not pipe.scheduler.config.clip_sample
    pipe.set_progress_bar_config(disable=True)
    imgs = pipe(class_labels=[1], guidance_scale=2.0, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images
    assert imgs.shape == (1, 3, 8, 8)

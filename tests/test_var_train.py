"""The two VAR training stages on the shared loop, end to end on a tiny ImageFolder tree."""
import json

import torch

from pixelforge.data.image_io import read_image, write_image
from pixelforge.train.loop import train

PATCH_NUMS = [1, 2, 4, 8]


def _tree(root, n=6, size=16):
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, name in enumerate(("cats", "dogs")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = torch.rand(3, size, size, generator=gen) * 0.3 + 0.35 * c
                write_image(root / split / name / f"{i}.png", img)


def _evals(path):
    return [r["eval"] for r in map(json.loads, path.read_text().splitlines()) if "eval" in r]


def test_vqvae_then_var_stages(tmp_path):
    _tree(tmp_path / "data")
    data = {"train_dir": str(tmp_path / "data/train"), "val_dir": str(tmp_path / "data/val"), "preload": True,
            "hflip": True, "val_limit": 4, "train_limit": 10}
    vq_args = {"ch": 32, "ch_mult": [1, 2], "vocab_size": 32, "z_channels": 8, "patch_nums": PATCH_NUMS}
    common = {"train": {"batch_size": 4, "total_steps": 3, "eval_every": 3, "log_every": 1, "grad_clip": 1.0,
                        "val_batch_size": 2}, "scheduler": {"name": "constant"}}
    stage1 = {"recipe": "var_vqvae", "output_dir": str(tmp_path / "vq"), "data": data,
              "model": {"name": "var_vqvae_f4_32", "args": vq_args}, "optimizer": {"name": "adamw", "lr": 1e-3},
              **common}
    out1 = train(stage1)
    ev = _evals(out1 / "metrics.jsonl")[-1]
    assert 0 < ev["psnr"] < 60 and set(ev) >= {"psnr_2_scales", "usage_s0", "usage_s3"}
    logs = [json.loads(line) for line in (out1 / "metrics.jsonl").read_text().splitlines()]
    assert logs[0]["reseeded"] == 32  # the codebook is seeded from encoder outputs before the first pass
    assert logs[1]["reseeded"] == 0  # ... and every code starts with a grace period

    stage2 = {"recipe": "var", "output_dir": str(tmp_path / "var"), "data": data,
              "model": {"name": "var_d6_32", "args": {"vocab_size": 32, "Cvae": 8, "num_classes": 2, "depth": 1,
                                                      "embed_dim": 32, "num_heads": 2, "patch_nums": PATCH_NUMS}},
              "vqvae": {"name": "var_vqvae_f4_32", "weights": str(out1 / "model.safetensors"), "args": vq_args},
              "eval": {"samples_per_class": 3, "grid_per_class": 2, "top_k": 0, "top_p": 0.0,
                       "fd": {"classifier": "resnet10t", "args": {"num_classes": 2}}},
              "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.95]}, **common}
    out2 = train(stage2)
    cached = sorted((out2 / "tokens").glob("train-*.pt"))
    assert len(cached) == 2  # plain and flipped tokens of the 10 training images (train_limit), cached
    assert torch.load(cached[0]).shape == (10, sum(p * p for p in PATCH_NUMS))
    ev = _evals(out2 / "metrics.jsonl")[-1]
    assert {f"acc_s{s}" for s in range(4)} <= set(ev) and 0 <= ev["acc"] <= 1 and ev["loss"] > 0
    assert ev["FD-resnet10t"] >= 0
    grid = read_image(out2 / "samples" / "step_00000003.png").pixels
    assert grid.shape == (3, 2 * 18 + 2, 2 * 18 + 2)  # 2 classes x 2 samples of 16x16, 2 px padding
    assert (out2 / "model.safetensors").is_file()

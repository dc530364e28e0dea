"""FSDP on two CPU processes (gloo): `accelerate launch --use_fsdp -m pixelforge.cli train` trains, checkpoints,
stops, resumes and exports full weights equal to the same run under plain DDP, loadable into a plain model."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file

import pixelforge

FSDP_FLAGS = ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "NO_WRAP",
              "--fsdp_use_orig_params", "true", "--fsdp_sync_module_states", "false",
              "--fsdp_cpu_ram_efficient_loading", "false", "--fsdp_state_dict_type", "FULL_STATE_DICT"]
CCT = {"name": "cct_2_3x2_32", "args": {"img_size": 16, "embed_dim": 32, "num_heads": 2, "depth": 2,
                                        "conv_planes": 8, "num_classes": 2}}
DIT = {"name": "dit_micro_2", "args": {"sample_size": 8, "num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                       "num_classes": 2}}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for c in "ab":
        (root / c).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _config(recipe, tree, out):
    common = {"seed": 1, "output_dir": str(out), "scheduler": {"name": "cosine", "warmup_steps": 1},
              "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
              "train": {"batch_size": 4, "val_batch_size": 4, "total_steps": 4, "log_every": 1, "eval_every": 2,
                        "checkpoint_every": 2, "mixed_precision": "no", "ema_decay": 0.9}}
    if recipe == "cls":  # 16 validation images in batches of 3 per process: gather_for_metrics drops the padding
        common["train"]["val_batch_size"] = 3
        return {"recipe": "cls", "model": CCT, "data": {"train_dir": str(tree), "val_dir": str(tree)},
                "aug": {"hflip": 0.0, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}, **common}
    return {"recipe": "dit", "model": DIT, "data": {"image_size": 8, "train": {"dir": str(tree)},
                                                    "val": {"dir": str(tree), "limit": 8}}, **common}


def _launch(cfg_path, flags, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
           "PIXELFORGE_ONEDNN": "0"}  # the same linear kernels in every process (no timing race)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *flags, "-m", "pixelforge.cli", "train",
           str(cfg_path), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _stopped_and_resumed(cfg_path, flags):
    """Stopped after step 1 (time budget 0: evaluates, checkpoints, exports), then resumed to step 4."""
    _launch(cfg_path, flags, "train.max_minutes=0")
    assert "resumed from" in _launch(cfg_path, flags)


@pytest.mark.slow
@pytest.mark.parametrize("recipe, version", [("cls", "1"), ("dit", "2")])
def test_fsdp_resumes_and_exports_the_ddp_weights(tmp_path, tree, recipe, version):
    runs = {}
    for name, flags in (("ddp", ["--multi_gpu"]), ("fsdp", [*FSDP_FLAGS, "--fsdp_version", version])):
        cfg = _config(recipe, tree, tmp_path / name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        _stopped_and_resumed(tmp_path / f"{name}.yaml", flags)
        runs[name] = tmp_path / name
    last = runs["fsdp"] / "checkpoints" / "last"
    names = {p.name for p in last.iterdir()}
    assert {"ema_0.safetensors", "ema_1.safetensors", "model.safetensors"} <= names  # EMA shards, full weights
    assert ({"optimizer_0.pt", "optimizer_1.pt"} if version == "1" else {"optimizer.pt"}) <= names
    fsdp, ddp = load_file(runs["fsdp"] / "model.safetensors"), load_file(runs["ddp"] / "model.safetensors")
    assert fsdp.keys() == ddp.keys()
    for k in ddp:
        torch.testing.assert_close(fsdp[k], ddp[k], atol=1e-5, rtol=1e-4)
    spec = CCT if recipe == "cls" else DIT
    model = pixelforge.create_model(spec["name"], **spec["args"])
    model.load_state_dict(fsdp)  # strict: every key of the plain single-process model, nothing else
    logs = [json.loads(line) for line in (runs["fsdp"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "eval" not in r] == [1, 2, 3, 4]  # the resumed run logged no step twice
    if recipe == "cls":  # the validation spread over 2 processes = the exported (EMA) model evaluated in one
        from pixelforge.train.cls import ClassificationTask

        task = ClassificationTask(_config(recipe, tree, tmp_path / "x"))
        _, _, val = task.setup()
        single = task.evaluate(model.eval(), torch.utils.data.DataLoader(val, batch_size=5))
        final = [r["eval"] for r in logs if "eval" in r][-1]
        assert final == pytest.approx(single, abs=1e-5)

"""Classification training: datasets, the task on the shared loop, exact resume, 2-process accelerate runs."""
import argparse
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch
import yaml
from conftest import REPO
from safetensors import safe_open
from safetensors.torch import load_file

from pixelforge.cli.classify import add_parser as add_classify_parser
from pixelforge.data import write_image
from pixelforge.data.classification import ImageFolderDataset, unpack_archive
from pixelforge.train import TASKS
from pixelforge.train.cls import ClassificationTask
from pixelforge.train.loop import train

CLASSES = ["ant", "bee", "cow"]


def _make_folder(root, per_class=8, size=16):
    gen = torch.Generator().manual_seed(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = torch.rand(3, size, size, generator=gen) * 0.5
            img[label] += 0.5  # a learnable colour cue
            write_image(root / name / f"{i:02d}.png", img)
    return root


def _config(tmp_path, data_root, **train):
    return {
        "recipe": "cls", "seed": 1, "output_dir": str(tmp_path / "run"),
        "model": {"name": "cct_2_3x2_32", "args": {"img_size": 16, "embed_dim": 32, "num_heads": 2, "depth": 2,
                                                   "conv_planes": 8, "drop_path_rate": 0.5}},
        "data": {"train_dir": str(data_root), "val_dir": str(data_root), "preload": True},
        "aug": {"scale": [0.6, 1.0], "auto_augment": "rand-m5-n1", "mixup": 0.4, "cutmix": 0.4,
                "label_smoothing": 0.1},
        "train": {"batch_size": 4, "total_steps": 8, "log_every": 2, "eval_every": 100, "checkpoint_every": 3,
                  "val_batch_size": 8, "mixed_precision": "no", **train},
        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
        "scheduler": {"name": "cosine", "warmup_steps": 2, "min_lr": 1e-5},
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("data") / "train")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, folder):
    """An uninterrupted 8-step run."""
    return train(_config(tmp_path_factory.mktemp("straight"), folder))


def test_image_folder_and_archive(tmp_path, folder):
    ds = ImageFolderDataset(folder, preload=True)
    assert ds.classes == CLASSES and len(ds) == 24
    img, label = ds[9]
    assert img.size == (16, 16) and label == 1
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="tiny/train")
    root = unpack_archive(archive, tmp_path / "cache")
    assert unpack_archive(archive, tmp_path / "cache") == root  # unpacked once
    assert ImageFolderDataset(root / "tiny" / "train").classes == CLASSES
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_evaluate_reports_top1_and_top5():
    task = ClassificationTask({"model": {"name": "cct_2_3x2_32"}, "data": {"train_dir": "unused"}})
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [0, 5, 4, 3, 2, 1]])

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return logits[x.long()]

    loader = [(torch.arange(3), torch.tensor([0, 0, 5]))]  # hit@1, miss (rank 6), hit@5 (rank 5)
    metrics = task.evaluate(Fixed(), loader)
    assert metrics["top1"] == pytest.approx(100 / 3) and metrics["top5"] == pytest.approx(200 / 3)


class _Interrupted(ClassificationTask):
    """Fails after 4 steps: the run dies between its step-3 checkpoint and its end."""

    def training_step(self, model, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 4:
            raise RuntimeError("simulated crash")
        return super().training_step(model, batch)


def test_resume_is_exact(tmp_path, folder, trained, monkeypatch):
    straight = trained
    monkeypatch.setitem(TASKS, "cls_crash", f"{__name__}:_Interrupted")
    cfg = _config(tmp_path / "b", folder)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train({**cfg, "recipe": "cls_crash"})
    resumed = train(cfg)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(straight / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["class_names"]) == CLASSES
    evals = [json.loads(line)["eval"] for line in (straight / "metrics.jsonl").read_text().splitlines()
             if "eval" in line]
    assert {"top1", "top5", "loss"} <= evals[-1].keys()


@pytest.mark.slow
def test_two_cpu_processes(tmp_path, folder):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tmp_path, folder, total_steps=3, checkpoint_every=3)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pixelforge.cli", "train", str(cfg_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last").is_dir()
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in r for r in logs) and max(r.get("step", 0) for r in logs) == 3


def _classify(argv):
    parser = argparse.ArgumentParser()
    add_classify_parser(parser.add_subparsers())
    args = parser.parse_args(["classify", *argv])
    return args.func(args)


def test_classify_command(folder, trained, tmp_path, capsys):
    weights = str(trained / "model.safetensors")
    images = [str(folder / "bee" / "00.png"), str(folder / "cow" / "01.png")]
    assert _classify([*images, "--model", "cct_2_3x2_32", "--weights", weights, "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and len(lines) == 6
    assert all(line.split()[1] in CLASSES and line.strip().endswith("%") for line in lines[1:3])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert _classify([str(bad), "--model", "cct_2_3x2_32", "--weights", weights]) == 1  # nothing classified
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.png" in err
    # one bad file among good ones: the good ones are still printed, the bad one reported, exit non-zero
    assert _classify([images[0], str(bad), images[1], "--model", "cct_2_3x2_32", "--weights", weights]) == 2
    out, err = capsys.readouterr()
    assert [line for line in out.splitlines() if not line.startswith(" ")] == images
    assert "broken.png" in err.splitlines()[0] and "1 of 3 images failed" in err.splitlines()[-1]
    assert _classify([images[0], "--model", "cct_2_3x2_32", "--weights", str(tmp_path / "none.safetensors")]) == 1
    assert "not found" in capsys.readouterr().err

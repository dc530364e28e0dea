"""Loop features on a tiny SR run: gradient accumulation, schedules, TensorBoard, kept and best checkpoints, curves,
`pixelforge plot`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pixelforge.train.config import parse_config
from pixelforge.train.loop import build_scheduler, train


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray((rng.random((40, 44, 3)) * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def _config(out, root, holdout=1, **train_args):
    return {
        "recipe": "sr", "seed": 3, "output_dir": str(out),
        "model": {"name": "cfsr_x2", "args": {"deploy": False, "embed_dim": 8, "depths": [1], "dw_size": 5}},
        "data": {"scale": 2, "train_roots": [str(root)], "val_holdout": holdout, "patch_size": 8, "repeat": 2},
        "train": {"batch_size": 2, "total_steps": 6, "log_every": 1, "eval_every": 2, "checkpoint_every": 2,
                  "mixed_precision": "no", **train_args},
        "optimizer": {"name": "momentum", "lr": 0.05, "momentum": 0.0},
        "scheduler": {"name": "constant"},
    }


def _weights(run):
    return load_file(run / "model.safetensors")


def test_gradient_accumulation_equals_one_large_batch(hr_folder, tmp_path):
    """2 micro-batches of B accumulated = one step on the batch of 2B made of the same items."""
    big = train(_config(tmp_path / "big", hr_folder, holdout=0, batch_size=4, total_steps=2, curves=False))
    acc = train(_config(tmp_path / "acc", hr_folder, holdout=0, batch_size=2, gradient_accumulation_steps=2,
                         total_steps=2, curves=False))
    small = train(_config(tmp_path / "small", hr_folder, holdout=0, batch_size=2, total_steps=2, curves=False))
    a, b, c = _weights(big), _weights(acc), _weights(small)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(c[k], a[k], atol=1e-6) for k in a)  # a step of B alone is another update
    logs = [json.loads(line) for line in (acc / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2]  # logged per optimiser step, not per micro-batch


def test_tensorboard_kept_and_best_checkpoints_and_curves(hr_folder, tmp_path):
    run = train(_config(tmp_path / "run", hr_folder, checkpoint_every=1, keep_checkpoints=3,
                        log_with="tensorboard"))
    assert list(run.rglob("events.out.tfevents.*"))  # accelerate's TensorBoard tracker wrote event files
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "last", "step_00000004", "step_00000005"]
    assert json.loads((ckpts / "last" / "complete.json").read_text())["step"] == 6
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval" in line]
    assert [r["step"] for r in evals] == [2, 4, 6]
    best = max(evals, key=lambda r: r["eval"]["psnr_y"])
    marker = json.loads((ckpts / "best" / "complete.json").read_text())
    assert marker["step"] == best["step"] and marker["metric"] == "psnr_y"
    assert marker["value"] == pytest.approx(best["eval"]["psnr_y"])
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from pixelforge.train.curves import plot_runs

    other = train({**_config(tmp_path / "other", hr_folder, total_steps=4),
                   "optimizer": {"name": "momentum", "lr": 0.01, "momentum": 0.0}})
    overlay = plot_runs([run, other], tmp_path / "overlay.png")
    assert overlay.stat().st_size > 10_000


@pytest.mark.parametrize("sched, extra, expected", [
    ("cosine", {"warmup_steps": 2, "warmup_lr": 0.0, "min_lr": 0.0}, [0.0, 0.5, 0.5, 0.1464466, 0.0]),
    ("step", {"decay_steps": 2, "decay_rate": 0.5}, [1.0, 1.0, 0.5, 0.5, 0.25]),
    ("multistep", {"milestones": [2, 3], "decay_rate": 0.1}, [1.0, 0.1, 0.01, 0.01, 0.01]),
    ("poly", {"decay_rate": 1.0, "min_lr": 0.0}, [1.0, 0.75, 0.5, 0.25, 0.0]),
])
def test_schedules_come_from_timm_in_optimiser_steps(sched, extra, expected):
    """lr set after each optimiser step (timm: warm-up within the length; a multistep milestone m decays the lr of
    step m on, counting from 1)."""
    cfg = parse_config({"recipe": "sr", "model": {"name": "x"}, "data": {"scale": 2, "train_roots": []},
                        "scheduler": {"name": sched, **extra}})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(opt, cfg.scheduler, total_steps=4 if sched != "cosine" else 2 + 2)
    lrs = []
    for step in range(5):
        scheduler.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx(expected, abs=1e-6)


def test_channels_last_gradient_checkpointing_and_compile_train_the_same(hr_folder, tmp_path):
    plain = train(_config(tmp_path / "plain", hr_folder, holdout=0, total_steps=2, curves=False, ema_decay=0.9))
    switched = train(_config(tmp_path / "switched", hr_folder, holdout=0, total_steps=2, curves=False, ema_decay=0.9,
                             channels_last=True, grad_checkpointing=True, compile="eager"))
    a, b = _weights(plain), _weights(switched)
    assert a.keys() == b.keys()  # the plain model's keys, not the compiled wrapper's
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)


def test_plateau_schedule_steps_on_the_validation_metric(hr_folder, tmp_path):
    """plateau: timm's PlateauLRScheduler, stepped by the loop at each validation with the main metric; the lr
    drops after `patience` validations without improvement."""
    sched = {"name": "plateau", "patience": 1, "decay_rate": 0.5, "min_lr": 0.0}
    cfg = parse_config({"recipe": "sr", "model": {"name": "x"}, "data": {"scale": 2, "train_roots": []},
                        "scheduler": sched})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(opt, cfg.scheduler, total_steps=10, mode="max")
    lrs = []
    for evals, metric in enumerate([30.0, 30.0, 30.0, 31.0, 31.0, 31.0], start=1):
        scheduler.step(evals, metric)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    run = train({**_config(tmp_path / "run", hr_folder, total_steps=3, eval_every=1, curves=False),
                 "scheduler": sched})
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines() if "eval" in line]) == 3


def test_train_print_config_and_config_errors_on_the_command_line(hr_folder, tmp_path, capsys):
    import yaml

    from pixelforge.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path / "run", hr_folder)))
    assert main(["train", str(path), "train.total_steps=9", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["total_steps"] == 9 and printed["train"]["keep_checkpoints"] == 1
    assert printed["scheduler"]["warmup_lr"] == 1e-6 and not (tmp_path / "run").exists()  # printed, not run
    assert main(["train", str(path), "optimizer.lrr=0.1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pixelforge train: error: unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'? (valid "
                   "keys of optimizer: name, lr, weight_decay, momentum, betas, eps, layer_decay)"]


def test_plot_command_overlays_runs(hr_folder, tmp_path, capsys):
    from pixelforge.cli import main

    runs = [train(_config(tmp_path / name, hr_folder, total_steps=4, curves=False)) for name in ("a", "b")]
    assert main(["plot", *map(str, runs), "-o", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path / "nothing")]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err

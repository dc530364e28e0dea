"""Resuming `pixelforge train`: no code runs from checkpoint files, the newest complete checkpoint is found after a
crash between the renames of a checkpoint write, and metrics.jsonl never repeats steps."""
import json
import os
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import load_file

from pixelforge.train import TASKS
from pixelforge.train.loop import train
from pixelforge.zoo import CheckpointError
from test_cls_train import _config, _Interrupted, _make_folder


class _Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("data") / "train")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, folder):
    """An uninterrupted 8-step run."""
    return train(_config(tmp_path_factory.mktemp("straight"), folder))


def _same_weights(a, b):
    a, b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "eval" not in line]


def test_checkpoint_files_that_would_run_code_are_refused(tmp_path, folder):
    cfg = _config(tmp_path, folder, ema_decay=0.9)
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last"
    names = sorted(p.name for p in last.iterdir())
    assert names == ["complete.json", "ema.safetensors", "model.safetensors", "optimizer.pt", "rng_0.safetensors",
                     "state.pt"]
    for name in ("optimizer.pt", "state.pt"):  # tensors and plain data only
        torch.load(last / name, weights_only=True)
    assert {"python", "numpy", "torch"} <= load_file(last / "rng_0.safetensors").keys()  # RNG states as tensors

    marker = tmp_path / "code_ran"
    for path in last.iterdir():  # every file a pickle could hide in (accelerate's *.pkl/*.bin before)
        if path.suffix in (".pt", ".pkl", ".bin"):
            path.write_bytes(pickle.dumps({"state": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="needs arbitrary Python objects"):
        train(cfg)
    assert not marker.exists()

    # a checkpoint in accelerate's old format is not unpickled either, and training does not silently restart
    for path in list(last.iterdir()):
        path.unlink()
    (last / "random_states_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="old accelerate format"):
        train(cfg)
    assert not marker.exists()


def test_crash_between_renames_resumes_from_the_newest_complete_checkpoint(tmp_path, folder, straight, monkeypatch,
                                                                           capsys):
    """Killed after `last → old` and before `tmp → last` (step 6): the next run resumed from step 0 while complete
    checkpoints sat in tmp/ and old/; it now resumes from tmp at step 6 and finishes exactly as a straight run."""
    real_rename = pathlib.Path.rename
    calls = []

    def rename(self, target):
        if self.name == "tmp":
            calls.append(target)
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated kill")
        return real_rename(self, target)

    cfg = _config(tmp_path, folder)
    monkeypatch.setattr(pathlib.Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(pathlib.Path, "rename", real_rename)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["old", "tmp"]
    capsys.readouterr()
    resumed = train(cfg)
    assert f"resumed from {checkpoints / 'tmp'} at step 6" in capsys.readouterr().out
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "last"]
    assert _same_weights(straight, resumed)
    assert _steps(resumed) == [2, 4, 6, 8]


def test_metrics_are_truncated_back_to_the_checkpoint(tmp_path, folder, straight, monkeypatch):
    """A crash at step 5 (checkpoint at 3, step 4 logged): the resumed run logs step 4 again, once."""
    monkeypatch.setitem(TASKS, "cls_crash", f"{_Interrupted.__module__}:_Interrupted")
    cfg = _config(tmp_path, folder)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train({**cfg, "recipe": "cls_crash"})
    assert _steps(tmp_path / "run") == [2, 4]
    resumed = train(cfg)
    assert _steps(resumed) == [2, 4, 6, 8]
    assert _same_weights(straight, resumed)

"""Training checkpoints that never run code when loaded, and finding the newest complete one after a crash.

A checkpoint is a folder (``checkpoints/last``; ``tmp`` while it is written, ``old`` for the one it replaces):

- ``model.safetensors`` (full weights, gathered under FSDP) and, with EMA, ``ema.safetensors`` (under FSDP
  ``ema_{rank}.safetensors``: each process's EMA shards; resuming needs the same number of processes);
- ``optimizer.pt`` (full; under FSDP 1 ``optimizer_{rank}.pt``, each process's shard state) and ``state.pt``
  (scheduler, loop counter, gradient scaler): tensors and plain data, read with ``torch.load(weights_only=True)``
  through :func:`pixelforge.zoo.read_checkpoint`, which refuses anything else;
- ``rng_{rank}.safetensors``: every process's Python, NumPy, torch (and CUDA) RNG states, stored as tensors;
- ``complete.json``: written last (the step, the number of processes, for ``best`` the metric), once every other
  file of every process is on disk; a folder without it is incomplete and never loaded.

accelerate's own ``save_state`` writes pickles (``*.pkl``) that its ``load_state`` unpickles in full, so a replaced
file could run code on resume; those files are neither written nor read here.
"""
from __future__ import annotations

import io
import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.image_io import atomic_open
from ..zoo import CheckpointError, read_checkpoint, save_weights
from .distributed import free_gathered_params, full_state_dict, is_sharded, unwrapped

__all__ = [
    "COMPLETE",
    "adopt_checkpoint",
    "find_checkpoint",
    "keep_newest",
    "load_training_state",
    "save_training_state",
    "truncate_metrics",
]

COMPLETE = "complete.json"
_SLOTS = ("last", "tmp", "old")  # the folders a checkpoint can be in, see the module docstring


def _rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors (no pickled objects)."""
    _, py_keys, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": torch.tensor(py_keys, dtype=torch.int64),
             "python_gauss": torch.tensor([math.nan if py_gauss is None else py_gauss], dtype=torch.float64),
             "numpy": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_pos": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
             "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    gauss = float(state["python_gauss"][0])
    random.setstate((3, tuple(int(k) for k in state["python"]), None if math.isnan(gauss) else gauss))
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _write(path: Path, obj) -> None:
    """``torch.save`` of tensors and plain data, written atomically and synced."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())


def _fsdp1():
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel


def save_training_state(folder: Path, accelerator, model: nn.Module, optimizer, ema, plain: dict, step: int,
                        extra: dict | None = None) -> None:
    """Write a checkpoint into ``folder`` (every process calls this; the main process writes the shared files).

    Args:
        model: the prepared (possibly wrapped or sharded) model; its full weights are saved.
        optimizer: the prepared optimizer (under FSDP its full, unsharded state is saved).
        ema: the loop's :class:`~pixelforge.train.ema.ModelEma` or None.
        plain: name → object with ``state_dict()`` holding plain data (scheduler, loop counter, scaler).
        step: the optimiser step, recorded in the completeness marker with ``extra``.
    """
    folder = Path(folder)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    weights = full_state_dict(accelerator, model)  # collective under FSDP
    fsdp1 = isinstance(model, _fsdp1())
    if fsdp1:  # each process's own shard state: gathering it (FSDP's or DCP's) gave Adam's exp_avg = exp_avg_sq
        optim_state = None   # here (torch 2.14, gloo), so it is not gathered
        _write(folder / f"optimizer_{accelerator.process_index}.pt", optimizer.state_dict())
    elif is_sharded(accelerator):  # the full optimiser state, keyed by parameter names
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        optim_state = get_optimizer_state_dict(model, optimizer.optimizer,
                                               options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        optim_state = optimizer.state_dict()
    if accelerator.is_main_process:
        save_weights(weights, folder / "model.safetensors")
        if ema is not None and not ema.sharded:
            save_weights(ema.state_dict(), folder / "ema.safetensors")
        if optim_state is not None:
            _write(folder / "optimizer.pt", optim_state)
        _write(folder / "state.pt", {name: obj.state_dict() for name, obj in plain.items()})
    if ema is not None and ema.sharded:
        save_weights(ema.state_dict(), folder / f"ema_{accelerator.process_index}.safetensors")
    save_weights(_rng_state(), folder / f"rng_{accelerator.process_index}.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # last: the folder is complete once this exists
        with atomic_open(folder / COMPLETE, "w") as f:
            json.dump({"step": int(step), "processes": accelerator.num_processes, **(extra or {})}, f)


def load_training_state(folder: Path, accelerator, model: nn.Module, optimizer, ema, plain: dict) -> None:
    """Restore what :func:`save_training_state` wrote, reading only tensors and plain data.

    Raises:
        CheckpointError: a file is missing, unreadable, or needs arbitrary Python objects (never unpickled).
    """
    folder = Path(folder)
    weights = read_checkpoint(folder / "model.safetensors")
    own = folder / f"optimizer_{accelerator.process_index}.pt"
    optim_state = read_checkpoint(own if own.is_file() else folder / "optimizer.pt")
    if is_sharded(accelerator):  # every process reads the full state and keeps its shards (FSDP 1 and 2)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType

        options = StateDictOptions(full_state_dict=True)
        fsdp1 = _fsdp1()
        if isinstance(model, fsdp1):  # FSDP 1: its own loaders, as for saving
            with fsdp1.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=False)):
                model.load_state_dict(weights)
            optimizer.load_state_dict(optim_state)
        else:
            set_model_state_dict(model, weights, options=options)
            set_optimizer_state_dict(model, optimizer.optimizer, optim_state, options=options)
        free_gathered_params(model)
    else:
        unwrapped(accelerator, model).load_state_dict(weights)
        optimizer.load_state_dict(optim_state)
    if ema is not None:
        name = f"ema_{accelerator.process_index}.safetensors" if ema.sharded else "ema.safetensors"
        ema.load_state_dict(read_checkpoint(folder / name))
    states = read_checkpoint(folder / "state.pt")
    for name, obj in plain.items():
        obj.load_state_dict(states[name])
    _set_rng_state(read_checkpoint(folder / f"rng_{accelerator.process_index}.safetensors"))


def _step_of(folder: Path) -> int | None:
    """The step recorded by a complete checkpoint folder, None when the folder is incomplete or absent."""
    try:
        return int(json.loads((folder / COMPLETE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint among ``root/last``, ``root/tmp`` and ``root/old`` (a crash between the
    renames of a checkpoint write leaves the newest one in ``tmp`` or ``old``), or None when there is none.

    Raises:
        CheckpointError: an incomplete folder holds pickles of an older pixelforge (accelerate's ``*.pkl``), which
            are not loaded since they can run code; training does not silently restart over them.
    """
    best, best_step = None, -1
    for name in _SLOTS:
        folder = Path(root) / name
        step = _step_of(folder)
        if step is not None and step > best_step:
            best, best_step = folder, step
    if best is None:
        legacy = [p for name in _SLOTS for p in sorted((Path(root) / name).glob("*.pkl"))]
        if legacy:
            raise CheckpointError(
                f"{legacy[0].parent} holds a checkpoint in the old accelerate format ({legacy[0].name}: pickles "
                f"that can run code when loaded); pixelforge no longer loads it. Delete {root} or set "
                f"train.resume=false to start over")
    return best


def adopt_checkpoint(root: Path, folder: Path) -> Path:
    """Make the complete checkpoint ``folder`` the ``last`` one and remove the other slots; returns ``root/last``.
    Call on the main process only."""
    root, last = Path(root), Path(root) / "last"
    if folder != last:
        if last.exists():
            shutil.rmtree(last)
        folder.rename(last)
    for name in _SLOTS[1:]:
        shutil.rmtree(root / name, ignore_errors=True)
    return last


def keep_newest(root: Path, folder: Path, n: int) -> None:
    """Keep the complete checkpoint ``folder`` as ``root/step_XXXXXXXX`` and remove all but the ``n`` newest
    ``step_*`` folders. Call on the main process only."""
    root = Path(root)
    step = _step_of(folder)
    if step is not None and n > 0:
        target = root / f"step_{step:08d}"
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    for old in sorted(root.glob("step_*"))[:-n or None]:
        shutil.rmtree(old, ignore_errors=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` logged after ``step`` (a resumed run logs those steps again)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record_step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # a line cut short by the crash
        if not isinstance(record_step, int) or record_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    with atomic_open(path, "w") as f:
        f.write("".join(kept))

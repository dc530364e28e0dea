"""The one training loop every task runs on: accelerate, timm optimisers/schedulers, EMA, exact resume, JSONL logs.

A task (see :class:`TrainTask`) supplies the model, the datasets, the loss of a batch and the evaluation; this loop
does everything else. Config sections it reads (all optional but ``task``):

    seed: 0
    output_dir: runs/NAME
    train: {batch_size, num_workers, total_steps | epochs, eval_every, checkpoint_every, log_every, grad_clip,
            mixed_precision: auto|no|bf16|fp16, ema_decay, ema_warmup: true, max_minutes, resume: true}
    optimizer: {name: adamw, lr, weight_decay, ...}      (timm.optim.create_optimizer_v2)
    scheduler: {name: cosine|constant, warmup_steps, warmup_lr, min_lr}
"""
from __future__ import annotations

import hashlib
import importlib
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.image_io import remove_stale_temporaries
from ..zoo import save_weights
from .state import adopt_checkpoint, find_checkpoint, load_training_state, save_training_state, truncate_metrics

__all__ = ["TrainTask", "train", "resolve_task"]


class TrainTask:
    """What a kind of training supplies to the loop. Subclasses implement the four methods marked required.

    ``main_metric``: the evaluation key logged as the run's headline figure (higher is better unless
    ``main_metric_mode = "min"``).
    """

    main_metric: str | None = None
    main_metric_mode: str = "max"
    collate_fn = None

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def build_model(self, cfg: dict) -> nn.Module:
        """Required: the model to train (trainable parameters have ``requires_grad``)."""
        raise NotImplementedError

    def build_datasets(self, cfg: dict) -> tuple[Dataset, Dataset | None]:
        """Required: (training set, validation set or None)."""
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        """Required: (scalar loss, dict of floats to log) for one batch already on the device."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, val_loader: DataLoader) -> dict:
        """Required: metrics of ``model`` (eval mode) on the validation loader."""
        raise NotImplementedError

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Write the deployable weights (safetensors). Override to convert (e.g. merge re-parameterised branches)."""
        return save_weights(model, path, metadata)


def resolve_task(name: str) -> type[TrainTask]:
    """The task class registered under ``name`` in :data:`pixelforge.train.TASKS`."""
    from . import TASKS

    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _mixed_precision(tcfg: dict, task: TrainTask, model: nn.Module, train_ds: Dataset, seed: int, cpu: bool,
                     name: str):
    """``train.mixed_precision``: ``no``/``fp32``, ``bf16``, ``fp16`` as given; ``auto`` (the default) measured by
    :func:`~pixelforge.infer.precision.choose_training_precision` on one step of the first batch, by the main
    process, and shared with the others. Returns a PrecisionChoice (precision fp32, bf16 or fp16)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, send_to_device
    from torch.utils.data import default_collate

    from ..infer.precision import PrecisionChoice, choose_training_precision

    requested = tcfg.get("mixed_precision", "auto")
    requested = "no" if requested is False else str(requested)  # YAML 1.1 reads a bare no as false
    if requested != "auto":
        return PrecisionChoice(requested, "fp32" if requested in ("no", "fp32") else requested, "requested")
    state = PartialState(cpu=cpu)
    choice = [None]
    if state.is_main_process:
        items = _SeededItems(train_ds, seed)
        n = min(int(tcfg.get("batch_size", 16)), len(train_ds))
        batch = send_to_device((task.collate_fn or default_collate)([items[(0, i)] for i in range(n)]), state.device)
        choice = [choose_training_precision(model.to(state.device), batch, lambda m, b: task.training_step(m, b)[0],
                                            name or type(model).__name__, state.device)]
    broadcast_object_list(choice)
    return choice[0]


class _SeededItems(Dataset):
    """Makes per-sample randomness a function of (seed, epoch, index), independent of workers and resumption.

    Indices arrive as (epoch, index) pairs from the loop's batch sampler.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        digest = hashlib.blake2b(f"{self.seed}/{epoch}/{index}".encode(), digest_size=8).digest()
        item_seed = int.from_bytes(digest, "little") & (2 ** 63 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(item_seed)
                np.random.seed(item_seed % 2 ** 32)
                torch.manual_seed(item_seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class _Counter:
    """The loop's own resumable state."""

    def __init__(self):
        self.step, self.best = 0, None

    def state_dict(self) -> dict:
        return {"step": self.step, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.best = int(state["step"]), state["best"]


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    per_rank = perm[: len(perm) // world * world][rank::world]
    return [[(epoch, i) for i in per_rank[s: s + batch_size]]
            for s in range(0, len(per_rank) - batch_size + 1, batch_size)]


def _build_scheduler(optimizer, cfg: dict, total_steps: int):
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    name = cfg.get("name", "cosine")
    common = dict(warmup_t=int(cfg.get("warmup_steps", 0)), warmup_lr_init=float(cfg.get("warmup_lr", 1e-6)),
                  t_in_epochs=False)
    if name == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=float(cfg.get("min_lr", 1e-6)), **common)
    if name == "constant":
        return StepLRScheduler(optimizer, decay_t=10 ** 12, decay_rate=1.0, **common)
    raise ValueError(f"unknown scheduler '{name}' (cosine, constant)")


def _atomic_json_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: dict) -> Path:
    """Run (or resume) the training described by ``cfg``; returns the output directory.

    Writes ``metrics.jsonl``, ``checkpoints/last`` (exact resume: model, optimiser, scheduler, EMA, RNG, step; read
    back without unpickling objects, from the newest complete checkpoint, see :mod:`pixelforge.train.state`),
    ``config.yaml`` and the final ``model.safetensors`` (EMA weights when EMA is on).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import send_to_device, set_seed
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    task = resolve_task(cfg["task"])(cfg)
    tcfg = cfg.get("train", {})
    seed = int(cfg.get("seed", 0))
    out = Path(cfg.get("output_dir") or f"runs/{cfg['task']}")
    cpu = bool(tcfg.get("cpu", not torch.cuda.is_available()))
    set_seed(seed)
    model = task.build_model(cfg)
    train_ds, val_ds = task.build_datasets(cfg)
    precision = _mixed_precision(tcfg, task, model, train_ds, seed, cpu, str(cfg.get("model", {}).get("name", "")))
    # each run picks its own precision; accelerate's state (a process-wide singleton) would refuse a second one
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="no" if precision.precision == "fp32" else precision.precision, cpu=cpu)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        remove_stale_temporaries(out)
    if precision.reason != "requested":
        accelerator.print(f"train: {precision}")
    batch_size = int(tcfg.get("batch_size", 16))
    n_batches = len(train_ds) // accelerator.num_processes // batch_size
    if n_batches == 0:
        raise ValueError(f"training set of {len(train_ds)} items is smaller than one batch of {batch_size}")
    total = int(tcfg.get("total_steps") or int(tcfg.get("epochs", 1)) * n_batches)
    opt_cfg = dict(cfg.get("optimizer", {"name": "adamw", "lr": 1e-3}))
    optimizer = create_optimizer_v2(model, opt=opt_cfg.pop("name", "adamw"), **opt_cfg)
    scheduler = _build_scheduler(optimizer, cfg.get("scheduler", {}), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    counter = _Counter()
    ema = None
    if tcfg.get("ema_decay"):
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=float(tcfg["ema_decay"]),
                         use_warmup=bool(tcfg.get("ema_warmup", True)))
    plain = {"scheduler": scheduler, "counter": counter}  # checkpointed with the model, optimiser and EMA
    if accelerator.scaler is not None:
        plain["scaler"] = accelerator.scaler

    ckpt_root = out / "checkpoints"
    ckpt_dir = ckpt_root / "last"
    found = find_checkpoint(ckpt_root) if tcfg.get("resume", True) else None
    if found is not None:  # the newest complete one: a crash between the renames below leaves it in tmp or old
        load_training_state(found, accelerator, model, optimizer, ema, plain)
        accelerator.wait_for_everyone()
        if main:
            adopt_checkpoint(ckpt_root, found)
            truncate_metrics(out / "metrics.jsonl", counter.step)  # the steps after it are logged again
        accelerator.wait_for_everyone()
        accelerator.print(f"resumed from {found} at step {counter.step}")

    def save_checkpoint() -> None:
        tmp = ckpt_root / "tmp"
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        save_training_state(tmp, accelerator, model, optimizer, ema, plain, counter.step)
        if main:
            old = ckpt_root / "old"
            if ckpt_dir.exists():
                ckpt_dir.rename(old)
            tmp.rename(ckpt_dir)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(val_ds, batch_size=int(tcfg.get("val_batch_size", 1)), shuffle=False,
                                num_workers=int(tcfg.get("num_workers", 0)), collate_fn=task.collate_fn)

    def run_eval() -> dict:
        if val_loader is None or not main:
            return {}
        net = ema.module if ema is not None else accelerator.unwrap_model(model)
        was_training = net.training
        net.eval()
        with torch.inference_mode(), accelerator.autocast():
            metrics = task.evaluate(net, val_loader)
        net.train(was_training)
        key = task.main_metric
        if key in metrics:
            better = (counter.best is None or (metrics[key] > counter.best if task.main_metric_mode == "max"
                                                else metrics[key] < counter.best))
            counter.best = metrics[key] if better else counter.best
        _atomic_json_line(out / "metrics.jsonl", {"step": counter.step, "eval": metrics})
        accelerator.print(f"step {counter.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    seeded = _SeededItems(train_ds, seed)
    num_workers = int(tcfg.get("num_workers", 0))
    log_every, eval_every = int(tcfg.get("log_every", 50)), int(tcfg.get("eval_every", 1000))
    ckpt_every = int(tcfg.get("checkpoint_every", 1000))
    clip = float(tcfg.get("grad_clip", 0.0))
    deadline = time.time() + 60 * float(tcfg["max_minutes"]) if tcfg.get("max_minutes") else None
    model.train()
    started, running = time.time(), {}
    stop = counter.step >= total
    while not stop:
        epoch, skip = divmod(counter.step, n_batches)
        batches = _epoch_batches(len(train_ds), batch_size, seed, epoch, accelerator.process_index,
                                 accelerator.num_processes)[skip:]
        # own generator: creating the iterator must not draw from the global RNG (a resumed run would be shifted)
        loader = DataLoader(seeded, batch_sampler=batches, num_workers=num_workers, collate_fn=task.collate_fn,
                            persistent_workers=False, generator=torch.Generator().manual_seed(seed + epoch))
        for batch in loader:
            batch = send_to_device(batch, accelerator.device)
            with accelerator.autocast():
                loss, logs = task.training_step(model, batch)
            accelerator.backward(loss)
            if clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counter.step += 1
            scheduler.step_update(counter.step)
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=counter.step)
            for k, v in {"loss": loss.detach().float().item(), **logs}.items():
                running[k] = running.get(k, 0.0) + float(v)
            if counter.step % log_every == 0 and main:
                record = {k: v / log_every for k, v in running.items()}
                record.update(step=counter.step, epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                              elapsed_s=round(time.time() - started, 1))
                _atomic_json_line(out / "metrics.jsonl", record)
                accelerator.print(json.dumps(record))
            if counter.step % log_every == 0:
                running = {}
            out_of_time = deadline is not None and time.time() > deadline
            stop = counter.step >= total or out_of_time
            if counter.step % eval_every == 0 or stop:
                run_eval()
            if counter.step % ckpt_every == 0 or stop:
                save_checkpoint()
            if stop:
                break

    if main:
        net = ema.module if ema is not None else accelerator.unwrap_model(model)
        meta = {"task": cfg["task"], "model": str(cfg.get("model", {}).get("name", "")), "step": str(counter.step),
                "ema": str(ema is not None), "config": json.dumps(cfg), "precision": json.dumps(precision.as_dict())}
        task.export(net, out / "model.safetensors", meta)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out



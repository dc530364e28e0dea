"""The one training loop every recipe runs on: accelerate (gradient accumulation, trackers, FSDP, compile),
timm optimisers and schedulers, EMA, exact resume, JSONL logs, kept and best checkpoints, curves.

A recipe (see :class:`TrainTask`) supplies the model and datasets (``setup``), the loss of a batch and the
evaluation; this loop does everything else. The sections it reads are :class:`~pixelforge.train.config.RunConfig`'s
(``recipe``, ``seed``, ``output_dir``, ``train``, ``optimizer``, ``scheduler``); ``pixelforge train CONFIG
--print-config`` prints them resolved, with every default.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import json
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.image_io import remove_stale_temporaries, write_image
from ..zoo import save_weights
from .config import RunConfig, config_to_dict, parse_config
from .state import (
    adopt_checkpoint,
    find_checkpoint,
    keep_newest,
    load_training_state,
    save_training_state,
    truncate_metrics,
)

__all__ = ["TaskParts", "TrainTask", "resolve_task", "train"]


class TaskParts(NamedTuple):
    """What :meth:`TrainTask.setup` returns."""
    model: nn.Module
    train: Dataset
    val: Dataset | None


class TrainTask:
    """What a recipe supplies to the loop: ``Config`` (its typed sections), ``setup``, ``training_step`` and the
    evaluation (``evaluate_batch`` + ``summarize``, run on every process over its share of the validation set and
    gathered; or ``evaluate`` alone, run on the main process over the whole set).

    ``main_metric``: the evaluation key logged as the run's headline figure and used for the ``best`` checkpoint
    (higher is better unless ``main_metric_mode = "min"``).
    """

    Config: type[RunConfig] = RunConfig
    main_metric: str | None = None
    main_metric_mode: str = "max"
    collate_fn = None

    def __init__(self, cfg: dict | RunConfig):
        self.cfg = parse_config(cfg, type(self).Config)

    def setup(self) -> TaskParts:
        """Required: (model to train, training set, validation set or None). Trainable parameters have
        ``requires_grad``."""
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        """Required: (scalar loss, dict of floats to log) for one batch already on the device."""
        raise NotImplementedError

    def evaluate_batch(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """Per-sample values of one validation batch: name → (B,) tensor (gathered over processes)."""
        raise NotImplementedError

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from the per-sample values of the whole validation set (name → (N,)); default: means."""
        return {k: float(v.float().mean()) for k, v in values.items()}

    def evaluate(self, model: nn.Module, val_loader) -> dict:
        """Metrics of ``model`` (eval mode) on the validation loader, in one process."""
        values: dict[str, list[torch.Tensor]] = {}
        for batch in val_loader:
            for k, v in self.evaluate_batch(model, batch).items():
                values.setdefault(k, []).append(v.detach().cpu())
        return self.summarize({k: torch.cat(v) for k, v in values.items()})

    def sample(self, model: nn.Module) -> torch.Tensor | None:
        """Generators: a sample grid of ``model`` (a plain module, on the main process), (3, H, W) in [0, 1],
        written to ``output_dir/samples/step_XXXXXXXX.png`` at each validation. Default: None (no grid)."""
        return None

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Write the deployable weights (safetensors). Override to convert (e.g. merge re-parameterised branches)."""
        return save_weights(model, path, metadata)


def resolve_task(name: str) -> type[TrainTask]:
    """The task class registered under the recipe ``name`` in :data:`pixelforge.train.TASKS`."""
    from . import TASKS

    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, list(TASKS), n=1)
        raise ValueError(f"unknown recipe '{name}'{f' (did you mean {close[0]!r}?)' if close else ''}; known: "
                         f"{', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _distributed_eval(task: TrainTask) -> bool:
    return type(task).evaluate_batch is not TrainTask.evaluate_batch


def _mixed_precision(tcfg, task: TrainTask, model: nn.Module, train_ds: Dataset, seed: int, cpu: bool, name: str):
    """``train.mixed_precision``: ``no``/``fp32``, ``bf16``, ``fp16`` as given; ``auto`` (the default) measured by
    :func:`~pixelforge.infer.precision.choose_training_precision` on one step of the first batch, by the main
    process, and shared with the others. Returns a PrecisionChoice (precision fp32, bf16 or fp16)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, send_to_device
    from torch.utils.data import default_collate

    from ..infer.precision import PrecisionChoice, choose_training_precision

    requested = tcfg.mixed_precision
    if requested != "auto":
        return PrecisionChoice(requested, "fp32" if requested in ("no", "fp32") else requested, "requested")
    state = PartialState(cpu=cpu)
    choice = [None]
    if state.is_main_process:
        items = _SeededItems(train_ds, seed)
        n = min(tcfg.batch_size, len(train_ds))
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
    """The loop's own resumable state: optimiser step, best main metric, number of validations."""

    def __init__(self):
        self.step, self.best, self.evals = 0, None, 0

    def state_dict(self) -> dict:
        return {"step": self.step, "best": self.best, "evals": self.evals}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.best, self.evals = int(state["step"]), state["best"], int(state.get("evals", 0))


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    per_rank = perm[: len(perm) // world * world][rank::world]
    return [[(epoch, i) for i in per_rank[s: s + batch_size]]
            for s in range(0, len(per_rank) - batch_size + 1, batch_size)]


def build_scheduler(optimizer, cfg, total_steps: int, mode: str = "max"):
    """timm's scheduler factory (``create_scheduler_v2``) on the ``scheduler:`` section, in optimiser steps
    (``plateau``: in validations, stepped with the main metric)."""
    from timm.scheduler import create_scheduler_v2

    if cfg.name == "step" and cfg.decay_steps is None:
        raise ValueError("scheduler.decay_steps is needed by the step schedule")
    plateau = cfg.name == "plateau"
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.name, num_epochs=total_steps, decay_epochs=cfg.decay_steps,
        decay_milestones=list(cfg.milestones), cooldown_epochs=cfg.cooldown_steps, patience_epochs=cfg.patience,
        decay_rate=cfg.decay_rate, min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_steps,
        warmup_prefix=cfg.warmup_prefix, plateau_mode=mode, step_on_epochs=plateau, updates_per_epoch=1)
    return scheduler


def _atomic_json_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _channels_last(batch):
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    if isinstance(batch, dict):
        return {k: _channels_last(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_channels_last(v) for v in batch)
    return batch


def _flat(cfg: dict, prefix: str = "") -> dict:
    """Config as flat scalars for trackers' hyper-parameter tables."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _fsdp_on_cpu(accelerator) -> None:
    """accelerate turns ``accelerate launch --use_fsdp`` into FSDP only on accelerator devices; CPU processes
    (gloo) would silently train under DDP. Switch its state to FSDP there too (the plugin reads the launcher's
    ``FSDP_*`` settings; FSDP wants the plain ``cpu`` device)."""
    import os

    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or \
            accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared.update(distributed_type=DistributedType.FSDP, device=torch.device("cpu"))
    AcceleratorState._shared_state["fsdp_plugin"] = FullyShardedDataParallelPlugin()


def _accelerator(tcfg, precision: str, cpu: bool, out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import TorchDynamoPlugin

    # each run picks its own precision; accelerate's state (a process-wide singleton) would refuse a second one
    AcceleratorState._reset_state()
    dynamo = None
    if tcfg.compile:
        dynamo = TorchDynamoPlugin(backend="inductor" if tcfg.compile is True else str(tcfg.compile))
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=cpu,
                              gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
                              log_with=None if tcfg.log_with == "none" else tcfg.log_with, project_dir=str(out),
                              dynamo_plugin=dynamo)
    _fsdp_on_cpu(accelerator)
    return accelerator


def train(cfg: dict | RunConfig) -> Path:
    """Run (or resume) the training described by ``cfg`` (a raw config dict or a parsed one); returns the output
    directory.

    Writes ``metrics.jsonl``, ``checkpoints/last`` (exact resume: model, optimiser, scheduler, EMA, RNG, step; read
    back without unpickling objects, from the newest complete checkpoint, see :mod:`pixelforge.train.state`),
    ``checkpoints/step_*`` (``train.keep_checkpoints``), ``checkpoints/best`` (best validation metric),
    ``config.yaml`` (resolved), ``curves.png``, ``samples/`` (generators) and the final ``model.safetensors``
    (EMA weights when EMA is on; full weights under FSDP).
    """
    from accelerate.utils import broadcast_object_list, send_to_device, set_seed
    from timm.optim import create_optimizer_v2

    from .distributed import free_gathered_params, full_state_dict, is_sharded, unwrapped
    from .ema import ModelEma

    cfg = parse_config(cfg)
    task = resolve_task(cfg.recipe)(cfg)
    tcfg, seed, out = cfg.train, cfg.seed, cfg.out_dir
    cpu = tcfg.cpu if tcfg.cpu is not None else not torch.cuda.is_available()
    cfg_dict = config_to_dict(cfg)
    set_seed(seed)
    model, train_ds, val_ds = task.setup()
    model_name = str(getattr(getattr(cfg, "model", None), "name", ""))
    precision = _mixed_precision(tcfg, task, model, train_ds, seed, cpu, model_name)
    accelerator = _accelerator(tcfg, precision.precision, cpu, out)
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        remove_stale_temporaries(out)
    if precision.reason != "requested":
        accelerator.print(f"train: {precision}")
    if tcfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"train.grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing")
        model.set_grad_checkpointing(True)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    accum = tcfg.gradient_accumulation_steps
    micro_per_epoch = len(train_ds) // accelerator.num_processes // tcfg.batch_size
    if micro_per_epoch == 0:
        raise ValueError(f"training set of {len(train_ds)} items is smaller than one batch of {tcfg.batch_size}")
    total = tcfg.total_steps or max(1, tcfg.epochs * micro_per_epoch // accum)
    optimizer = create_optimizer_v2(model, **cfg.optimizer.kwargs())
    scheduler = build_scheduler(optimizer, cfg.scheduler, total, task.main_metric_mode)
    # under FSDP the main process keeps a plain copy to export the gathered full weights into
    plain_copy = copy.deepcopy(model) if is_sharded(accelerator) and main else None
    model, optimizer = accelerator.prepare(model, optimizer)
    counter = _Counter()
    ema = ModelEma(accelerator, model, tcfg.ema_decay, tcfg.ema_warmup) if tcfg.ema_decay else None
    plain = {"scheduler": scheduler, "counter": counter}  # checkpointed with the model, optimiser and EMA
    if accelerator.scaler is not None:
        plain["scaler"] = accelerator.scaler
    if tcfg.log_with != "none":  # TensorBoard: output_dir/tensorboard; wandb / mlflow: project pixelforge-RECIPE
        project = "tensorboard" if tcfg.log_with == "tensorboard" else f"pixelforge-{cfg.recipe}"
        accelerator.init_trackers(project, config=_flat(cfg_dict),
                                  init_kwargs={"wandb": {"name": out.name}, "mlflow": {"run_name": out.name}})

    ckpt_root = out / "checkpoints"
    found = find_checkpoint(ckpt_root) if tcfg.resume else None
    if found is not None:  # the newest complete one: a crash between the renames below leaves it in tmp or old
        load_training_state(found, accelerator, model, optimizer, ema, plain)
        accelerator.wait_for_everyone()
        if main:
            adopt_checkpoint(ckpt_root, found)
            truncate_metrics(out / "metrics.jsonl", counter.step)  # the steps after it are logged again
        accelerator.wait_for_everyone()
        accelerator.print(f"resumed from {found} at step {counter.step}")

    def save_checkpoint(slot: str = "last", extra: dict | None = None) -> None:
        """Write ``checkpoints/<slot>`` (``last``: the resume point, via ``tmp`` and ``old``; ``best``)."""
        tmp, old = (ckpt_root / "tmp", ckpt_root / "old") if slot == "last" else (ckpt_root / f"{slot}.tmp",
                                                                                   ckpt_root / f"{slot}.old")
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        save_training_state(tmp, accelerator, model, optimizer, ema, plain, counter.step, extra)
        if main:
            target = ckpt_root / slot
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            if slot == "last" and tcfg.keep_checkpoints > 1 and old.exists():
                keep_newest(ckpt_root, old, tcfg.keep_checkpoints - 1)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(val_ds, batch_size=tcfg.val_batch_size, shuffle=False,
                                num_workers=tcfg.num_workers, collate_fn=task.collate_fn)
        if _distributed_eval(task):
            val_loader = accelerator.prepare(val_loader)  # each process its share; gather_for_metrics drops padding

    def run_eval() -> dict:
        if val_loader is None:
            return {}
        metrics = {}
        free_gathered_params(model)  # FSDP 1: evaluate the current shards, not the last gathered copy
        with ema.applied() if ema is not None else nullcontext(model) as net:
            was_training = net.training
            net.eval()
            with torch.inference_mode(), accelerator.autocast():
                if _distributed_eval(task):
                    values: dict[str, list[torch.Tensor]] = {}
                    for batch in val_loader:
                        for k, v in accelerator.gather_for_metrics(task.evaluate_batch(net, batch)).items():
                            values.setdefault(k, []).append(v.detach().float().cpu())
                    metrics = task.summarize({k: torch.cat(v) for k, v in values.items()})
                elif main:
                    metrics = task.evaluate(unwrapped(accelerator, net), val_loader)
            if type(task).sample is not TrainTask.sample:  # outside inference mode: FSDP gathers the weights
                with torch.no_grad(), accelerator.autocast():
                    write_samples(net)
            net.train(was_training)
        metrics = broadcast_object_list([metrics])[0]
        counter.evals += 1
        key = task.main_metric
        improved = False
        if key in metrics:
            improved = (counter.best is None or (metrics[key] > counter.best if task.main_metric_mode == "max"
                                                  else metrics[key] < counter.best))
            counter.best = metrics[key] if improved else counter.best
            if cfg.scheduler.name == "plateau":
                scheduler.step(counter.evals, metrics[key])
        if main:
            _atomic_json_line(out / "metrics.jsonl", {"step": counter.step, "eval": metrics})
            accelerator.print(f"step {counter.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if tcfg.log_with != "none":
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=counter.step)
        if improved and tcfg.keep_best:
            save_checkpoint("best", {"metric": key, "value": metrics[key]})
        write_curves()
        return metrics

    def write_samples(net) -> None:
        """The task's sample grid, drawn by the main process from a plain module (under FSDP the plain copy, with
        the gathered weights: every process takes part in the gathering, none in the sampling)."""
        sampler = unwrapped(accelerator, net)
        if is_sharded(accelerator):
            state = full_state_dict(accelerator, net)
            sampler = plain_copy
            if main:
                plain_copy.load_state_dict(state)
                plain_copy.eval()  # a training-mode forward would also draw from the RNG (DiT's label dropout)
        if main and (grid := task.sample(sampler)) is not None:
            (out / "samples").mkdir(exist_ok=True)
            write_image(out / "samples" / f"step_{counter.step:08d}.png", grid)

    def write_curves() -> None:
        if main and tcfg.curves and (out / "metrics.jsonl").is_file():
            try:
                from .curves import plot_runs

                plot_runs([out], out / "curves.png", metric=task.main_metric)
            except ImportError as exc:  # matplotlib is the [train] extra
                tcfg.curves = False
                accelerator.print(f"train: no curves.png ({exc.name} is not installed: pip install "
                                  f"'pixelforge[train]')")

    seeded = _SeededItems(train_ds, seed)
    clip = tcfg.grad_clip
    deadline = time.time() + 60 * tcfg.max_minutes if tcfg.max_minutes is not None else None
    model.train()
    started, running, micro = time.time(), {}, 0
    stop = counter.step >= total
    while not stop:
        epoch, skip = divmod(counter.step * accum, micro_per_epoch)
        batches = _epoch_batches(len(train_ds), tcfg.batch_size, seed, epoch, accelerator.process_index,
                                 accelerator.num_processes)[skip:]
        # own generator: creating the iterator must not draw from the global RNG (a resumed run would be shifted)
        loader = DataLoader(seeded, batch_sampler=batches, num_workers=tcfg.num_workers, collate_fn=task.collate_fn,
                            persistent_workers=False, generator=torch.Generator().manual_seed(seed + epoch))
        for batch in loader:
            batch = send_to_device(batch, accelerator.device)
            if tcfg.channels_last:
                batch = _channels_last(batch)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, logs = task.training_step(model, batch)
                accelerator.backward(loss)
                if clip > 0 and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in {"loss": loss.detach().float().item(), **logs}.items():
                running[k] = running.get(k, 0.0) + float(v) / accum
            micro += 1
            if not accelerator.sync_gradients:
                continue
            counter.step += 1
            if cfg.scheduler.name != "plateau":
                scheduler.step_update(counter.step)
            if ema is not None:
                ema.update(counter.step)
            if counter.step % tcfg.log_every == 0:
                record = {k: v / tcfg.log_every for k, v in running.items()}
                record.update(step=counter.step, epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                              elapsed_s=round(time.time() - started, 1))
                if main:
                    _atomic_json_line(out / "metrics.jsonl", record)
                    accelerator.print(json.dumps(record))
                if tcfg.log_with != "none":
                    accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=counter.step)
                running = {}
            out_of_time = deadline is not None and time.time() > deadline
            stop = counter.step >= total or out_of_time
            if counter.step % tcfg.eval_every == 0 or stop:
                run_eval()
            if counter.step % tcfg.checkpoint_every == 0 or stop:
                save_checkpoint()
            if stop:
                break

    # every process takes part (FSDP gathers the shards); the main process exports a plain module
    state = ema.full_state_dict() if ema is not None else full_state_dict(accelerator, model)
    if main:
        net = plain_copy if plain_copy is not None else unwrapped(accelerator, model)
        net.load_state_dict(state)
        meta = {"recipe": cfg.recipe, "model": model_name, "step": str(counter.step), "ema": str(ema is not None),
                "config": json.dumps(cfg_dict), "precision": json.dumps(precision.as_dict())}
        task.export(net, out / "model.safetensors", meta)
        write_curves()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out

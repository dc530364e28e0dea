"""Diffusion training recipes: DiT pre-training (``recipe: dit``) and DiffScaler adaptation
(``recipe: diffscaler``).

Both minimise the ε-prediction MSE of a DDPM schedule (plus the variational bound term for the σ channels when the
model learns σ, see :func:`pixelforge.generative.diffscaler.loss.diffusion_loss`), in pixel space or — with
``vae`` — in a frozen AutoencoderKL's latent space. Sections: :class:`DiTConfig`, :class:`DiffScalerConfig`; the
datasets are SPECs (:class:`pixelforge.data.image_specs.ImageSpec`). The DiffScaler word "task" (an adapted task,
``tasks:``) is not the recipe (``recipe:``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import ConcatDataset

from ..data.image_specs import ImageSpec, build_image_dataset
from ..generative.diffscaler.loss import diffusion_loss
from ..zoo import save_weights
from .config import ModelConfig, RunConfig
from .loop import TaskParts, TrainTask

__all__ = ["DiTConfig", "DiTTask", "DiffScalerConfig", "DiffScalerTask", "DiffusionDataConfig"]


@dataclass(kw_only=True)
class DiffusionDataConfig:
    """``data:``: ``dir`` entries of SPECs are relative to the unpacked ``archive`` when there is one; ``image_size``
    defaults to the model's sample size (× the VAE's downsampling). ``train``/``val``: the dit recipe's SPECs."""
    archive: str | None = None
    cache_dir: str | None = None
    image_size: int | None = None
    hflip: bool = True
    train: ImageSpec | None = None
    val: ImageSpec | None = None


@dataclass(kw_only=True)
class SamplesConfig:
    """``samples:``: the grid written to ``output_dir/samples/step_XXXXXXXX.png`` at each validation (a row per
    task for diffscaler; classes cycled within a row; ``per_row: 0`` = none)."""
    per_row: int = 8
    steps: int = 20
    scheduler: Literal["ddim", "ddpm", "dpm++"] = "ddim"
    guidance: float = 1.0                    # classifier-free guidance weight (1 = off)
    seed: int = 0


@dataclass(kw_only=True)
class _DiffusionConfig(RunConfig):
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    diffusion: dict[str, Any] = field(default_factory=dict)  # DDPMScheduler config entries (timesteps, betas)
    vae: str | None = None                   # a diffusers AutoencoderKL folder: train in its latent space


@dataclass(kw_only=True)
class DiTConfig(_DiffusionConfig):
    model: ModelConfig


@dataclass(kw_only=True)
class BaseModelConfig:
    """``base: {name, weights}``: a registered DiT and its weights (arguments from the weights' config)."""
    name: str
    weights: str | None = None


@dataclass(kw_only=True)
class AdapterConfig:
    method: Literal["diffscaler", "difffit", "bitfit", "lora", "lora_mlp", "full"] = "diffscaler"
    rank: int = 8


@dataclass(kw_only=True)
class AdaptTaskConfig:
    """One entry of ``tasks:``: a DiffScaler task (its name, training and validation SPECs)."""
    name: str
    train: ImageSpec
    val: ImageSpec | None = None


@dataclass(kw_only=True)
class DiffScalerConfig(_DiffusionConfig):
    base: str | BaseModelConfig              # a pipeline / DiT folder, or {name, weights}
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    tasks: list[AdaptTaskConfig]
    train_tasks: list[str] | None = None     # the tasks trained (default: all, in mixed batches)


class _DiffusionTask(TrainTask):
    """Shared by both tasks: noise schedule, optional VAE, loss, deterministic validation loss, export."""

    main_metric = "val_loss"
    main_metric_mode = "min"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.vae = None
        self.noise_scheduler = None
        self.task_names: list[str] = []
        self.size: int | None = None  # image size, known once the model is built

    def _setup_diffusion(self, model, scheduler_config: dict | None = None) -> None:
        """The DDPM training schedule (saved with the pipeline, so sampling uses it) and the optional VAE.
        Predicted x0 is clipped to [-1, 1] in sampling for pixel-space models only."""
        from diffusers import DDPMScheduler

        if self.cfg.vae:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_pretrained(self.cfg.vae, local_files_only=True).eval()
            self.vae.requires_grad_(False)
        base = dict(scheduler_config or {"num_train_timesteps": 1000, "beta_schedule": "linear",
                                         "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon",
                                         "clip_sample": self.vae is None})
        base.update(self.cfg.diffusion)
        base["variance_type"] = "learned_range" if model.config.learn_sigma else "fixed_small"
        self.noise_scheduler = DDPMScheduler.from_config(base)

    def image_size(self, model) -> int:
        """``data.image_size``, else the model's sample size times the VAE's downsampling factor."""
        size = self.cfg.data.image_size
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return int(size or model.config.sample_size * factor)

    def _dataset(self, spec: ImageSpec, task: int = -1, training: bool = True):
        """A SPEC's dataset at the model's image size (known after ``_setup_diffusion``)."""
        d = self.cfg.data
        return build_image_dataset(spec, self.size, task, training, d.archive, d.cache_dir, d.hflip)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x
        self.vae.to(x.device)
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def _task_ids(self, batch: dict):
        return None

    def training_step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        x0 = self._encode(batch["image"])
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.noise_scheduler.add_noise(x0, noise, t)
        out = model(xt, t, batch["label"], task_ids=self._task_ids(batch), return_dict=False)[0]
        return diffusion_loss(out, x0, xt, t, noise, self.noise_scheduler)

    def evaluate_batch(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Per image: ε-MSE at a timestep and noise drawn from a generator seeded by the image's task and index
        (the same at every evaluation, whatever the batching or the split over processes), and its task id."""
        x0 = self._encode(batch["image"])
        seeds = (batch["task"] + 1) * 1_000_003 + batch["index"]
        t = torch.empty(x0.shape[0], dtype=torch.long)
        noise = torch.empty(x0.shape, dtype=torch.float32)
        for i, s in enumerate(seeds.tolist()):
            gen = torch.Generator().manual_seed(10_000 + int(s))
            t[i] = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=gen)
            noise[i] = torch.randn(x0.shape[1:], generator=gen)
        t, noise = t.to(x0.device), noise.to(x0.device, x0.dtype)
        xt = self.noise_scheduler.add_noise(x0, noise, t)
        out = model(xt, t, batch["label"], task_ids=self._task_ids(batch), return_dict=False)[0]
        return {"val_loss": (out[:, :x0.shape[1]].float() - noise.float()).square().mean(dim=(1, 2, 3)),
                "task": batch["task"]}

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean ε-MSE overall (``val_loss``) and per task (``val_loss/<task>``)."""
        out = {"val_loss": float(values["val_loss"].mean())}
        for task in sorted(set(values["task"].long().tolist())):
            if task >= 0:
                out[f"val_loss/{self.task_names[task]}"] = float(values["val_loss"][values["task"] == task].mean())
        return out

    def sample(self, model: nn.Module) -> torch.Tensor | None:
        """A grid of ``samples.per_row`` images per task (the base model for dit), classes cycled."""
        from ..data.grid import make_grid
        from ..generative.diffscaler.pipeline import DiffScalerPipeline, make_scheduler

        s = self.cfg.samples
        if s.per_row <= 0:
            return None
        pipe = DiffScalerPipeline(model, make_scheduler(s.scheduler, dict(self.noise_scheduler.config)), vae=self.vae)
        pipe.set_progress_bar_config(disable=True)
        rows = []
        tasks = model.config.tasks or [] if self.task_names else []
        for task, spec in [(None, {"num_classes": model.config.num_classes})] if not tasks else enumerate(tasks):
            n = int(spec["num_classes"])
            labels = [i % n for i in range(s.per_row)] if n else None
            rows.append(pipe(class_labels=labels, task=task, batch_size=s.per_row, guidance_scale=s.guidance,
                             num_inference_steps=s.steps, generator=torch.Generator().manual_seed(s.seed),
                             output_type="pt").images.float().cpu())
        return make_grid(torch.cat(rows), nrow=s.per_row)

    def _save_pipeline(self, model, folder: Path) -> None:
        from ..generative.diffscaler.pipeline import DiffScalerPipeline, make_scheduler

        sched = make_scheduler("ddpm", dict(self.noise_scheduler.config))
        DiffScalerPipeline(model, sched, vae=self.vae).save_pretrained(str(folder))


class DiTTask(_DiffusionTask):
    """Pre-training a DiT (class-conditional with label dropout, or unconditional with ``num_classes: 0``)."""

    Config = DiTConfig

    def setup(self) -> TaskParts:
        from ..zoo import create_model

        m, d = self.cfg.model, self.cfg.data
        if d.train is None:
            raise ValueError("data.train: the dit recipe needs a training SPEC")
        model = create_model(m.name, weights=m.weights, **m.args)
        self._setup_diffusion(model)
        self.size = self.image_size(model)
        val = self._dataset(d.val, training=False) if d.val is not None else None
        return TaskParts(model, self._dataset(d.train), val)

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """``model.safetensors`` (create_model + weights) and ``pipeline/`` (DiT + training scheduler [+ VAE])."""
        self._save_pipeline(model, path.parent / "pipeline")
        return save_weights(model, path, metadata)


class DiffScalerTask(_DiffusionTask):
    """Adapting a pre-trained DiT to one or several tasks with an adapter method; only task parameters train
    (everything for ``full``). Several tasks train jointly in mixed batches (each sample routed to its task)."""

    Config = DiffScalerConfig

    def setup(self) -> TaskParts:
        from ..generative.diffscaler.pipeline import load_pipeline

        cfg = self.cfg
        base = cfg.base
        pipe = load_pipeline(base) if isinstance(base, str) else load_pipeline(base.name, base.weights)
        model = pipe.transformer
        if model.config.adapter is not None:
            raise ValueError("the base model already carries adapters; start from the pre-trained DiT")
        if not cfg.vae and pipe.vae is not None:
            self.vae = pipe.vae.eval().requires_grad_(False)
        self._setup_diffusion(model, dict(pipe.scheduler.config))
        self.task_names = [t.name for t in cfg.tasks]
        names = cfg.train_tasks or self.task_names
        unknown = sorted(set(names) - set(self.task_names))
        if unknown:
            raise ValueError(f"train_tasks {unknown} are not among the tasks {self.task_names}")
        self.size = self.image_size(model)
        train_sets = [self._dataset(t.train, task=i) for i, t in enumerate(cfg.tasks)]
        tasks = [{"name": t.name, "num_classes": ds.num_classes} for t, ds in zip(cfg.tasks, train_sets)]
        model.apply_adapter(cfg.adapter.method, cfg.adapter.rank, tasks)
        model.trainable_task(names)
        counts = model.parameter_counts()
        print(f"adapter {model.config.adapter['method']} (rank {model.config.adapter['rank']}): "
              f"{counts['trainable']:,} trainable parameters = {100 * counts['trainable'] / counts['base']:.2f}% of "
              f"the {counts['base']:,}-parameter base model (pixelforge DiT layout, shared embedders); "
              f"{counts['task']:,} per task", flush=True)
        train = ConcatDataset([ds for name, ds in zip(self.task_names, train_sets) if name in names])
        val = [self._dataset(t.val, task=i, training=False) for i, t in enumerate(cfg.tasks) if t.val is not None]
        return TaskParts(model, train, ConcatDataset(val) if val else None)

    def _task_ids(self, batch: dict):
        return batch["task"]

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """``tasks/<name>.safetensors`` per task, ``pipeline/`` (the adapted model) and ``model.safetensors``
        (its full state dict)."""
        for name in self.task_names:
            model.save_task(name, path.parent / "tasks" / f"{name}.safetensors")
        self._save_pipeline(model, path.parent / "pipeline")
        counts = model.parameter_counts()
        meta = {**metadata, "parameter_counts": json.dumps(counts)}
        return save_weights(model, path, meta)

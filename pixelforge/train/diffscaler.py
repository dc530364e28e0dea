"""Diffusion training tasks: DiT pre-training (``task: dit``) and DiffScaler adaptation (``task: diffscaler``).

Both minimise the ε-prediction MSE of a DDPM schedule (plus the variational bound term for the σ channels when the
model learns σ, as the official DiT does), in pixel space or — with ``vae`` — in a frozen AutoencoderKL's latent space.

Config sections read here (the loop reads ``train``, ``optimizer``, ``scheduler``)::

    model: {name: dit_tiny_4, args: {num_classes: 6}}        # dit only
    base: runs/dit/pipeline                                  # diffscaler only: a pipeline/DiT folder, or
                                                             # {name, weights} (args from the weights' config)
    adapter: {method: diffscaler, rank: 8}                   # diffscaler | difffit | bitfit | lora | lora_mlp | full
    diffusion: {num_train_timesteps: 1000, beta_schedule: linear, beta_start: 1e-4, beta_end: 0.02}
    vae: null                                                # a diffusers AutoencoderKL folder → latent space
    data:
      archive: ../shared/data/cifar10-jpeg.tar.gz           # optional; `dir` entries are relative to its contents
      image_size: 32                                         # default: sample_size (× the VAE's downsampling)
      hflip: true
      train: SPEC                                           # dit only
      val: SPEC
    tasks:                                                   # diffscaler only; one entry per task
      - {name: vehicles, train: SPEC, val: SPEC}
    train_tasks: null                                        # task names trained (default: all, mixed batches)

A dataset SPEC is either ``{dir: cifar10/train, classes: [cat, dog], limit: N, unconditional: false,
transform: null|invert|gray}`` (an ImageFolder tree, a subset of its classes, labels in the order given) or
``{crops: [folder, ...], length: N}`` (random image crops of ``image_size``; ``length`` items per epoch).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ..zoo import save_weights
from .loop import TrainTask

__all__ = ["DiTTask", "DiffScalerTask", "ImageSpecDataset", "diffusion_loss", "build_image_dataset"]


# ---- data --------------------------------------------------------------------------------------------------------


class ImageSpecDataset(Dataset):
    """Images from a dataset SPEC (see the module docstring) as {"image": (3, S, S) in [-1, 1], "label", "task"}.

    Args:
        spec: the SPEC dict. base: folder that relative ``dir`` entries start from. size: S.
        task: the task id stored with every item. hflip: random horizontal flips (training).
        deterministic: crops drawn from a generator seeded by the item index (evaluation sets).
    """

    def __init__(self, spec: dict, base: Path, size: int, task: int = -1, hflip: bool = False,
                 deterministic: bool = False):
        from ..data.classification import ImageFolderDataset, folder_classes

        self.size, self.task, self.hflip, self.deterministic = size, task, hflip, deterministic
        self.transform = spec.get("transform")
        if self.transform not in (None, "invert", "gray"):
            raise ValueError(f"unknown transform '{self.transform}' (invert, gray)")
        if "crops" in spec:
            from ..data.image_io import list_image_files

            self.files = [f for root in spec["crops"] for f in list_image_files(Path(root))]
            if not self.files:
                raise ValueError(f"no images in {spec['crops']}")
            self.length = int(spec.get("length", 10_000))
            self.folder, self.num_classes, self._cache = None, 0, {}
            return
        root = base / spec["dir"]
        self.folder = ImageFolderDataset(root, classes=folder_classes(root))
        wanted = list(spec.get("classes") or self.folder.classes)
        unknown = sorted(set(wanted) - set(self.folder.classes))
        if unknown:
            raise ValueError(f"classes {unknown} not in {root} (has: {', '.join(self.folder.classes)})")
        index = {self.folder.classes.index(c): i for i, c in enumerate(wanted)}
        pairs = [(i, index[y]) for i, y in enumerate(self.folder.targets) if y in index]
        if spec.get("limit"):  # an equal share per class, in file order
            per = math.ceil(int(spec["limit"]) / len(wanted))
            counts = dict.fromkeys(range(len(wanted)), 0)
            kept = []
            for i, y in pairs:
                if counts[y] < per:
                    kept.append((i, y))
                    counts[y] += 1
            pairs = kept[: int(spec["limit"])]
        self.items = pairs
        self.unconditional = bool(spec.get("unconditional", False))
        self.num_classes = 0 if self.unconditional else len(wanted)
        self.length = len(pairs)

    def __len__(self) -> int:
        return self.length

    def _crop(self, index: int) -> tuple[np.ndarray, int]:
        gen = torch.Generator().manual_seed(index) if self.deterministic else None
        f = self.files[int(torch.randint(len(self.files), (1,), generator=gen))]
        if f not in self._cache:
            from ..data.image_io import quantize, read_image

            self._cache[f] = quantize(read_image(f, channels=3).pixels)
        img = self._cache[f]
        h, w = img.shape[:2]
        if min(h, w) < self.size:
            raise ValueError(f"{f} ({w}x{h}) is smaller than the crop size {self.size}")
        y = int(torch.randint(h - self.size + 1, (1,), generator=gen))
        x = int(torch.randint(w - self.size + 1, (1,), generator=gen))
        return img[y:y + self.size, x:x + self.size], 0

    def __getitem__(self, index: int) -> dict:
        if self.folder is None:
            arr, label = self._crop(index)
        else:
            i, label = self.items[index]
            img = self.folder[i][0]
            if img.size != (self.size, self.size):
                from PIL import Image

                img = img.resize((self.size, self.size), Image.BICUBIC)
            arr = np.asarray(img)
            label = 0 if self.unconditional else label
        x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 127.5 - 1.0
        if self.transform == "invert":
            x = -x
        elif self.transform == "gray":
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1).clone()
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return {"image": x, "label": label, "task": self.task}


def build_image_dataset(spec: dict, cfg: dict, size: int, task: int = -1, training: bool = True) -> ImageSpecDataset:
    """A SPEC's dataset, ``dir`` relative to the unpacked ``data.archive`` when there is one."""
    d = cfg.get("data", {})
    base = Path(".")
    if d.get("archive") and "dir" in spec:
        from ..data.classification import unpack_archive

        base = unpack_archive(d["archive"], d.get("cache_dir"))
    return ImageSpecDataset(spec, base, size, task, hflip=training and bool(d.get("hflip", True)),
                            deterministic=not training)


# ---- loss --------------------------------------------------------------------------------------------------------


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_loglik(x, mean, log_scale):
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian discretised to bins of width 2/255 (Improved DDPM)."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))

    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv_std * (centred + 1 / 255)), cdf(inv_std * (centred - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(
        x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    return log_probs


def diffusion_loss(model_out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, scheduler) -> tuple[torch.Tensor, dict]:
    """DiT's training loss: MSE(ε̂, ε), plus — when ``model_out`` has 2C channels (learned σ) — the variational bound
    term (bits/dim) with the mean frozen, σ² = exp(v·log β_t + (1−v)·log β̃_t), v = (out+1)/2 (Improved DDPM).

    model_out: (B, C or 2C, H, W); x0, xt, noise: (B, C, H, W); t: (B,) int64; scheduler: a DDPMScheduler.
    Returns (loss, {"mse", "vb"}).
    """
    c = x0.shape[1]
    eps = model_out[:, :c].float()
    mse = (eps - noise.float()).square().mean()
    if model_out.shape[1] == c:
        return mse, {"mse": mse.item()}
    ac = scheduler.alphas_cumprod.to(x0.device, torch.float64)
    betas = scheduler.betas.to(x0.device, torch.float64)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1, coef2 = betas * ac_prev.sqrt() / (1 - ac), (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)

    def at(v):
        return v[t].float().view(-1, 1, 1, 1)

    x0f, xtf = x0.float(), xt.float()
    true_mean = at(coef1) * x0f + at(coef2) * xtf
    frac = (model_out[:, c:].float() + 1) / 2
    model_logvar = frac * at(torch.log(betas)) + (1 - frac) * at(post_logvar)
    pred_x0 = at(1 / ac.sqrt()) * xtf - at((1 / ac - 1).sqrt()) * eps.detach()
    model_mean = at(coef1) * pred_x0 + at(coef2) * xtf
    kl = _normal_kl(true_mean, at(post_logvar), model_mean, model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -_discretized_gaussian_loglik(x0f, model_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl).mean()
    return mse + vb, {"mse": mse.item(), "vb": vb.item()}


# ---- tasks -------------------------------------------------------------------------------------------------------


class _DiffusionTask(TrainTask):
    """Shared by both tasks: noise schedule, optional VAE, loss, deterministic validation loss, export."""

    main_metric = "val_loss"
    main_metric_mode = "min"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.vae = None
        self.noise_scheduler = None
        self.task_names: list[str] = []
        self.size: int | None = None  # image size, known once the model is built

    def _setup_diffusion(self, model, scheduler_config: dict | None = None) -> None:
        """The DDPM training schedule (saved with the pipeline, so sampling uses it) and the optional VAE.
        Predicted x0 is clipped to [-1, 1] in sampling for pixel-space models only."""
        from diffusers import DDPMScheduler

        if self.cfg.get("vae"):
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_pretrained(str(self.cfg["vae"]), local_files_only=True).eval()
            self.vae.requires_grad_(False)
        base = dict(scheduler_config or {"num_train_timesteps": 1000, "beta_schedule": "linear",
                                         "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon",
                                         "clip_sample": self.vae is None})
        base.update(self.cfg.get("diffusion", {}))
        base["variance_type"] = "learned_range" if model.config.learn_sigma else "fixed_small"
        self.noise_scheduler = DDPMScheduler.from_config(base)

    def image_size(self, model) -> int:
        """``data.image_size``, else the model's sample size times the VAE's downsampling factor."""
        size = self.cfg.get("data", {}).get("image_size")
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return int(size or model.config.sample_size * factor)

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

    def evaluate(self, model: nn.Module, val_loader) -> dict:
        """ε-MSE on the validation set at fixed timesteps and noise (seeded per batch), overall and per task."""
        device = next(model.parameters()).device
        sums: dict[int, list[float]] = {}
        for i, batch in enumerate(val_loader):
            gen = torch.Generator().manual_seed(10_000 + i)
            batch = {k: v.to(device) for k, v in batch.items()}
            x0 = self._encode(batch["image"])
            t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = t.to(device)
            xt = self.noise_scheduler.add_noise(x0, noise, t)
            out = model(xt, t, batch["label"], task_ids=self._task_ids(batch), return_dict=False)[0]
            err = (out[:, :x0.shape[1]].float() - noise).square().mean(dim=(1, 2, 3))
            for task, e in zip(batch["task"].tolist(), err.tolist()):
                s = sums.setdefault(task, [0.0, 0])
                s[0] += e
                s[1] += 1
        total = sum(s[0] for s in sums.values()) / max(1, sum(s[1] for s in sums.values()))
        out = {"val_loss": total}
        for task, (s, n) in sorted(sums.items()):
            if task >= 0:
                out[f"val_loss/{self.task_names[task]}"] = s / n
        return out

    def _save_pipeline(self, model, folder: Path) -> None:
        from ..generative.diffscaler.pipeline import DiffScalerPipeline, make_scheduler

        sched = make_scheduler("ddpm", dict(self.noise_scheduler.config))
        DiffScalerPipeline(model, sched, vae=self.vae).save_pretrained(str(folder))


class DiTTask(_DiffusionTask):
    """Pre-training a DiT (class-conditional with label dropout, or unconditional with ``num_classes: 0``)."""

    def build_model(self, cfg: dict) -> nn.Module:
        from ..zoo import create_model

        m = cfg["model"]
        model = create_model(m["name"], weights=m.get("weights"), **m.get("args", {}))
        self._setup_diffusion(model)
        self.size = self.image_size(model)
        return model

    def build_datasets(self, cfg: dict):
        if self.size is None:
            self.build_model(cfg)
        d = cfg["data"]
        train = build_image_dataset(d["train"], cfg, self.size, training=True)
        val = build_image_dataset(d["val"], cfg, self.size, training=False) if d.get("val") else None
        return train, val

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """``model.safetensors`` (create_model + weights) and ``pipeline/`` (DiT + training scheduler [+ VAE])."""
        self._save_pipeline(model, path.parent / "pipeline")
        return save_weights(model, path, metadata)


class DiffScalerTask(_DiffusionTask):
    """Adapting a pre-trained DiT to one or several tasks with an adapter method; only task parameters train
    (everything for ``full``). Several tasks train jointly in mixed batches (each sample routed to its task)."""

    def _load_base(self, cfg: dict):
        from ..generative.diffscaler.pipeline import load_pipeline

        base = cfg["base"]
        if isinstance(base, dict):
            pipe = load_pipeline(base["name"], base.get("weights"))
        else:
            pipe = load_pipeline(base)
        return pipe

    def build_model(self, cfg: dict) -> nn.Module:
        pipe = self._load_base(cfg)
        model = pipe.transformer
        if model.config.adapter is not None:
            raise ValueError("the base model already carries adapters; start from the pre-trained DiT")
        if not cfg.get("vae") and pipe.vae is not None:
            self.vae = pipe.vae.eval().requires_grad_(False)
        self._setup_diffusion(model, dict(pipe.scheduler.config))
        specs = cfg["tasks"]
        self.task_names = [t["name"] for t in specs]
        self.size = self.image_size(model)
        self._train_sets = [build_image_dataset(t["train"], cfg, self.size, task=i, training=True)
                            for i, t in enumerate(specs)]
        tasks = [{"name": t["name"], "num_classes": ds.num_classes} for t, ds in zip(specs, self._train_sets)]
        a = cfg.get("adapter", {})
        model.apply_adapter(a.get("method", "diffscaler"), int(a.get("rank", 8)), tasks)
        model.trainable_task(cfg.get("train_tasks") or self.task_names)
        counts = model.parameter_counts()
        print(f"adapter {model.config.adapter['method']} (rank {model.config.adapter['rank']}): "
              f"{counts['trainable']:,} trainable parameters = {100 * counts['trainable'] / counts['base']:.2f}% of "
              f"the {counts['base']:,}-parameter base model (pixelforge DiT layout, shared embedders); "
              f"{counts['task']:,} per task", flush=True)
        return model

    def build_datasets(self, cfg: dict):
        if self.size is None:
            self.build_model(cfg)
        names = cfg.get("train_tasks") or self.task_names
        unknown = sorted(set(names) - set(self.task_names))
        if unknown:
            raise ValueError(f"train_tasks {unknown} are not among the tasks {self.task_names}")
        train = [ds for name, ds in zip(self.task_names, self._train_sets) if name in names]
        val = [build_image_dataset(t["val"], cfg, self.size, task=i, training=False)
               for i, t in enumerate(cfg["tasks"]) if t.get("val")]
        return ConcatDataset(train), (ConcatDataset(val) if val else None)

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

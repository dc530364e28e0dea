"""VAR training tasks: stage 1 trains the multi-scale VQ-VAE tokenizer, stage 2 the next-scale transformer on its
tokens (teacher forcing on all scales).

Sections: ``data`` (:class:`VARDataConfig`); stage 1 (``recipe: var_vqvae``, :class:`VQVAEConfig`): ``model``,
``loss``, ``codebook``; stage 2 (``recipe: var``, :class:`VARConfig`): ``model``, ``vqvae``, ``loss``, ``eval``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data.classification import (
    ImageFolderDataset,
    ImageSubset,
    balanced_indices,
    pil_to_float,
    unpack_archive,
)
from ..zoo import create_model
from .config import ModelConfig, RunConfig
from .loop import TaskParts, TrainTask

__all__ = ["VARConfig", "VARDataConfig", "VARTask", "VQVAEConfig", "VQVAETask"]


@dataclass(kw_only=True)
class VARDataConfig:
    """``data:``: ImageFolder trees (optionally in a ``.tar(.gz)`` archive, unpacked once)."""
    train_dir: str
    val_dir: str | None = None
    archive: str | None = None
    cache_dir: str | None = None
    preload: bool = True                     # decode every image into memory once
    hflip: bool = True                       # random horizontal flips
    val_limit: int | None = None             # evaluate on N validation images (class-balanced subset)
    train_limit: int | None = None           # train on N images only (quick checks)


@dataclass(kw_only=True)
class VQLossConfig:
    l1: float = 1.0
    l2: float = 0.0
    vq: float = 1.0
    perceptual: float = 0.0
    vgg_weights: str | None = None


@dataclass(kw_only=True)
class CodebookConfig:
    init_from_data: bool = True
    restart_dead: bool = True
    restart_below: float = 0.03


@dataclass(kw_only=True)
class VQVAEConfig(RunConfig):
    model: ModelConfig
    data: VARDataConfig
    loss: VQLossConfig = field(default_factory=VQLossConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)


@dataclass(kw_only=True)
class VARLossConfig:
    label_smoothing: float = 0.0


@dataclass(kw_only=True)
class FrechetConfig:
    """``eval.fd``: Fréchet distance of samples to the validation images on a classifier's pre-logit features
    (``classifier``, ``weights``, ``args``, display ``name``) and/or Inception features (``inception``: weights)."""
    classifier: str | None = None
    weights: str | None = None
    args: dict = field(default_factory=dict)
    name: str | None = None
    inception: str | None = None


@dataclass(kw_only=True)
class VAREvalConfig:
    samples_per_class: int = 8
    grid_per_class: int = 8
    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0
    fd: FrechetConfig | None = None


@dataclass(kw_only=True)
class VARConfig(RunConfig):
    model: ModelConfig
    vqvae: ModelConfig
    data: VARDataConfig
    loss: VARLossConfig = field(default_factory=VARLossConfig)
    eval: VAREvalConfig = field(default_factory=VAREvalConfig)


def _image_datasets(d: VARDataConfig) -> tuple[ImageSubset, ImageSubset | None]:
    base = unpack_archive(d.archive, d.cache_dir) if d.archive else Path(".")
    train = ImageFolderDataset(base / d.train_dir, pil_to_float, preload=d.preload)
    val = None
    if d.val_dir:
        val_base = ImageFolderDataset(base / d.val_dir, pil_to_float, classes=train.classes, preload=d.preload)
        val = ImageSubset(val_base, indices=balanced_indices(val_base.targets, d.val_limit))
    return ImageSubset(train, d.hflip, balanced_indices(train.targets, d.train_limit)), val


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _psnr_rgb(output: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-image RGB PSNR (dB) of (B, 3, H, W) tensors in [0, 1], on 8-bit quantised pixels."""
    from ..metrics.sr import psnr, tensor_to_uint8

    return [psnr(tensor_to_uint8(o), tensor_to_uint8(t)) for o, t in zip(output.float().cpu(), target.float().cpu())]


class VQVAETask(TrainTask):
    """Stage 1: the multi-scale VQ-VAE on images in [-1, 1].

    Loss = l1·|x̂ − x| + l2·(x̂ − x)² + vq·(codebook + β·commitment, averaged over scales) [+ perceptual·VGG].
    The codebook starts from encoder outputs of the first batch (``init_from_data``); codes whose usage EMA (decay
    0.99, starting from the uniform share) falls below ``restart_below`` of the mean usage are re-seeded from encoder
    outputs of the current batch (``restart_dead``) and get the mean usage back as a grace period. Usage is the
    quantiser's ``ema_vocab_hit_SV`` buffer, so the decisions depend only on the checkpointed model state and RNG,
    and resuming stays exact.
    """

    Config = VQVAEConfig
    main_metric = "psnr"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.perceptual = None
        if self.cfg.loss.perceptual > 0:
            from ..layers.vgg import VGGPerceptualLoss

            self.perceptual = VGGPerceptualLoss(self.cfg.loss.vgg_weights)

    def setup(self) -> TaskParts:
        m = self.cfg.model
        return TaskParts(create_model(m.name, weights=m.weights, **m.args), *_image_datasets(self.cfg.data))

    @torch.no_grad()
    def _reseed_codes(self, model: nn.Module, x: torch.Tensor) -> int:
        """Seed the whole codebook (before the first pass) or its dead rows from random encoder output vectors of
        this batch; returns how many rows changed."""
        quant = _unwrap(model).quantize
        usage = quant.ema_vocab_hit_SV.sum(0)
        if usage.sum() == 0:
            if not self.cfg.codebook.init_from_data:
                return 0
            rows = torch.arange(quant.vocab_size, device=usage.device)
        elif self.cfg.codebook.restart_dead:
            rows = torch.nonzero(usage < self.cfg.codebook.restart_below * usage.mean()).flatten()
        else:
            return 0
        if len(rows):
            f = _unwrap(model).encode(x).float().permute(0, 2, 3, 1).reshape(-1, quant.dim)
            pick = torch.randint(0, f.shape[0], (len(rows),), device=f.device)
            quant.embedding.weight[rows] = f[pick] + 1e-3 * f.std() * torch.randn_like(f[pick])
            if usage.sum() == 0:  # every code starts with the uniform share of hits, i.e. a grace period
                hits = torch.tensor([x.shape[0] * p * p / quant.vocab_size for p in quant.patch_nums])
                quant.ema_vocab_hit_SV.copy_(hits.to(usage).unsqueeze(1).expand_as(quant.ema_vocab_hit_SV))
            else:
                quant.ema_vocab_hit_SV[:, rows] = usage.mean() / quant.num_scales
        return len(rows)

    def training_step(self, model: nn.Module, batch):
        images, _ = batch
        x = images * 2 - 1
        logs = {"reseeded": self._reseed_codes(model, x)}
        recon, vq_loss, idx_list = model(x)
        recon = recon.float()
        lcfg = self.cfg.loss
        loss = lcfg.vq * vq_loss
        logs["vq"] = vq_loss.item()
        if lcfg.l1:
            l1 = F.l1_loss(recon, x)
            loss = loss + lcfg.l1 * l1
            logs["l1"] = l1.item()
        if lcfg.l2:
            loss = loss + lcfg.l2 * F.mse_loss(recon, x)
        if self.perceptual is not None:
            self.perceptual.to(recon.device)
            perc = self.perceptual(recon.add(1).div(2).clamp(0, 1), images)
            loss = loss + lcfg.perceptual * perc
            logs["perceptual"] = perc.item()
        vocab = _unwrap(model).quantize.vocab_size
        logs["usage_last"] = idx_list[-1].unique().numel() / vocab
        return loss, logs

    def evaluate(self, model: nn.Module, val_loader) -> dict:
        """RGB PSNR of the full reconstruction and of the first half of the scales; codebook usage per scale."""
        device = model.quantize.embedding.weight.device
        num_scales = model.quantize.num_scales
        psnrs, psnrs_half, used = [], [], [set() for _ in range(num_scales)]
        for images, _ in val_loader:
            images = images.to(device)
            idx = model.img_to_idx(images * 2 - 1)
            psnrs += _psnr_rgb(model.idx_to_img(idx).add(1).div(2), images)
            half = model.fhat_to_img(model.quantize.idx_to_fhat(idx[: num_scales // 2]))
            psnrs_half += _psnr_rgb(half.add(1).div(2), images)
            for s, t in enumerate(idx):
                used[s].update(t.unique().tolist())
        vocab = model.quantize.vocab_size
        metrics = {"psnr": sum(psnrs) / len(psnrs), f"psnr_{num_scales // 2}_scales": sum(psnrs_half) / len(psnrs)}
        metrics.update({f"usage_s{s}": len(u) / vocab for s, u in enumerate(used)})
        return metrics


class _Tokens(Dataset):
    """(tokens (L,) int64, label) from a token table; with flips, each item picks the flipped tokens half the time."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, flipped: torch.Tensor | None = None):
        self.tokens, self.labels, self.flipped = tokens, labels, flipped

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        table = self.flipped if self.flipped is not None and torch.rand(()) < 0.5 else self.tokens
        return table[i].long(), int(self.labels[i])


class VARTask(TrainTask):
    """Stage 2: the VAR transformer on the frozen tokenizer's tokens (computed once, cached in ``output_dir``).

    Teacher forcing on all scales: input ``idx_to_var_input(tokens)``, loss = token-mean cross-entropy (the
    official trainer's ``mean_b Σ_l CE/L``); class dropout (``cond_drop_rate``) happens inside the model in training
    mode. Evaluation: validation loss and token accuracy per scale, a class-conditional sample grid
    (``output_dir/samples/step_XXXXXXXX.png``) and, when configured, the Fréchet distance of samples to validation
    images.
    """

    Config = VARConfig
    main_metric = "acc"

    def __init__(self, cfg):
        super().__init__(cfg)
        v = self.cfg.vqvae
        if not v.weights:
            raise ValueError("vqvae.weights: the var recipe needs the trained tokenizer's weights")
        self.vqvae = create_model(v.name, weights=v.weights, **v.args).eval().requires_grad_(False)
        self._val_images = None
        self._real_stats = {}
        self._grid: tuple[torch.Tensor, int] | None = None  # the last evaluation's sample grid (images, per row)

    @torch.no_grad()
    def _tokenize(self, images: Dataset, flip: bool) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(images, batch_size=256, shuffle=False)
        out = []
        for x, _ in loader:
            x = x.flip(-1) if flip else x
            out.append(torch.cat(self.vqvae.img_to_idx(x * 2 - 1), dim=1).to(torch.int16))
        return torch.cat(out)

    def _token_cache(self, name: str, images: ImageSubset, flip: bool) -> torch.Tensor:
        """Tokens of a split, read from / written to ``output_dir/tokens/`` keyed by tokenizer weights and data."""
        v, d = self.cfg.vqvae, dataclasses.asdict(self.cfg.data)
        digest = hashlib.sha256(Path(v.weights).read_bytes()).hexdigest()[:16]
        key = hashlib.sha256(json.dumps([digest, v.name, v.args, d, name, flip],
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self.cfg.out_dir / "tokens" / f"{name}{'-flip' if flip else ''}-{key}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        tokens = self._tokenize(images, flip)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(tokens, tmp)
        tmp.replace(path)
        return tokens

    def setup(self) -> TaskParts:
        from ..generative.var.sampling import check_pair

        m = self.cfg.model
        model = create_model(m.name, weights=m.weights, **m.args)
        check_pair(model, self.vqvae)
        train_images, val_images = _image_datasets(self.cfg.data)
        plain = ImageSubset(train_images.base, indices=train_images.indices)
        labels = torch.tensor([train_images.base.targets[i] for i in train_images.indices])
        train = _Tokens(self._token_cache("train", plain, False), labels,
                        self._token_cache("train", plain, True) if train_images.hflip else None)
        val = None
        if val_images is not None:
            self._val_images = val_images
            val_labels = torch.tensor([val_images.base.targets[i] for i in val_images.indices])
            val = _Tokens(self._token_cache("val", val_images, False), val_labels)
        return TaskParts(model, train, val)

    def _teacher_forcing(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) → the transformer's input (B, L - p_1², Cvae), float32, without gradients."""
        quant = self.vqvae.quantize.to(tokens.device)
        idx_list = list(tokens.split([p * p for p in quant.patch_nums], dim=1))
        with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
            return quant.idx_to_var_input(idx_list)

    def training_step(self, model: nn.Module, batch):
        tokens, labels = batch
        x = self._teacher_forcing(tokens)
        logits = model(labels, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1),
                               label_smoothing=self.cfg.loss.label_smoothing)
        acc = (logits.argmax(-1) == tokens).float().mean()
        return loss, {"acc": acc.item()}

    def evaluate(self, model: nn.Module, val_loader) -> dict:
        device = model.pos_1LC.device
        num_scales = len(model.patch_nums)
        ce_sum, hit_sum, count = torch.zeros(num_scales), torch.zeros(num_scales), 0
        bounds = model.begin_ends
        for tokens, labels in val_loader:
            tokens, labels = tokens.to(device), labels.to(device)
            x = self._teacher_forcing(tokens)
            logits = model(labels, x).float()
            ce = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
            hit = (logits.argmax(-1) == tokens).float()
            for s, (b, e) in enumerate(bounds):
                ce_sum[s] += ce[:, b:e].mean(1).sum().cpu()
                hit_sum[s] += hit[:, b:e].mean(1).sum().cpu()
            count += tokens.shape[0]
        lengths = torch.tensor([e - b for b, e in bounds], dtype=torch.float32)
        metrics = {"loss": float((ce_sum * lengths).sum() / lengths.sum() / count),
                   "acc": float((hit_sum * lengths).sum() / lengths.sum() / count)}
        metrics.update({f"loss_s{s}": float(ce_sum[s] / count) for s in range(num_scales)})
        metrics.update({f"acc_s{s}": float(hit_sum[s] / count) for s in range(num_scales)})
        if self.cfg.eval.samples_per_class:
            metrics.update(self._sample_and_score(model))
        return metrics

    def sample(self, model: nn.Module) -> torch.Tensor | None:
        """The grid of the last evaluation's samples (``grid_per_class`` per class, a row each)."""
        from ..data.grid import make_grid

        return None if self._grid is None else make_grid(self._grid[0], nrow=self._grid[1])

    def _sample_and_score(self, model: nn.Module) -> dict:
        """Sample ``samples_per_class`` images of every class, keep ``grid_per_class`` of each for the sample grid;
        Fréchet distance(s) to the validation images when ``eval.fd`` is set."""
        from ..generative.var.sampling import sample

        e = self.cfg.eval
        device = model.pos_1LC.device
        vqvae = self.vqvae.to(device)
        n = e.samples_per_class
        labels = torch.arange(model.num_classes, device=device).repeat_interleave(n)
        gen = torch.Generator(device=device).manual_seed(e.seed)
        images = torch.cat([sample(model, vqvae, len(chunk), chunk, cfg=e.cfg, top_k=e.top_k, top_p=e.top_p,
                                   generator=gen).images.float().cpu()
                            for chunk in labels.split(250)])
        per_row = min(n, e.grid_per_class)
        self._grid = images.view(model.num_classes, n, *images.shape[1:])[:, :per_row].flatten(0, 1), per_row
        return self._frechet(images) if e.fd is not None and self._val_images is not None else {}

    def _frechet(self, images: torch.Tensor) -> dict:
        """``{"FD-<classifier>": ..., "FID": ...}`` of the samples against the validation images."""
        from ..metrics.frechet import (
            FeatureStats,
            classifier_extractor,
            inception_extractor,
        )

        fd = self.cfg.eval.fd
        extractors = []
        if fd.classifier:
            if fd.weights and not Path(fd.weights).is_file():
                warnings.warn(f"FD skipped: classifier weights {fd.weights} not found", stacklevel=2)
            else:
                extractors.append(classifier_extractor(fd.classifier, fd.weights, fd.name, model_args=fd.args))
        if fd.inception:
            extractors.append(inception_extractor(fd.inception))
        scores = {}
        for ext in extractors:
            if ext.name not in self._real_stats:
                real = FeatureStats()
                for x, _ in torch.utils.data.DataLoader(self._val_images, batch_size=250):
                    real.update(ext(x))
                self._real_stats[ext.name] = real
            fake = FeatureStats()
            for chunk in images.split(250):
                fake.update(ext(chunk))
            scores[ext.name] = fake.frechet(self._real_stats[ext.name])
        return scores

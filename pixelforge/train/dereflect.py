"""Dereflection training task: synthetic (and optionally real) pairs, pixel / perceptual / adversarial losses, and the
RRFormer evaluation protocol (specs/rrformer.md §4: output clipped to [0, 1], ×255, **truncated** to uint8, PSNR and
SSIM on RGB with no border crop), reported for the input and for the output against the ground truth.

Sections: ``model``, ``data`` (:class:`DereflectDataConfig`), ``loss`` (:class:`DereflectLossConfig`); see
configs/dereflect/*.yaml.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ..data.reflection import (
    PairedReflectionFolder,
    ReflectionSynthesis,
    SyntheticReflectionPairs,
)
from ..data.sr_datasets import list_images
from ..layers.discriminator import GeneratorWithCritic, PatchDiscriminator
from ..layers.vgg import VGGPerceptualLoss, find_vgg19_weights
from ..metrics.reflection import score_pair
from ..zoo import create_model, save_weights
from .config import ModelConfig, RunConfig
from .loop import TaskParts, TrainTask

__all__ = ["DereflectConfig", "DereflectDataConfig", "DereflectLossConfig", "DereflectTask"]


@dataclass(kw_only=True)
class DereflectDataConfig:
    """``data:``: synthetic pairs from ``train_roots`` (T and R drawn from them, or R from ``reflection_roots``)
    and/or real paired folders; validation on fixed-seed synthetic pairs of held-out ``val_roots`` or on a real
    paired folder (``real_val``)."""
    train_roots: list[str] = field(default_factory=list)
    reflection_roots: list[str] | None = None
    real_train: list[str] = field(default_factory=list)
    crop_size: int = 96
    repeat: int = 1                          # items per training image per epoch
    synthesis: dict[str, Any] | None = None  # ReflectionSynthesis: preset (zhang2018 | errnet) + field overrides
    val_roots: list[str] | None = None
    val_pairs: int = 100
    val_seed: int = 2024
    val_crop: int = 256
    real_val: str | None = None


@dataclass(kw_only=True)
class DereflectLossConfig:
    """``loss:``: pixel (+ gradient) loss, VGG perceptual loss when VGG-19 weights are available (``vgg_weights``,
    the model's ``vgg_weights``, or $PIXELFORGE_HOME/weights; skipped with a note otherwise), relativistic-average
    GAN (ERRNet) when ``adversarial_weight`` > 0."""
    pixel: Literal["l1", "mse"] = "l1"
    pixel_weight: float = 1.0
    gradient_weight: float = 0.0             # L1 between image gradients (ERRNet: 0.4 with pixel mse 0.2)
    perceptual_weight: float = 0.1
    vgg_weights: str | None = None
    adversarial_weight: float = 0.0
    discriminator_width: int = 32


@dataclass(kw_only=True)
class DereflectConfig(RunConfig):
    model: ModelConfig
    data: DereflectDataConfig
    loss: DereflectLossConfig = field(default_factory=DereflectLossConfig)


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return F.l1_loss(dx(a), dx(b)) + F.l1_loss(dy(a), dy(b))


def _ragan(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic-average loss that pushes ``real_logits`` up and ``fake_logits`` down."""
    bce = F.binary_cross_entropy_with_logits
    r = real_logits - fake_logits.mean()
    f = fake_logits - real_logits.mean()
    return 0.5 * (bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f)))


class DereflectTask(TrainTask):
    """Single-image reflection removal: (mixture, transmission) pairs, the model maps mixture → transmission."""

    main_metric = "psnr"

    Config = DereflectConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        lcfg = self.cfg.loss
        self.perceptual = None
        if lcfg.perceptual_weight > 0:
            vgg = lcfg.vgg_weights or self.cfg.model.args.get("vgg_weights") or find_vgg19_weights()
            if vgg is None:
                print("dereflect: no VGG-19 weights available, the perceptual loss is off "
                      "(set loss.vgg_weights to a torchvision vgg19 file to use it)")
            else:
                self.perceptual = VGGPerceptualLoss(vgg)

    @staticmethod
    def _generator(model: nn.Module) -> nn.Module:
        return model.generator if isinstance(model, GeneratorWithCritic) else model

    # ---------------------------------------------------------------------------------------------- model, data
    def setup(self) -> TaskParts:
        m, d = self.cfg.model, self.cfg.data
        model = create_model(m.name, weights=m.weights, **m.args)
        if self.cfg.loss.adversarial_weight > 0:
            model = GeneratorWithCritic(model, PatchDiscriminator(self.cfg.loss.discriminator_width))
        synthesis = ReflectionSynthesis.from_config(d.synthesis)
        parts: list[Dataset] = []
        if d.train_roots:
            files = list_images(d.train_roots)
            r_files = list_images(d.reflection_roots) if d.reflection_roots else None
            parts.append(SyntheticReflectionPairs(files, r_files, d.crop_size, len(files) * d.repeat, synthesis))
        for root in d.real_train:
            parts.append(PairedReflectionFolder(root, crop_size=d.crop_size))
        if not parts:
            raise ValueError("data: give train_roots (synthetic pairs) and/or real_train (paired folders)")
        train = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        val = None
        if d.real_val:
            val = PairedReflectionFolder(d.real_val)
        elif d.val_roots:
            val_files = list_images(d.val_roots)
            overlap = set(val_files) & set(list_images(d.train_roots))
            if overlap:
                raise ValueError(f"{len(overlap)} validation image(s) are also training images, e.g. "
                                 f"{sorted(overlap)[0]}")
            val = SyntheticReflectionPairs(val_files, None, d.val_crop, d.val_pairs, synthesis, seed=d.val_seed,
                                           augment=False)
        return TaskParts(model, train, val)

    # ------------------------------------------------------------------------------------------------- losses
    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        mixture, target = batch
        lcfg = self.cfg.loss
        out = model(mixture)
        logs = {}
        pix = F.l1_loss(out, target) if lcfg.pixel == "l1" else F.mse_loss(out, target)
        loss = lcfg.pixel_weight * pix
        logs["pixel"] = pix.detach().float().item()
        if lcfg.gradient_weight > 0:
            grad = _gradient_l1(out, target)
            loss = loss + lcfg.gradient_weight * grad
            logs["gradient"] = grad.detach().float().item()
        if self.perceptual is not None:
            self.perceptual.to(out.device)
            vgg = self.perceptual(out.float(), target.float())
            loss = loss + lcfg.perceptual_weight * vgg
            logs["perceptual"] = vgg.detach().float().item()
        if isinstance(model, GeneratorWithCritic):
            disc = model.discriminator
            frozen = {k: v.detach() for k, v in disc.named_parameters()}
            real_logits = disc(target)
            g_adv = _ragan(torch.func.functional_call(disc, frozen, (out,)), real_logits.detach())
            d_loss = _ragan(real_logits, disc(out.detach()))
            loss = loss + lcfg.adversarial_weight * g_adv + d_loss
            logs.update(adversarial=g_adv.detach().float().item(), discriminator=d_loss.detach().float().item())
        return loss, logs

    # --------------------------------------------------------------------------------------------- evaluation
    def evaluate_batch(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """Per image: PSNR/SSIM of output-vs-GT (``psnr``, ``ssim``) and input-vs-GT (``input_psnr``,
        ``input_ssim``)."""
        mixture, target = batch
        net = self._generator(model)
        out = net(mixture).float().cpu()
        mixture, target = mixture.float().cpu(), target.float().cpu()
        rows = [(score_pair(o, t), score_pair(m, t)) for o, m, t in zip(out, mixture, target)]
        values = {"psnr": [r[0]["psnr"] for r in rows], "ssim": [r[0]["ssim"] for r in rows],
                  "input_psnr": [r[1]["psnr"] for r in rows], "input_ssim": [r[1]["ssim"] for r in rows]}
        return {k: torch.tensor(v, dtype=torch.float64, device=batch[0].device) for k, v in values.items()}

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Save the generator only, in its deployable (merged) form when the backbone is re-parameterised."""
        net = copy.deepcopy(self._generator(model)).float()
        if hasattr(getattr(net, "backbone", None), "merge"):
            net.backbone.merge()
        return save_weights(net, path, metadata)

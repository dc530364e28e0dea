"""Dereflection training task: synthetic (and optionally real) pairs, pixel / perceptual / adversarial losses, and the
RRFormer evaluation protocol (specs/rrformer.md §4: output clipped to [0, 1], ×255, **truncated** to uint8, PSNR and
SSIM on RGB with no border crop), reported for the input and for the output against the ground truth.

Config (see configs/dereflect/*.yaml)::

    task: dereflect
    model: {name: rrformer, args: {...}}
    data:
      train_roots: [folders of natural images]     # synthetic pairs: T and R both drawn from these
      reflection_roots: [...]                       # optional separate R pool
      real_train: [paired folders]                  # optional real (mixture, transmission) folders, mixed in
      crop_size: 96
      repeat: 20                                    # items per training image per epoch
      synthesis: {preset: zhang2018, ...}           # ReflectionSynthesis fields
      val_roots: [held-out folders]                 # never used for training
      val_pairs: 100
      val_seed: 2024
      val_crop: 256
      real_val: paired folder                       # optional: evaluate on real pairs instead
    loss:
      pixel: l1 | mse          pixel_weight: 1.0
      gradient_weight: 0.0     # L1 between image gradients (ERRNet: 0.4 with pixel mse 0.2)
      perceptual_weight: 0.1   # only when VGG-19 weights are available (loss.vgg_weights, the model's
      vgg_weights: null        #   vgg_weights, or $PIXELFORGE_HOME/weights); skipped with a note otherwise
      adversarial_weight: 0.0  # relativistic-average GAN (ERRNet), off by default
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ..data.reflection import PairedReflectionFolder, ReflectionSynthesis, SyntheticReflectionPairs
from ..data.sr_datasets import list_images
from ..layers.vgg import VGGPerceptualLoss, find_vgg19_weights
from ..zoo import create_model, save_weights
from .loop import TrainTask

__all__ = ["DereflectTask", "PatchDiscriminator", "to_uint8_truncated", "score_pair"]


def to_uint8_truncated(img: torch.Tensor) -> np.ndarray:
    """RRFormer's test conversion: (3, H, W) float → clip [0, 1] → ×255 → truncate → uint8 H×W×3."""
    arr = (img.detach().float().cpu().clamp(0, 1) * 255).numpy().astype(np.uint8)
    return arr.transpose(1, 2, 0)


def score_pair(img: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """PSNR/SSIM of (3, H, W) images under the RRFormer protocol (truncated uint8, RGB, crop 0)."""
    from ..metrics import psnr_ssim

    return psnr_ssim(to_uint8_truncated(img), to_uint8_truncated(gt), crop_border=0, test_y_channel=False)


class PatchDiscriminator(nn.Module):
    """VGG-style discriminator: (conv3x3, conv4x4 stride 2) pairs with LeakyReLU(0.2), then a 1x1 score per patch.

    Shapes: (B, 3, H, W) → (B, 1, H/2^n, W/2^n) logits.
    """

    def __init__(self, width: int = 32, stages: int = 4):
        super().__init__()
        layers, cin = [], 3
        for i in range(stages):
            cout = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(cout, cout, 4, 2, 1),
                       nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 1, h, w)."""
        return self.body(x)


class GeneratorWithCritic(nn.Module):
    """The generator being trained plus its discriminator, so that the loop's one optimiser updates both.

    ``forward`` is the generator's. The task routes gradients: the generator's adversarial loss reaches the
    discriminator only through detached parameters, and the discriminator's loss sees detached outputs.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 3, H, W)."""
        return self.generator(x)


def _gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
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

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        lcfg = cfg.get("loss", {})
        self.pixel = lcfg.get("pixel", "l1")
        if self.pixel not in ("l1", "mse"):
            raise ValueError(f"loss.pixel must be 'l1' or 'mse', got '{self.pixel}'")
        self.pixel_weight = float(lcfg.get("pixel_weight", 1.0))
        self.gradient_weight = float(lcfg.get("gradient_weight", 0.0))
        self.adversarial_weight = float(lcfg.get("adversarial_weight", 0.0))
        self.perceptual = None
        weight = float(lcfg.get("perceptual_weight", 0.1))
        if weight > 0:
            vgg = (lcfg.get("vgg_weights") or cfg.get("model", {}).get("args", {}).get("vgg_weights")
                   or find_vgg19_weights())
            if vgg is None:
                print("dereflect: no VGG-19 weights available, the perceptual loss is off "
                      "(set loss.vgg_weights to a torchvision vgg19 file to use it)")
            else:
                self.perceptual = VGGPerceptualLoss(vgg)
                self.perceptual_weight = weight

    # -------------------------------------------------------------------------------------------------- model
    def build_model(self, cfg: dict) -> nn.Module:
        m = cfg["model"]
        model = create_model(m["name"], **m.get("args", {}))
        if self.adversarial_weight > 0:
            width = int(cfg.get("loss", {}).get("discriminator_width", 32))
            model = GeneratorWithCritic(model, PatchDiscriminator(width))
        return model

    @staticmethod
    def _generator(model: nn.Module) -> nn.Module:
        return model.generator if isinstance(model, GeneratorWithCritic) else model

    # --------------------------------------------------------------------------------------------------- data
    def build_datasets(self, cfg: dict) -> tuple[Dataset, Dataset | None]:
        d = cfg["data"]
        synthesis = ReflectionSynthesis.from_config(d.get("synthesis"))
        crop = int(d.get("crop_size", 96))
        parts: list[Dataset] = []
        if d.get("train_roots"):
            files = list_images(d["train_roots"])
            r_files = list_images(d["reflection_roots"]) if d.get("reflection_roots") else None
            parts.append(SyntheticReflectionPairs(files, r_files, crop, len(files) * int(d.get("repeat", 1)),
                                                  synthesis))
        for root in d.get("real_train", []) or []:
            parts.append(PairedReflectionFolder(root, crop_size=crop))
        if not parts:
            raise ValueError("data: give train_roots (synthetic pairs) and/or real_train (paired folders)")
        train = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        val = None
        if d.get("real_val"):
            val = PairedReflectionFolder(d["real_val"])
        elif d.get("val_roots"):
            val_files = list_images(d["val_roots"])
            overlap = set(val_files) & set(list_images(d.get("train_roots", [])))
            if overlap:
                raise ValueError(f"{len(overlap)} validation image(s) are also training images, e.g. "
                                 f"{sorted(overlap)[0]}")
            val = SyntheticReflectionPairs(val_files, None, int(d.get("val_crop", 256)), int(d.get("val_pairs", 100)),
                                           synthesis, seed=int(d.get("val_seed", 2024)), augment=False)
        return train, val

    # ------------------------------------------------------------------------------------------------- losses
    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        mixture, target = batch
        out = model(mixture)
        logs = {}
        pix = F.l1_loss(out, target) if self.pixel == "l1" else F.mse_loss(out, target)
        loss = self.pixel_weight * pix
        logs["pixel"] = pix.detach().float().item()
        if self.gradient_weight > 0:
            grad = _gradient_l1(out, target)
            loss = loss + self.gradient_weight * grad
            logs["gradient"] = grad.detach().float().item()
        if self.perceptual is not None:
            self.perceptual.to(out.device)
            vgg = self.perceptual(out.float(), target.float())
            loss = loss + self.perceptual_weight * vgg
            logs["perceptual"] = vgg.detach().float().item()
        if isinstance(model, GeneratorWithCritic):
            disc = model.discriminator
            frozen = {k: v.detach() for k, v in disc.named_parameters()}
            real_logits = disc(target)
            g_adv = _ragan(torch.func.functional_call(disc, frozen, (out,)), real_logits.detach())
            d_loss = _ragan(real_logits, disc(out.detach()))
            loss = loss + self.adversarial_weight * g_adv + d_loss
            logs.update(adversarial=g_adv.detach().float().item(), discriminator=d_loss.detach().float().item())
        return loss, logs

    # --------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, val_loader) -> dict:
        """Mean PSNR/SSIM of output-vs-GT (``psnr``, ``ssim``) and input-vs-GT (``input_psnr``, ``input_ssim``)."""
        net = self._generator(model)
        device = next(net.parameters()).device
        sums = dict(psnr=0.0, ssim=0.0, input_psnr=0.0, input_ssim=0.0)
        n = 0
        for mixture, target in val_loader:
            out = net(mixture.to(device)).float().cpu()
            for i in range(mixture.shape[0]):
                s_out, s_in = score_pair(out[i], target[i]), score_pair(mixture[i], target[i])
                sums["psnr"] += s_out["psnr"]
                sums["ssim"] += s_out["ssim"]
                sums["input_psnr"] += s_in["psnr"]
                sums["input_ssim"] += s_in["ssim"]
                n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Save the generator only, in its deployable (merged) form when the backbone is re-parameterised."""
        net = copy.deepcopy(self._generator(model)).float()
        if hasattr(getattr(net, "backbone", None), "merge"):
            net.backbone.merge()
        return save_weights(net, path, metadata)

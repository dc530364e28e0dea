"""Super-resolution training recipe: L1 on (LR, HR) patches made on the fly, validation Y-PSNR on held-out images."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sr_datasets import HRImagePairs, HRPatchPairs, list_images
from ..zoo import create_model, save_weights
from .config import ModelConfig, RunConfig
from .loop import TaskParts, TrainTask

__all__ = ["SRConfig", "SRDataConfig", "SRTask"]


@dataclass(kw_only=True)
class SRDataConfig:
    """``data:`` of the sr recipe. The last ``val_holdout`` files of the sorted list validate and never train."""
    scale: int
    train_roots: list[str]
    val_holdout: int = 0
    patch_size: int = 48
    repeat: int = 1
    val_center_crop: int | None = None


@dataclass(kw_only=True)
class SRConfig(RunConfig):
    model: ModelConfig
    data: SRDataConfig
    loss: Literal["l1", "mse"] = "l1"


class SRTask(TrainTask):
    """``recipe: sr``: a registered SR model on bicubic (LR, HR) pairs; validation Y-PSNR with crop = scale."""

    Config = SRConfig
    main_metric = "psnr_y"

    def setup(self) -> TaskParts:
        m, d = self.cfg.model, self.cfg.data
        model = create_model(m.name, weights=m.weights, **m.args)
        files = list_images(d.train_roots)
        train_files, val_files = (files[:-d.val_holdout], files[-d.val_holdout:]) if d.val_holdout else (files, [])
        train = HRPatchPairs(train_files, d.scale, d.patch_size, d.repeat)
        val = HRImagePairs(val_files, d.scale, d.val_center_crop) if val_files else None
        return TaskParts(model, train, val)

    def training_step(self, model: nn.Module, batch):
        lr, hr = batch
        sr = model(lr)
        loss = F.l1_loss(sr, hr) if self.cfg.loss == "l1" else F.mse_loss(sr, hr)
        return loss, {}

    def evaluate_batch(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        from ..metrics import psnr_ssim_tensor

        lr, hr = batch
        sr = model(lr).float().cpu()
        psnr = [psnr_ssim_tensor(s, h, crop_border=self.cfg.data.scale, ssim=False)["psnr"]
                for s, h in zip(sr, hr.float().cpu())]
        return {"psnr_y": torch.tensor(psnr, dtype=torch.float64, device=lr.device)}

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Save the merged (deployable) form when the backbone is re-parameterised; the metadata says so."""
        model = copy.deepcopy(model).float()
        if hasattr(model.backbone, "merge"):
            model.backbone.merge()
            cfg = json.loads(metadata["config"])
            cfg["model"].setdefault("args", {})["deploy"] = True
            metadata = {**metadata, "config": json.dumps(cfg)}
        return save_weights(model, path, metadata)

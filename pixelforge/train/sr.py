"""Super-resolution training task: L1 on (LR, HR) patches made on the fly, validation Y-PSNR on held-out images."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from ..data.sr_datasets import HRImagePairs, HRPatchPairs, list_images
from ..zoo import create_model, save_weights
from .loop import TrainTask

__all__ = ["SRTask"]


class SRTask(TrainTask):
    """Config: ``model: {name, args}``; ``data: {scale, train_roots, val_holdout, patch_size, repeat,
    val_center_crop}``; ``loss: l1|mse``. Held-out files (the last ``val_holdout`` of the sorted list) never train.
    """

    main_metric = "psnr_y"

    def build_model(self, cfg: dict) -> nn.Module:
        m = cfg["model"]
        return create_model(m["name"], **m.get("args", {}))

    def build_datasets(self, cfg: dict):
        d = cfg["data"]
        files = list_images(d["train_roots"])
        holdout = int(d.get("val_holdout", 0))
        train_files, val_files = (files[:-holdout], files[-holdout:]) if holdout else (files, [])
        train = HRPatchPairs(train_files, int(d["scale"]), int(d.get("patch_size", 48)), int(d.get("repeat", 1)))
        val = HRImagePairs(val_files, int(d["scale"]), d.get("val_center_crop")) if val_files else None
        return train, val

    def training_step(self, model: nn.Module, batch):
        lr, hr = batch
        sr = model(lr)
        loss = F.l1_loss(sr, hr) if self.cfg.get("loss", "l1") == "l1" else F.mse_loss(sr, hr)
        return loss, {}

    def evaluate(self, model: nn.Module, val_loader) -> dict:
        from ..metrics import psnr_ssim_tensor

        scale = int(self.cfg["data"]["scale"])
        psnrs = []
        for lr, hr in val_loader:
            sr = model(lr.to(next(model.parameters()).device)).float().cpu()
            psnrs.append(psnr_ssim_tensor(sr[0], hr[0], crop_border=scale, ssim=False)["psnr"])
        return {"psnr_y": sum(psnrs) / len(psnrs)}

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Save the merged (deployable) form when the backbone is re-parameterised; the metadata says so."""
        model = copy.deepcopy(model).float()
        if hasattr(model.backbone, "merge"):
            model.backbone.merge()
            cfg = json.loads(metadata["config"])
            cfg["model"].setdefault("args", {})["deploy"] = True
            metadata = {**metadata, "config": json.dumps(cfg)}
        return save_weights(model, path, metadata)

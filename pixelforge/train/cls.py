"""Image classification training task: timm augmentations, mixup/cutmix, label smoothing, top-1/top-5 evaluation.

Config sections read here (the loop reads ``train``, ``optimizer``, ``scheduler``)::

    model: {name: cct_2_3x2_32, args: {...}}        # num_classes defaults to the dataset's class count
    data:
      archive: ../shared/data/cifar10-jpeg.tar.gz  # optional: an ImageFolder tree in a .tar(.gz), unpacked once
      train_dir: cifar10/train                     # relative to the unpacked archive when there is one
      val_dir: cifar10/test                        # optional
      preload: true                                # decode all images into memory once
      img_size, mean, std, interpolation, crop_pct  # default: model.args.img_size, the model's pretrained config
    aug: {scale: [0.08, 1.0], ratio: [0.75, 1.333], hflip: 0.5, color_jitter: null, auto_augment: null,
          re_prob: 0.0, mixup: 0.0, cutmix: 0.0, mixup_prob: 1.0, switch_prob: 0.5, label_smoothing: 0.1}
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from ..data.classification import ImageFolderDataset, folder_classes, unpack_archive
from ..zoo import create_model, save_weights
from .loop import TrainTask

__all__ = ["ClassificationTask"]


class ClassificationTask(TrainTask):
    """Supervised classification on ImageFolder trees (optionally from an archive)."""

    main_metric = "top1"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        aug = cfg.get("aug", {})
        self.smoothing = float(aug.get("label_smoothing", 0.1))
        self.mixup_fn = None
        self.soft_loss = SoftTargetCrossEntropy()
        self._classes: list[str] | None = None
        self._data_cfg: dict | None = None

    # ---------------------------------------------------------------------------------------------------- data
    def _folders(self, cfg: dict) -> tuple[Path, Path | None]:
        d = cfg["data"]
        base = unpack_archive(d["archive"], d.get("cache_dir")) if d.get("archive") else Path(".")
        train = base / d["train_dir"]
        return train, (base / d["val_dir"] if d.get("val_dir") else None)

    def class_names(self, cfg: dict) -> list[str]:
        """The training tree's class names (label order)."""
        if self._classes is None:
            self._classes = folder_classes(self._folders(cfg)[0])
        return self._classes

    def build_model(self, cfg: dict) -> nn.Module:
        m = cfg["model"]
        args = {"num_classes": len(self.class_names(cfg)), **m.get("args", {})}
        model = create_model(m["name"], **args)
        self._data_cfg = self._resolve_data_cfg(cfg, m["name"])
        aug = cfg.get("aug", {})
        if float(aug.get("mixup", 0.0)) > 0 or float(aug.get("cutmix", 0.0)) > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(mixup_alpha=float(aug.get("mixup", 0.0)), cutmix_alpha=float(aug.get("cutmix", 0.0)),
                                  prob=float(aug.get("mixup_prob", 1.0)),
                                  switch_prob=float(aug.get("switch_prob", 0.5)), label_smoothing=self.smoothing,
                                  num_classes=args["num_classes"])
        return model

    @staticmethod
    def _resolve_data_cfg(cfg: dict, model_name: str) -> dict:
        from timm.models import get_pretrained_cfg

        pre = get_pretrained_cfg(model_name)
        pre = pre.to_dict() if pre is not None else {}
        d = cfg["data"]
        size = d.get("img_size") or cfg["model"].get("args", {}).get("img_size")
        size = int(size or pre.get("input_size", (3, 224, 224))[-1])
        return {"input_size": (3, size, size), "mean": tuple(d.get("mean", pre.get("mean", (0.485, 0.456, 0.406)))),
                "std": tuple(d.get("std", pre.get("std", (0.229, 0.224, 0.225)))),
                "interpolation": d.get("interpolation", pre.get("interpolation", "bicubic")),
                "crop_pct": float(d.get("crop_pct", pre.get("crop_pct", 0.875)))}

    def transforms(self, cfg: dict):
        """(training transform, evaluation transform) built with ``timm.data.create_transform``."""
        from timm.data import create_transform

        dc = self._data_cfg or self._resolve_data_cfg(cfg, cfg["model"]["name"])
        aug = cfg.get("aug", {})
        train = create_transform(
            dc["input_size"], is_training=True, scale=tuple(aug.get("scale", (0.08, 1.0))),
            ratio=tuple(aug.get("ratio", (3 / 4, 4 / 3))), hflip=float(aug.get("hflip", 0.5)),
            color_jitter=aug.get("color_jitter"), auto_augment=aug.get("auto_augment"),
            interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"],
            re_prob=float(aug.get("re_prob", 0.0)), re_mode=aug.get("re_mode", "pixel"))
        val = create_transform(dc["input_size"], is_training=False, interpolation=dc["interpolation"],
                               mean=dc["mean"], std=dc["std"], crop_pct=dc["crop_pct"])
        return train, val

    def build_datasets(self, cfg: dict):
        train_dir, val_dir = self._folders(cfg)
        classes = self.class_names(cfg)
        train_tf, val_tf = self.transforms(cfg)
        preload = bool(cfg["data"].get("preload", False))
        train = ImageFolderDataset(train_dir, train_tf, classes, preload)
        val = ImageFolderDataset(val_dir, val_tf, classes, preload) if val_dir is not None else None
        return train, val

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch):
        images, labels = batch
        if self.mixup_fn is not None:
            images, soft = self.mixup_fn(images, labels)
            return self.soft_loss(model(images).float(), soft), {}
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.smoothing)
        return loss, {"train_top1": (logits.argmax(-1) == labels).float().mean().item()}

    def evaluate(self, model: nn.Module, val_loader) -> dict:
        device = next(model.parameters()).device
        correct1 = correct5 = total = 0
        loss_sum = 0.0
        for images, labels in val_loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hit = top == labels[:, None]
            correct1 += hit[:, 0].sum().item()
            correct5 += hit.any(dim=-1).sum().item()
            total += labels.numel()
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "loss": loss_sum / total}

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Float32 weights with the class names (``class_names``, JSON list) in the metadata."""
        meta = {**metadata, "class_names": json.dumps(self.class_names(self.cfg))}
        return save_weights(copy.deepcopy(model).float(), path, meta)

"""Image classification training recipe: timm augmentations, mixup/cutmix, label smoothing, top-1/top-5 evaluation.

Sections (the loop reads ``train``, ``optimizer``, ``scheduler``): ``model`` (num_classes defaults to the dataset's
class count), ``data`` (:class:`ClsDataConfig`), ``aug`` (:class:`AugConfig`).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from ..data.classification import (
    ImageFolderDataset,
    folder_classes,
    resolve_data_config,
    unpack_archive,
)
from ..zoo import create_model, save_weights
from .config import ModelConfig, RunConfig
from .loop import TaskParts, TrainTask

__all__ = ["AugConfig", "ClassificationTask", "ClsConfig", "ClsDataConfig"]


@dataclass(kw_only=True)
class ClsDataConfig:
    """``data:``: ImageFolder trees, optionally inside a ``.tar(.gz)`` archive (unpacked once); ``img_size``, ``mean``,
    ``std``, ``interpolation``, ``crop_pct`` default to ``model.args.img_size`` and the model's pretrained config."""
    train_dir: str
    val_dir: str | None = None
    archive: str | None = None
    cache_dir: str | None = None
    preload: bool = False                    # decode all images into memory once
    img_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None


@dataclass(kw_only=True)
class AugConfig:
    """``aug:``: timm's ``create_transform`` training options, mixup/cutmix and label smoothing."""
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float | list[float] | None = None
    auto_augment: str | None = None
    re_prob: float = 0.0
    re_mode: str = "pixel"
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1


@dataclass(kw_only=True)
class ClsConfig(RunConfig):
    model: ModelConfig
    data: ClsDataConfig
    aug: AugConfig = field(default_factory=AugConfig)


class ClassificationTask(TrainTask):
    """``recipe: cls``: supervised classification on ImageFolder trees (optionally from an archive)."""

    Config = ClsConfig
    main_metric = "top1"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.mixup_fn = None
        self.soft_loss = SoftTargetCrossEntropy()
        self._classes: list[str] | None = None

    # ---------------------------------------------------------------------------------------------------- data
    def _folders(self) -> tuple[Path, Path | None]:
        d = self.cfg.data
        base = unpack_archive(d.archive, d.cache_dir) if d.archive else Path(".")
        return base / d.train_dir, (base / d.val_dir if d.val_dir else None)

    def class_names(self) -> list[str]:
        """The training tree's class names (label order)."""
        if self._classes is None:
            self._classes = folder_classes(self._folders()[0])
        return self._classes

    def transforms(self):
        """(training transform, evaluation transform) built with ``timm.data.create_transform``."""
        from timm.data import create_transform

        m, d, aug = self.cfg.model, self.cfg.data, self.cfg.aug
        dc = resolve_data_config(m.name, m.args, **{k: getattr(d, k) for k in
                                                     ("img_size", "mean", "std", "interpolation", "crop_pct")})
        train = create_transform(
            dc["input_size"], is_training=True, scale=tuple(aug.scale), ratio=tuple(aug.ratio), hflip=aug.hflip,
            color_jitter=aug.color_jitter, auto_augment=aug.auto_augment, interpolation=dc["interpolation"],
            mean=dc["mean"], std=dc["std"], re_prob=aug.re_prob, re_mode=aug.re_mode)
        val = create_transform(dc["input_size"], is_training=False, interpolation=dc["interpolation"],
                               mean=dc["mean"], std=dc["std"], crop_pct=dc["crop_pct"])
        return train, val

    def setup(self) -> TaskParts:
        m, aug = self.cfg.model, self.cfg.aug
        classes = self.class_names()
        args = {"num_classes": len(classes), **m.args}
        model = create_model(m.name, weights=m.weights, **args)
        if aug.mixup > 0 or aug.cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                                  switch_prob=aug.switch_prob, label_smoothing=aug.label_smoothing,
                                  num_classes=args["num_classes"])
        train_dir, val_dir = self._folders()
        train_tf, val_tf = self.transforms()
        train = ImageFolderDataset(train_dir, train_tf, classes, self.cfg.data.preload)
        val = ImageFolderDataset(val_dir, val_tf, classes, self.cfg.data.preload) if val_dir is not None else None
        return TaskParts(model, train, val)

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch):
        images, labels = batch
        if self.mixup_fn is not None:
            images, soft = self.mixup_fn(images, labels)
            return self.soft_loss(model(images).float(), soft), {}
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.aug.label_smoothing)
        return loss, {"train_top1": (logits.argmax(-1) == labels).float().mean().item()}

    def evaluate_batch(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """Per image: top-1 and top-5 hits (0/1) and the cross-entropy."""
        images, labels = batch
        device = next(model.parameters()).device
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        hit = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]
        return {"top1": hit[:, 0].float(), "top5": hit.any(dim=-1).float(),
                "loss": F.cross_entropy(logits, labels, reduction="none")}

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Top-1 / top-5 in %, mean loss."""
        return {"top1": 100.0 * float(values["top1"].mean()), "top5": 100.0 * float(values["top5"].mean()),
                "loss": float(values["loss"].mean())}

    def export(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
        """Float32 weights with the class names (``class_names``, JSON list) in the metadata."""
        meta = {**metadata, "class_names": json.dumps(self.class_names())}
        return save_weights(copy.deepcopy(model).float(), path, meta)

"""Image classification datasets: ImageFolder trees, optionally shipped as a .tar.gz archive unpacked once.

An ImageFolder tree is ``root/<class name>/<image file>``; classes are the sorted sub-folder names. Images are read
with :mod:`pixelforge.data.image_io` (3 channels) and handed to the transform as 8-bit RGB PIL images (what timm's
transforms expect). ``preload`` decodes every image once into memory, which makes epochs over small images (CIFAR)
cheap.
"""
from __future__ import annotations

import fcntl
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..zoo import pixelforge_home
from .image_io import IMAGE_SUFFIXES, quantize, read_image

__all__ = ["ImageFolderDataset", "ImageSubset", "balanced_indices", "folder_classes", "pil_to_float",
           "read_archive_split", "resolve_data_config", "unpack_archive"]


def folder_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class names (sub-folders, hidden ones excluded) of an ImageFolder tree.

    Raises:
        FileNotFoundError / ValueError naming the folder when it is missing or has no class sub-folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"dataset folder {root} has no class sub-folders (expected root/<class>/<images>)")
    return classes


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` → (transform(PIL RGB image), class index).

    Args:
        root: the tree's root folder.
        transform: applied to the 8-bit RGB PIL image (None: the PIL image itself is returned).
        classes: class names fixing the label order (default: :func:`folder_classes` of ``root``); a class
            sub-folder not in the list is an error.
        preload: decode every image once, at construction, and keep the uint8 pixels in memory.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, classes: list[str] | None = None,
                 preload: bool = False):
        self.root = Path(root)
        found = folder_classes(self.root)
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ValueError(f"{self.root} has class folders not in the class list: {', '.join(unknown)}")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            if folder.is_dir():
                self.samples += [(p, label) for p in sorted(folder.iterdir())
                                 if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        if not self.samples:
            raise ValueError(f"dataset folder {self.root} contains no images ({', '.join(IMAGE_SUFFIXES)})")
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self._pixels = [self._decode(p) for p, _ in self.samples] if preload else None

    @staticmethod
    def _decode(path: Path) -> np.ndarray:
        return quantize(read_image(path, channels=3).pixels)  # exact round trip of 8-bit files

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        """(transformed image, class index)."""
        arr = self._pixels[index] if self._pixels is not None else self._decode(self.samples[index][0])
        img = Image.fromarray(arr)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


def pil_to_float(img) -> torch.Tensor:
    """8-bit RGB PIL image → (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class ImageSubset(Dataset):
    """(image, label) of ``base`` (images as (3, H, W) tensors) at ``indices``, optionally flipped horizontally at
    random (torch RNG)."""

    def __init__(self, base: Dataset, hflip: bool = False, indices: list[int] | None = None):
        self.base, self.hflip = base, hflip
        self.indices = list(range(len(base))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[self.indices[i]]
        if self.hflip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, label


def balanced_indices(labels: list[int], limit: int | None) -> list[int]:
    """The first ``limit`` indices taken round-robin over classes (a class-balanced validation subset)."""
    if not limit or limit >= len(labels):
        return list(range(len(labels)))
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    order = [idx for group in zip(*by_class.values()) for idx in group]
    return sorted(order[:limit])


def resolve_data_config(model_name: str, model_args: dict | None = None, img_size: int | None = None,
                        mean=None, std=None, interpolation: str | None = None, crop_pct: float | None = None) -> dict:
    """A classifier's input pipeline: the values given, else ``model_args["img_size"]`` and the model's pretrained
    config, else ImageNet's. Returns {input_size (3, S, S), mean, std, interpolation, crop_pct}."""
    from timm.models import get_pretrained_cfg

    pre = get_pretrained_cfg(model_name)
    pre = pre.to_dict() if pre is not None else {}
    size = int(img_size or (model_args or {}).get("img_size") or pre.get("input_size", (3, 224, 224))[-1])
    return {"input_size": (3, size, size), "mean": tuple(mean or pre.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(std or pre.get("std", (0.229, 0.224, 0.225))),
            "interpolation": interpolation or pre.get("interpolation", "bicubic"),
            "crop_pct": float(crop_pct or pre.get("crop_pct", 0.875))}


def unpack_archive(archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Unpack a .tar(.gz) dataset archive once and return the folder holding its contents.

    The folder is ``cache_dir`` or ``$PIXELFORGE_HOME/datasets/<archive name>``; a ``.complete`` marker records a
    finished unpack, so later calls (and concurrent processes, serialised by a file lock) reuse it.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"dataset archive not found: {archive}")
    name = archive.name.split(".tar")[0]
    dest = Path(cache_dir) if cache_dir is not None else pixelforge_home() / "datasets" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / ".complete").is_file():
            tmp = dest.with_name(f".{dest.name}.unpacking")
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            (dest / ".complete").write_text(str(archive.resolve()))
    return dest


def read_archive_split(archive: str | os.PathLike, split: str) -> tuple[np.ndarray, list[str]]:
    """Decode every image of ``split`` of an ImageFolder archive (``…/<split>/<class>/<file>`` members) straight
    from the .tar(.gz), without unpacking it: (N, H, W, 3) uint8 RGB images of one size (CIFAR) and their
    class-folder names, in archive order."""
    images, folders = [], []
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and parts[-3] == split:
                images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                folders.append(parts[-2])
    if not images:
        raise ValueError(f"{archive}: no images under a '{split}/<class>/' folder")
    return np.stack(images), folders

"""Image datasets described by a SPEC, as the diffusion recipes use them: an ImageFolder tree (a subset of its
classes, labels in the order given) or random crops of a folder of images."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .classification import ImageFolderDataset, folder_classes, unpack_archive
from .image_io import list_image_files, quantize, read_image

__all__ = ["ImageSpec", "ImageSpecDataset", "build_image_dataset"]


@dataclass(kw_only=True)
class ImageSpec:
    """A dataset SPEC: ``{dir, classes, limit, unconditional, transform}`` (an ImageFolder tree; ``limit`` items,
    an equal share per class) or ``{crops: [folder, ...], length}`` (random crops; ``length`` items per epoch)."""
    dir: str | None = None
    classes: list[str] | None = None
    limit: int | None = None
    unconditional: bool = False
    transform: Literal["invert", "gray"] | None = None
    crops: list[str] | None = None
    length: int = 10_000

    def __post_init__(self):
        if (self.dir is None) == (self.crops is None):
            raise ValueError("a dataset SPEC has either 'dir' (an ImageFolder tree) or 'crops' (folders to crop)")

    @classmethod
    def from_dict(cls, spec: dict) -> ImageSpec:
        """From a mapping; unknown keys and bad values are errors naming them."""
        from ..train.config import from_mapping

        return from_mapping(cls, spec, "spec")


class ImageSpecDataset(Dataset):
    """Images from a dataset SPEC (:class:`ImageSpec`) as {"image": (3, S, S) in [-1, 1], "label", "task",
    "index"}.

    Args:
        spec: the SPEC dict. base: folder that relative ``dir`` entries start from. size: S.
        task: the task id stored with every item. hflip: random horizontal flips (training).
        deterministic: crops drawn from a generator seeded by the item index (evaluation sets).
    """

    def __init__(self, spec: ImageSpec | dict, base: Path, size: int, task: int = -1, hflip: bool = False,
                 deterministic: bool = False):
        spec = spec if isinstance(spec, ImageSpec) else ImageSpec.from_dict(spec)
        self.size, self.task, self.hflip, self.deterministic = size, task, hflip, deterministic
        self.transform = spec.transform
        if spec.crops:
            self.files = [f for root in spec.crops for f in list_image_files(Path(root))]
            if not self.files:
                raise ValueError(f"no images in {spec.crops}")
            self.length = spec.length
            self.folder, self.num_classes, self._cache = None, 0, {}
            return
        root = base / spec.dir
        self.folder = ImageFolderDataset(root, classes=folder_classes(root))
        wanted = list(spec.classes or self.folder.classes)
        unknown = sorted(set(wanted) - set(self.folder.classes))
        if unknown:
            raise ValueError(f"classes {unknown} not in {root} (has: {', '.join(self.folder.classes)})")
        index = {self.folder.classes.index(c): i for i, c in enumerate(wanted)}
        pairs = [(i, index[y]) for i, y in enumerate(self.folder.targets) if y in index]
        if spec.limit:  # an equal share per class, in file order
            per = math.ceil(spec.limit / len(wanted))
            counts = dict.fromkeys(range(len(wanted)), 0)
            kept = []
            for i, y in pairs:
                if counts[y] < per:
                    kept.append((i, y))
                    counts[y] += 1
            pairs = kept[: spec.limit]
        self.items = pairs
        self.unconditional = spec.unconditional
        self.num_classes = 0 if self.unconditional else len(wanted)
        self.length = len(pairs)

    def __len__(self) -> int:
        return self.length

    def _crop(self, index: int) -> tuple[np.ndarray, int]:
        gen = torch.Generator().manual_seed(index) if self.deterministic else None
        f = self.files[int(torch.randint(len(self.files), (1,), generator=gen))]
        if f not in self._cache:
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
        return {"image": x, "label": label, "task": self.task, "index": index}


def build_image_dataset(spec: ImageSpec | dict, size: int, task: int = -1, training: bool = True,
                        archive: str | None = None, cache_dir: str | None = None,
                        hflip: bool = True) -> ImageSpecDataset:
    """A SPEC's dataset of (3, size, size) images, ``dir`` relative to the unpacked ``archive`` when there is one;
    random flips (``hflip``) only in training, deterministic crops in evaluation."""
    spec = spec if isinstance(spec, ImageSpec) else ImageSpec.from_dict(spec)
    base = unpack_archive(archive, cache_dir) if archive and spec.dir is not None else Path(".")
    return ImageSpecDataset(spec, base, size, task, hflip=training and hflip, deterministic=not training)

"""The bundled CIFAR-10 classifier (cct_2_3x2_32 trained by pixelforge, `configs/cls/cct_2_3x2_32_cifar10.yaml`):
its accuracy on the 10,000 CIFAR-10 test images, read straight from ../shared/data/cifar10-jpeg.tar.gz, and
`pixelforge classify` without --weights."""
import json
import tarfile

import pytest
import torch
from safetensors import safe_open

import pixelforge
from conftest import DATA
from pixelforge.data.classification import read_archive_split
from pixelforge.zoo import pretrained_file
from test_cls_train import _classify

ARCHIVE = DATA / "cifar10-jpeg.tar.gz"
pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not found")


@pytest.fixture(scope="module")
def class_names():
    with safe_open(str(pretrained_file("cct_2_3x2_32")), "pt") as f:
        return json.loads(f.metadata()["class_names"])


def test_bundled_classifier_reaches_80_percent_on_the_test_set(class_names):
    images, folders = read_archive_split(ARCHIVE, "test")
    assert len(images) == 10_000
    labels = torch.tensor([class_names.index(f) for f in folders])
    model = pixelforge.create_model("cct_2_3x2_32", pretrained=True).eval()
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.inference_mode():
        pred = torch.cat([model(chunk).argmax(-1) for chunk in x.split(1000)])
    top1 = (pred == labels).float().mean().item()
    assert top1 >= 0.80, f"bundled cct_2_3x2_32: top-1 {top1:.4f} on the CIFAR-10 test set"


def test_classify_uses_the_bundled_weights(class_names, tmp_path, capsys):
    with tarfile.open(ARCHIVE) as tar:
        member = next(m for m in tar if m.isfile() and "/test/" in m.name)
        path = tmp_path / member.name.split("/")[-1]
        path.write_bytes(tar.extractfile(member).read())
    assert _classify([str(path), "--model", "cct_2_3x2_32", "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(path) and all(line.split()[1] in class_names for line in lines[1:4])
    assert _classify([str(path), "--model", "cct_7_3x1_32"]) == 1
    assert "'cct_7_3x1_32' has no pretrained weights; pass --weights W" in capsys.readouterr().err

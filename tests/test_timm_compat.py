"""timm's ways to point at weights go through the official-key conversion; pretrained=True with another
num_classes re-initialises the head; group_matcher makes timm's layer-wise decay work on the classifiers."""
import json
import logging

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay

import pixelforge
from conftest import PARITY
from pixelforge.zoo import save_weights

CFSR_X4 = PARITY / "cfsr_official_x4" / "checkpoint.pth"
needs_fixture = pytest.mark.skipif(not CFSR_X4.is_file(), reason="parity fixtures not present")


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@needs_fixture
def test_overlay_file_checkpoint_path_and_local_dir_convert_official_keys(tmp_path):
    reference = pixelforge.create_model("cfsr_x4", weights=CFSR_X4)  # official keys, converted
    _same(timm.create_model("cfsr_x4", pretrained=True, pretrained_cfg_overlay=dict(file=str(CFSR_X4))), reference)
    _same(timm.create_model("cfsr_x4", checkpoint_path=str(CFSR_X4)), reference)
    folder = tmp_path / "cfsr"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "cfsr_x4", "pretrained_cfg": {}}))
    (folder / "pytorch_model.bin").write_bytes(CFSR_X4.read_bytes())  # the official file, keys unconverted
    _same(timm.create_model(f"local-dir:{folder}", pretrained=True), reference)


def test_local_dir_without_weights_names_the_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "cfsr_x4", "pretrained_cfg": {}}))
    with pytest.raises(FileNotFoundError, match="no weights file .* in"):
        timm.create_model(f"local-dir:{tmp_path}", pretrained=True)


def test_pretrained_with_other_num_classes_resets_the_head(caplog):
    full = timm.create_model("cct_2_3x2_32", pretrained=True)
    with caplog.at_level(logging.INFO, logger="pixelforge.zoo.registry"):
        five = timm.create_model("cct_2_3x2_32", pretrained=True, num_classes=5)
    assert five.head.out_features == 5
    assert any("re-initialised" in r.getMessage() and "head" in r.getMessage() for r in caplog.records)
    body = {k: v for k, v in full.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(five.state_dict()[k], v) for k, v in body.items())  # everything else is pretrained


def test_explicit_weights_with_other_num_classes_load_their_head(tmp_path):
    """A classifier trained here on 3 classes loads whole, head included (it was re-initialised: random logits)."""
    three = pixelforge.create_model("cct_2_3x2_32", num_classes=3)
    path = save_weights(three.state_dict(), tmp_path / "three.safetensors")
    loaded = pixelforge.create_model("cct_2_3x2_32", num_classes=3, weights=path)
    _same(loaded, three)


def test_half_precision_files_load_as_fp32(tmp_path):
    model = pixelforge.create_model("cfsr_x2", depths=(1,), embed_dim=8)
    path = save_weights({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "half.safetensors")
    loaded = pixelforge.create_model("cfsr_x2", depths=(1,), embed_dim=8, weights=path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert all(torch.equal(a, b.half().float()) for a, b in zip(loaded.state_dict().values(),
                                                                 model.state_dict().values()))


@pytest.mark.parametrize("name", ["cct_2_3x2_32", "SReT_T", "vim_tiny_patch16_224"])
def test_layer_decay_groups(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) >= 3 and max(scales) == 1.0  # stem < blocks < head
    named = dict(model.named_parameters())
    head = [g for g in groups if any(p is named["head.weight"] for p in g["params"])][0]
    stem = [g for g in groups if any(p is named["pos_embed"] for p in g["params"])][0]
    assert head["lr_scale"] == 1.0 and stem["lr_scale"] == min(scales)

"""Every registered model: builds (timm and pixelforge agree), runs forward, round-trips its weights bit-exactly.

Models above ``MAX_REAL_PARAMS`` are built on the meta device only (their forward is covered by the family tests
with small configurations), so the suite stays within CI's budget.
"""
import pytest
import timm
import torch

import pixelforge
from pixelforge.vision.dense import DenseImageModel

MAX_REAL_PARAMS = 12_000_000
MODELS = pixelforge.list_models()


def _meta_model(name):
    with torch.device("meta"):
        return pixelforge.create_model(name)


def _example_inputs(model, name):
    """Positional inputs for one forward pass on a small batch."""
    if hasattr(model, "example_inputs"):
        return model.example_inputs(batch_size=2)
    if isinstance(model, DenseImageModel):
        return (torch.rand(1, getattr(model.backbone, "in_chans", 3), 20, 28),)
    size = model.pretrained_cfg.get("input_size") or (3, 32, 32)
    return (torch.rand(2, *size),)


def _tensors(out):
    """The tensors of a forward's output (a tensor, a tuple/list, or a dict-like output such as diffusers')."""
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
    return [t for t in items if torch.is_tensor(t)]


def test_registry_lists_models_and_timm_sees_them():
    assert len(MODELS) >= 50
    assert set(MODELS) <= set(timm.list_models())
    assert pixelforge.list_models("cfsr_*") == ["cfsr_dereflect", "cfsr_x2", "cfsr_x3", "cfsr_x4"]


def test_unknown_model_error_names_it():
    with pytest.raises(ValueError, match="unknown model 'cfsr_x5'.*cfsr_x4"):
        pixelforge.create_model("cfsr_x5")


@pytest.mark.parametrize("name", MODELS)
def test_model_builds_on_meta_like_timm(name):
    model = _meta_model(name)
    with torch.device("meta"):
        via_timm = timm.create_model(name)
    assert type(via_timm) is type(model)
    assert list(via_timm.state_dict()) == list(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_and_weights_round_trip(name, tmp_path):
    if sum(p.numel() for p in _meta_model(name).parameters()) > MAX_REAL_PARAMS:
        pytest.skip(f"{name} is large; built on meta only")
    torch.manual_seed(0)
    model = pixelforge.create_model(name).eval()
    inputs = _example_inputs(model, name)
    torch.manual_seed(2)  # some models draw randomness in eval mode (SReT's slice permutations)
    with torch.inference_mode():
        out = model(*inputs)
    tensors = _tensors(out)
    assert tensors and all(torch.isfinite(t).all() for t in tensors)

    path = pixelforge.save_weights(model, tmp_path / f"{name}.safetensors")
    torch.manual_seed(1)
    reloaded = pixelforge.create_model(name, weights=path).eval()
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert list(saved) == list(loaded)
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    torch.manual_seed(2)
    with torch.inference_mode():
        out2 = reloaded(*inputs)
    for a, b in zip(tensors, _tensors(out2), strict=True):
        assert torch.equal(a, b)

"""Top-k classes of images (``pixelforge classify``): a classifier with its eval transform and class names.

Weights trained by ``pixelforge train`` carry their training config (model arguments, data normalisation) and the
class names in the safetensors metadata; other weights (official checkpoints included) use the model's registered
configuration and print class indices.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["classifier_probe", "classify_images", "load_classifier"]


def load_classifier(model_name: str, weights: str | Path, device: str = "cpu"):
    """Build ``model_name`` with ``weights``; returns (model in eval mode, eval transform, class names or None)."""
    from timm.data import create_transform
    from timm.models import get_pretrained_cfg

    from ..data.classification import resolve_data_config
    from ..zoo import create_model, read_checkpoint, stored_training_config, unwrap_state_dict

    weights = Path(weights)
    state = unwrap_state_dict(read_checkpoint(weights))
    cfg = stored_training_config(weights)
    if cfg.get("model", {}).get("name", model_name) != model_name:
        raise ValueError(f"{weights} was trained for '{cfg['model']['name']}', not '{model_name}'")
    args = {k: v for k, v in cfg.get("model", {}).get("args", {}).items() if "drop" not in k}
    pre = get_pretrained_cfg(model_name)
    head = f"{pre.classifier}.weight" if pre is not None and isinstance(pre.classifier, str) else None
    if head in state:
        args["num_classes"] = state[head].shape[0]
    model = create_model(model_name, weights=state, **args).to(device).eval()
    d = cfg.get("data", {})
    dc = resolve_data_config(model_name, args, **{k: d.get(k) for k in ("img_size", "mean", "std", "interpolation",
                                                                          "crop_pct")})
    transform = create_transform(dc["input_size"], is_training=False, interpolation=dc["interpolation"],
                                 mean=dc["mean"], std=dc["std"], crop_pct=dc["crop_pct"])
    names = _class_names(weights)
    return model, transform, names


def _class_names(weights: Path) -> list[str] | None:
    """The class names ``pixelforge train`` stores in a safetensors file's metadata, if any."""
    if weights.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        names = (f.metadata() or {}).get("class_names")
    return None if names is None else json.loads(names)


def classifier_probe(transform, batch: int = 8) -> torch.Tensor:
    """(batch, C, H, W): crops of the bundled sample photo through the eval ``transform``, to time and check a
    classifier's precision on (:func:`pixelforge.infer.precision.prepare_model`)."""
    from PIL import Image

    from ..data.image_io import quantize
    from .precision import probe_input

    return torch.stack([transform(Image.fromarray(quantize(crop))) for crop in probe_input(3, 96, batch)])


@torch.inference_mode()
def classify_images(model, transform, paths: list[str | Path], topk: int = 5,
                    precision: str = "fp32") -> list[list[tuple[int, float]]]:
    """For each image file, the ``topk`` (class index, probability) pairs, most likely first; the forward runs in
    ``precision`` (fp32, bf16/fp16 autocast; an int8 model is quantized beforehand)."""
    from PIL import Image

    from ..data.image_io import quantize, read_image
    from .precision import autocast

    device = next(model.parameters(), torch.empty(0)).device
    results = []
    for path in paths:
        img = Image.fromarray(quantize(read_image(path, channels=3).pixels))
        with autocast(precision, device):
            logits = model(transform(img).unsqueeze(0).to(device))
        probs = logits.float().softmax(-1)[0]
        values, indices = probs.topk(min(topk, probs.numel()))
        results.append(list(zip(indices.tolist(), values.tolist())))
    return results

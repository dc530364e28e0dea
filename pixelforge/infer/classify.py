"""``pixelforge classify IMAGE... --model NAME --weights W [--topk 5]``: top-k classes of images.

Weights trained by ``pixelforge train`` carry their training config (model arguments, data normalisation) and the
class names in the safetensors metadata; other weights (official checkpoints included) use the model's registered
configuration and print class indices.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

__all__ = ["add_classify_parser", "bundled_weights", "classifier_probe", "classify_images", "load_classifier"]


def bundled_weights(model_name: str) -> Path:
    """The weights file of ``model_name``'s pretrained config (``$PIXELFORGE_HOME/weights`` or package data)."""
    from timm.models import get_pretrained_cfg

    from ..zoo import resolve_weights

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.file:
        raise ValueError(f"'{model_name}' has no bundled weights; pass --weights")
    return resolve_weights(cfg.file, model_name)


def load_classifier(model_name: str, weights: str | Path, device: str = "cpu"):
    """Build ``model_name`` with ``weights``; returns (model in eval mode, eval transform, class names or None)."""
    from timm.data import create_transform
    from timm.models import get_pretrained_cfg

    from ..train.cls import ClassificationTask
    from ..zoo import create_model, read_checkpoint, unwrap_state_dict

    weights = Path(weights)
    state = unwrap_state_dict(read_checkpoint(weights))
    meta = {}
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
    cfg = json.loads(meta["config"]) if "config" in meta else {}
    if cfg.get("model", {}).get("name", model_name) != model_name:
        raise ValueError(f"{weights} was trained for '{cfg['model']['name']}', not '{model_name}'")
    args = {k: v for k, v in cfg.get("model", {}).get("args", {}).items() if "drop" not in k}
    pre = get_pretrained_cfg(model_name)
    head = f"{pre.classifier}.weight" if pre is not None and isinstance(pre.classifier, str) else None
    if head in state:
        args["num_classes"] = state[head].shape[0]
    model = create_model(model_name, weights=state, **args).to(device).eval()
    dc = ClassificationTask._resolve_data_cfg({"data": cfg.get("data", {}), "model": {"name": model_name,
                                                                                      "args": args}}, model_name)
    transform = create_transform(dc["input_size"], is_training=False, interpolation=dc["interpolation"],
                                 mean=dc["mean"], std=dc["std"], crop_pct=dc["crop_pct"])
    names = json.loads(meta["class_names"]) if "class_names" in meta else None
    return model, transform, names


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


def _run(args) -> int:
    from ..data.image_io import ImageIOError
    from ..zoo import CheckpointError
    from .precision import announce, prepare_model

    if args.topk < 1:
        print("pixelforge classify: --topk must be at least 1", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)  # models drawing random numbers at inference (SReT's slice shuffles) answer reproducibly
    try:
        weights = args.weights or bundled_weights(args.model)
        model, transform, names = load_classifier(args.model, weights, device)
        model, choice = prepare_model(model, args.precision, device, args.model, classifier_probe(transform),
                                      output="logits")
    except (ImageIOError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"pixelforge classify: {exc}", file=sys.stderr)
        return 2
    announce(choice, "pixelforge classify")
    failures = []
    for path in args.images:  # a bad file is reported on its own line; the others are still classified
        try:
            top = classify_images(model, transform, [path], args.topk, choice.precision)[0]
        except ImageIOError as exc:
            print(f"pixelforge classify: {exc}", file=sys.stderr)
            failures.append(path)
            continue
        print(path)
        for rank, (index, prob) in enumerate(top, 1):
            label = names[index] if names is not None and index < len(names) else str(index)
            print(f"  {rank}. {label:<20} {100 * prob:6.2f}%")
    if failures and len(args.images) > 1:
        print(f"pixelforge classify: {len(failures)} of {len(args.images)} images failed: {', '.join(failures)}",
              file=sys.stderr)
    return 2 if failures else 0


def add_classify_parser(sub) -> None:
    """Add the ``classify`` sub-command."""
    from .precision import add_precision_argument

    p = sub.add_parser("classify", help="print the top-k classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", required=True, help="model name, e.g. cct_2_3x2_32 (see `pixelforge models`)")
    p.add_argument("--weights", help="weights: a pixelforge .safetensors or an official checkpoint (default: the "
                                     "model's bundled weights, e.g. cct_2_3x2_32 trained here on CIFAR-10)")
    p.add_argument("--topk", type=int, default=5, help="how many classes to print (default 5)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_precision_argument(p)
    p.set_defaults(func=_run)

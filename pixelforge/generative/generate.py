"""Class-conditional generation by registered name, the library behind ``pixelforge generate`` and the web page: VAR
transformers with their tokenizer, DiT models with their DiffScaler tasks
(:func:`pixelforge.generative.diffscaler.pipeline.generate_images`).

Weights default to the model's pretrained file (:func:`pixelforge.zoo.pretrained_file`); a VAR file written by
``pixelforge train`` carries its config, from which the model's arguments and its tokenizer are taken. A DiT's
bundled DiffScaler task files lie next to its base file as ``<base stem>-task-<name>.safetensors``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..infer.precision import PrecisionChoice

__all__ = ["GenerateOptions", "generate", "is_var", "bundled_task_files"]


@dataclass
class GenerateOptions:
    """What to generate and how (the options of ``pixelforge generate``).

    ``weights``: the model's file (VAR) or base file and DiffScaler task files (DiT); None: the pretrained ones.
    ``classes``: class ids, ``n`` images each (None: ``n`` images of random classes for VAR, of classes 0, 1, ...
    of the task for DiT). VAR: ``vae_model``/``vae_weights`` (default: from the training config or the paired
    tokenizer), ``cfg``, ``top_k``, ``top_p``, ``more_smooth``. DiT: ``task``, ``scheduler``, ``steps``,
    ``guidance``.
    """

    model: str
    weights: list[str] | None = None
    classes: list[int] | None = None
    n: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 16
    vae_model: str | None = None
    vae_weights: str | None = None
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False
    task: str | None = None
    scheduler: str = "ddim"
    steps: int = 50
    guidance: float = 1.0


def is_var(name: str) -> bool | None:
    """True for a registered VAR transformer, False for another registered model, None for an unknown name."""
    from ..zoo import create_model, is_model
    from .var import VAR, VQVAE

    if not is_model(name):
        return None
    with torch.device("meta"):
        model = create_model(name)
    if isinstance(model, VQVAE):
        raise ValueError(f"'{name}' is a VAR tokenizer; pass the transformer (e.g. var_d16) as --model")
    return isinstance(model, VAR)


def bundled_task_files(name: str) -> list[Path]:
    """``name``'s pretrained file followed by the DiffScaler task files next to it
    (``<stem>-task-<task>.safetensors``, sorted). Raises FileNotFoundError as :func:`~pixelforge.zoo.pretrained_file`.
    """
    from ..zoo import pretrained_file

    base = pretrained_file(name)
    return [base, *sorted(base.parent.glob(f"{base.stem}-task-*.safetensors"))]


def _load_var(o: GenerateOptions, device: torch.device):
    """(transformer, tokenizer) in eval mode."""
    from ..zoo import create_model, pretrained_file, stored_training_config
    from .var.transformer import PAIRED_TOKENIZER

    if o.weights and len(o.weights) > 1:
        raise ValueError(f"one weights file expected for {o.model}, got {len(o.weights)}")
    weights = o.weights[0] if o.weights else str(pretrained_file(o.model))
    cfg = stored_training_config(weights)
    model_args = cfg.get("model", {}).get("args", {}) if cfg.get("model", {}).get("name") == o.model else {}
    vq_cfg = cfg.get("vqvae", {})
    vq_name = o.vae_model or vq_cfg.get("name") or PAIRED_TOKENIZER.get(o.model)
    if vq_name is None:
        raise ValueError(f"no tokenizer known for '{o.model}'; pass --vae-model and --vae-weights")
    vq_weights = o.vae_weights or vq_cfg.get("weights")
    if not vq_weights or (not o.vae_weights and not Path(vq_weights).is_file()):  # a training path gone: bundled
        vq_weights = str(pretrained_file(vq_name))
    var = create_model(o.model, weights=weights, **model_args)
    # the scales are the transformer's (the released tokenizer serves the 256² and the 512² patch_nums alike)
    vq_args = {"patch_nums": var.patch_nums, **(vq_cfg.get("args", {}) if vq_name == vq_cfg.get("name") else {})}
    vqvae = create_model(vq_name, weights=vq_weights, **vq_args)
    return var.to(device).eval(), vqvae.to(device).eval()


def _var_precision(o: GenerateOptions, var, vqvae, device: torch.device):
    """``precision`` for the VAR transformer: (model, choice), probed with teacher forcing on the tokens of the
    bundled sample photo (output ``logits``: next-token top-1 agreement with fp32)."""
    from ..infer.precision import prepare_model, probe_input

    with torch.inference_mode():
        photo = probe_input(3, vqvae.image_size).to(device) * 2 - 1
        tokens = vqvae.quantize.idx_to_var_input(vqvae.img_to_idx(photo))
    labels = torch.zeros(1, dtype=torch.long, device=device)
    return prepare_model(var, o.precision, device, o.model, tokens, output="logits",
                         forward=lambda m, x: m(labels, x))


def _generate_var(o: GenerateOptions, device: torch.device) -> tuple[torch.Tensor, list[int], PrecisionChoice]:
    from ..infer.precision import autocast
    from .var import sample

    var, vqvae = _load_var(o, device)
    var, choice = _var_precision(o, var, vqvae, device)
    if o.classes is not None and any(not 0 <= c < var.num_classes for c in o.classes):
        raise ValueError(f"classes must be in [0, {var.num_classes - 1}] for {o.model}")
    labels = None if o.classes is None else torch.tensor([c for c in o.classes for _ in range(o.n)])
    total = o.n * (len(o.classes) if o.classes else 1)
    generator = torch.Generator(device=device).manual_seed(o.seed)
    images, used = [], []
    for start in range(0, total, o.batch_size):
        b = min(o.batch_size, total - start)
        with autocast(choice.precision, device):
            out = sample(var, vqvae, b, None if labels is None else labels[start:start + b].to(device),
                         cfg=o.cfg, top_k=o.top_k, top_p=o.top_p, more_smooth=o.more_smooth, generator=generator)
        images.append(out.images.float().cpu())
        used += out.labels.tolist()
    return torch.cat(images), used, choice


def _generate_diffusion(o: GenerateOptions, device: torch.device
                        ) -> tuple[torch.Tensor, list[int], PrecisionChoice]:
    try:
        from .diffscaler.pipeline import generate_images
    except ImportError as exc:
        raise ValueError(f"'{o.model}' is not a VAR model and the diffusion generator is unavailable ({exc})") from None
    import numpy as np

    from ..infer.precision import autocast
    from ..zoo import is_model

    if o.precision == "int8":
        raise ValueError("--precision int8 applies to VAR models; diffusion pipelines run fp32, bf16 or fp16")
    weights = o.weights or ([str(p) for p in bundled_task_files(o.model)] if is_model(o.model) else None)
    expanded = None if o.classes is None else [c for c in o.classes for _ in range(o.n)]
    # auto is measured for VAR only; a diffusion pipeline runs fp32 unless bf16/fp16 is asked for
    precision = "fp32" if o.precision == "auto" else o.precision
    with autocast(precision, device):
        pil = generate_images(o.model, weights=weights, classes=expanded, n=len(expanded) if expanded else o.n,
                              task=o.task, scheduler=o.scheduler, steps=o.steps, guidance=o.guidance, seed=o.seed,
                              device=device)
    images = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for im in pil])
    reason = "diffusion pipelines run fp32 under auto" if o.precision == "auto" else "requested"
    return images, expanded or [-1] * len(pil), PrecisionChoice(o.precision, precision, reason)


def generate(o: GenerateOptions) -> tuple[torch.Tensor, list[int], PrecisionChoice]:
    """All images (N, 3, H, W) in [0, 1], class by class, their labels (-1: unconditional) and the precision used.

    Raises:
        ValueError / FileNotFoundError with a one-line message (bad classes, missing weights...).
    """
    from ..infer.precision import resolve_device

    if o.n < 1 or o.batch_size < 1:
        raise ValueError("-n and --batch-size must be at least 1")
    device = resolve_device(o.device)
    return (_generate_var if is_var(o.model) else _generate_diffusion)(o, device)

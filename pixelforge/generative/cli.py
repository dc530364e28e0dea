"""``pixelforge generate``: class-conditional image generation with VAR models (diffusion models are delegated to
:func:`pixelforge.generative.diffscaler.pipeline.generate_images`).

    pixelforge generate --model var_d16 --weights var_d16.pth --vae-weights vae_ch160v4096z32.pth \\
        --classes 1,2,3 -n 4 -o grid.png

writes ``grid.png`` (one row per class, ``n`` images each) and the individual images ``grid-000-c1.png``, ... next
to it, all atomically. A weights file written by ``pixelforge train`` carries its config, from which the model's
arguments and the tokenizer used in training are taken.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

__all__ = ["add_generate_parser"]


def _parse_classes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes must be comma-separated integers, got '{text}'") from None


def _training_config(weights: str | None) -> dict:
    """The config stored by ``pixelforge train`` in a safetensors file's metadata ({} when absent)."""
    if not weights or not str(weights).endswith(".safetensors") or not Path(weights).is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["config"]) if "config" in meta else {}


def _is_var(name: str) -> bool | None:
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


def _weights_file(name: str, weights: str | None, flag: str) -> str:
    """``weights``, else the model's pretrained file resolved before anything is built (fails fast)."""
    if weights:
        return weights
    from timm.models import get_pretrained_cfg

    from ..zoo import resolve_weights

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.file:
        raise FileNotFoundError(f"'{name}' has no pretrained weights; pass {flag}")
    return str(resolve_weights(cfg.file, name))


def _load_var(args, device: torch.device):
    """(transformer, tokenizer) in eval mode from the command-line arguments."""
    from ..zoo import create_model
    from .var.transformer import PAIRED_TOKENIZER

    if args.weights and len(args.weights) > 1:
        raise ValueError(f"one weights file expected for {args.model}, got {len(args.weights)}")
    weights = args.weights[0] if args.weights else None
    cfg = _training_config(weights)
    model_args = cfg.get("model", {}).get("args", {}) if cfg.get("model", {}).get("name") == args.model else {}
    weights = _weights_file(args.model, weights, "--weights")
    vq_cfg = cfg.get("vqvae", {})
    vq_name = args.vae_model or vq_cfg.get("name") or PAIRED_TOKENIZER.get(args.model)
    vq_weights = args.vae_weights or vq_cfg.get("weights")
    if vq_name is None:
        raise ValueError(f"no tokenizer known for '{args.model}'; pass --vae-model and --vae-weights")
    vq_weights = _weights_file(vq_name, vq_weights, "--vae-weights")
    var = create_model(args.model, weights=weights, **model_args)
    # the scales are the transformer's (the released tokenizer serves the 256² and the 512² patch_nums alike)
    vq_args = {"patch_nums": var.patch_nums, **(vq_cfg.get("args", {}) if vq_name == vq_cfg.get("name") else {})}
    vqvae = create_model(vq_name, weights=vq_weights, **vq_args)
    return var.to(device).eval(), vqvae.to(device).eval()


def _var_precision(args, var, vqvae, device: torch.device):
    """``--precision`` for the VAR transformer: (model, choice), probed with teacher forcing on the tokens of the
    bundled sample photo (output ``logits``: next-token top-1 agreement with fp32)."""
    from ..infer.precision import prepare_model, probe_input

    with torch.inference_mode():
        photo = probe_input(3, vqvae.image_size).to(device) * 2 - 1
        tokens = vqvae.quantize.idx_to_var_input(vqvae.img_to_idx(photo))
    labels = torch.zeros(1, dtype=torch.long, device=device)
    return prepare_model(var, args.precision, device, args.model, tokens, output="logits",
                         forward=lambda m, x: m(labels, x))


def _generate_var(args, classes: list[int] | None) -> tuple[torch.Tensor, list[int]]:
    """All images (N, 3, H, W) in [0, 1], class by class, and their labels."""
    from ..infer.precision import announce, autocast
    from .var import sample

    device = torch.device(args.device)
    var, vqvae = _load_var(args, device)
    var, choice = _var_precision(args, var, vqvae, device)
    announce(choice, "pixelforge generate")
    if classes is not None and any(not 0 <= c < var.num_classes for c in classes):
        raise ValueError(f"classes must be in [0, {var.num_classes - 1}] for {args.model}")
    labels = None if classes is None else torch.tensor([c for c in classes for _ in range(args.n)])
    total = args.n * (len(classes) if classes else 1)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    images, used = [], []
    for start in range(0, total, args.batch_size):
        b = min(args.batch_size, total - start)
        with autocast(choice.precision, device):
            out = sample(var, vqvae, b, None if labels is None else labels[start:start + b].to(device),
                         cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, more_smooth=args.more_smooth,
                         generator=generator)
        images.append(out.images.float().cpu())
        used += out.labels.tolist()
    return torch.cat(images), used


def _generate_diffusion(args, classes: list[int] | None) -> tuple[torch.Tensor, list[int]]:
    try:
        from .diffscaler.pipeline import generate_images
    except ImportError as exc:
        raise ValueError(f"'{args.model}' is not a VAR model and the diffusion generator is unavailable "
                         f"({exc})") from None
    import numpy as np

    from ..infer.precision import autocast

    if args.precision == "int8":
        raise ValueError("--precision int8 applies to VAR models; diffusion pipelines run fp32, bf16 or fp16")
    expanded = None if classes is None else [c for c in classes for _ in range(args.n)]
    # auto is measured for VAR only; a diffusion pipeline runs fp32 unless bf16/fp16 is asked for
    with autocast("fp32" if args.precision == "auto" else args.precision, args.device):
        pil = generate_images(args.model, weights=args.weights, classes=expanded,
                              n=len(expanded) if expanded else args.n, task=args.task, scheduler=args.scheduler,
                              steps=args.steps, guidance=args.guidance, seed=args.seed, device=args.device)
    images = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for im in pil])
    return images, expanded or [-1] * len(pil)


def _run(args) -> int:
    from ..data.grid import make_grid
    from ..data.image_io import ImageIOError, write_image

    try:
        if args.n < 1 or args.batch_size < 1:
            raise ValueError("-n and --batch-size must be at least 1")
        classes = _parse_classes(args.classes)
        out = Path(args.output)
        if out.parent and not out.parent.is_dir():
            raise ValueError(f"output folder does not exist: {out.parent}")
        kind = _is_var(args.model)
        images, labels = (_generate_var if kind else _generate_diffusion)(args, classes)
        nrow = args.nrow or (args.n if classes and len(classes) > 1 else min(len(images), 8))
        write_image(out, make_grid(images, nrow))
        for i, (img, label) in enumerate(zip(images, labels)):
            tag = f"-c{label}" if label >= 0 else ""
            write_image(out.with_name(f"{out.stem}-{i:03d}{tag}{out.suffix}"), img)
    except (ValueError, FileNotFoundError, ImageIOError) as exc:
        print(f"pixelforge generate: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {len(images)} images")
    return 0


def add_generate_parser(sub) -> None:
    """Add the ``generate`` sub-command."""
    from ..infer.precision import add_precision_argument

    p = sub.add_parser("generate", help="class-conditional image generation (VAR, DiffScaler)",
                       description="Generate a grid of class-conditional samples plus the individual images.")
    p.add_argument("--model", required=True, help="registered model name (var_d16, var_d6_32, dit_...) or a "
                                                  "diffusion pipeline folder")
    p.add_argument("--weights", nargs="+", help="model weights (official .pth or pixelforge .safetensors; for "
                                                "DiffScaler also task files); default: the model's pretrained file "
                                                "in $PIXELFORGE_HOME/weights")
    p.add_argument("--classes", help="comma-separated class ids, e.g. 1,2,3 (default: random classes for VAR)")
    p.add_argument("-n", type=int, default=1, help="images per class (total images without --classes)")
    p.add_argument("-o", "--output", default="samples.png", help="grid image path; individual images go beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--nrow", type=int, default=0, help="grid columns (default: -n per class row)")
    add_precision_argument(p, "; auto is measured for VAR models, diffusion pipelines run fp32 under auto")
    var = p.add_argument_group("VAR")
    var.add_argument("--vae-model", help="tokenizer model name (default: the one paired with --model)")
    var.add_argument("--vae-weights", help="tokenizer weights (default: from the training config or "
                                           "$PIXELFORGE_HOME/weights)")
    var.add_argument("--cfg", type=float, default=1.5, help="guidance ramp: weight 1+cfg·k/(K-1) at scale k")
    var.add_argument("--top-k", type=int, default=900)
    var.add_argument("--top-p", type=float, default=0.96)
    var.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax code mixing (visualisation only)")
    diff = p.add_argument_group("diffusion")
    diff.add_argument("--task", help="DiffScaler task id or name")
    diff.add_argument("--scheduler", default="ddim")
    diff.add_argument("--steps", type=int, default=50)
    diff.add_argument("--guidance", type=float, default=1.0)
    p.set_defaults(func=_run)

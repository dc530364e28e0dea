"""``pixelforge generate --model NAME [--weights W...] [--classes 1,2,3] -n 4 -o grid.png``: class-conditional
generation (VAR, DiT + DiffScaler tasks; :mod:`pixelforge.generative.generate`).

    pixelforge generate --model var_d16 --weights var_d16.pth --vae-weights vae_ch160v4096z32.pth \\
        --classes 1,2,3 -n 4 -o grid.png

writes ``grid.png`` (one row per class, ``n`` images each) and the individual images ``grid-000-c1.png``, ... next
to it, all atomically. Without ``--weights`` the model's bundled weights are used.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from .common import EXIT_OK, add_device_argument, add_precision_argument, fail

__all__ = ["add_parser", "options_from_args", "parse_classes"]


def parse_classes(text: str | None) -> list[int] | None:
    """``"1,2,3"`` → [1, 2, 3]; None or empty → None."""
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes must be comma-separated integers, got '{text}'") from None


def options_from_args(args):
    """The :class:`~pixelforge.generative.generate.GenerateOptions` of parsed ``generate`` arguments."""
    from ..generative.generate import GenerateOptions

    values = {f.name: getattr(args, f.name) for f in fields(GenerateOptions) if hasattr(args, f.name)}
    return GenerateOptions(**{**values, "classes": parse_classes(args.classes)})


def _run(args) -> int:
    from ..data.grid import make_grid
    from ..data.image_io import ImageIOError, write_image
    from ..generative.generate import generate
    from ..infer.precision import announce

    try:
        out = Path(args.output)
        if out.parent and not out.parent.is_dir():
            raise ValueError(f"output folder does not exist: {out.parent}")
        options = options_from_args(args)
        images, labels, choice = generate(options)
        announce(choice, "pixelforge generate")
        nrow = args.nrow or (args.n if options.classes and len(options.classes) > 1 else min(len(images), 8))
        write_image(out, make_grid(images, nrow))
        for i, (img, label) in enumerate(zip(images, labels)):
            tag = f"-c{label}" if label >= 0 else ""
            write_image(out.with_name(f"{out.stem}-{i:03d}{tag}{out.suffix}"), img)
    except (ValueError, FileNotFoundError, ImageIOError) as exc:
        return fail("generate", str(exc).replace("weights=PATH", "--weights W"))
    print(f"wrote {out} and {len(images)} images")
    return EXIT_OK


def add_parser(sub) -> None:
    """Add the ``generate`` sub-command."""
    p = sub.add_parser("generate", help="class-conditional image generation (VAR, DiffScaler)",
                       description="Generate a grid of class-conditional samples plus the individual images.")
    p.add_argument("--model", required=True, help="registered model name (var_d16, var_d6_32, dit_...) or a "
                                                  "diffusion pipeline folder")
    p.add_argument("--weights", nargs="+", help="model weights (official .pth or pixelforge .safetensors; for "
                                                "DiffScaler also task files); default: the model's bundled weights "
                                                "(and, for a DiT, its bundled task files)")
    p.add_argument("--classes", help="comma-separated class ids, e.g. 1,2,3 (default: random classes for VAR)")
    p.add_argument("-n", type=int, default=1, help="images per class (total images without --classes)")
    p.add_argument("-o", "--output", default="samples.png", help="grid image path; individual images go beside it")
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--nrow", type=int, default=0, help="grid columns (default: -n per class row)")
    add_precision_argument(p, "; auto is measured for VAR models, diffusion pipelines run fp32 under auto")
    var = p.add_argument_group("VAR")
    var.add_argument("--vae-model", help="tokenizer model name (default: the one paired with --model)")
    var.add_argument("--vae-weights", help="tokenizer weights (default: from the training config, else the "
                                           "tokenizer's bundled weights)")
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

"""``pixelforge train CONFIG [key=value ...]``."""
from __future__ import annotations

from .common import EXIT_OK, fail

__all__ = ["add_parser"]


def _run(args) -> int:
    from ..train.config import format_config, load_config, parse_config
    from ..train.loop import train

    try:  # unknown or mistyped keys are reported here, before anything runs
        cfg = parse_config(load_config(args.config, args.overrides))
    except (FileNotFoundError, ValueError) as exc:
        return fail("train", exc)
    if args.print_config:
        print(format_config(cfg), end="")
        return EXIT_OK
    out = train(cfg)
    print(f"done: {out / 'model.safetensors'}")
    return EXIT_OK


def add_parser(sub) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser("train", help="train a model from a YAML config (resumes automatically)")
    p.add_argument("config", help="YAML config, e.g. configs/sr/cfsr_x4.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.total_steps=100 output_dir=runs/x")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every default filled in) and exit without training")
    p.set_defaults(func=_run)

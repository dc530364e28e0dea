"""``pixelforge train CONFIG [key=value ...]``."""
from __future__ import annotations

import sys


def _run(args) -> int:
    from .config import load_config
    from .loop import train

    try:
        cfg = load_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pixelforge train: {exc}", file=sys.stderr)
        return 2
    out = train(cfg)
    print(f"done: {out / 'model.safetensors'}")
    return 0


def add_train_parser(sub) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser("train", help="train a model from a YAML config (resumes automatically)")
    p.add_argument("config", help="YAML config, e.g. configs/sr/cfsr_x4.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.total_steps=100 output_dir=runs/x")
    p.set_defaults(func=_run)

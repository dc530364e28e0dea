"""``pixelforge models [PATTERN]``: registered models and where their default weights are."""
from __future__ import annotations

from .common import EXIT_OK, fail

__all__ = ["add_parser"]


def _run(args) -> int:
    from ..zoo import list_models, pretrained_status

    pattern = args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*"
    names = list_models(pattern)
    if not names:
        return fail("models", f"no model matches '{args.pattern}'")
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  default weights")
    for name in names:
        print(f"{name:<{width}}  {pretrained_status(name)}")
    return EXIT_OK


def add_parser(subparsers) -> None:
    """``pixelforge models [PATTERN]``: registered models and where their default weights are."""
    parser = subparsers.add_parser("models", help="list registered models",
                                   description="List registered models (shell-style PATTERN; a plain word matches "
                                               "as a substring) and whether their default weights are installed.")
    parser.add_argument("pattern", nargs="?", default="*", help="e.g. 'cfsr*' or 'x4'")
    parser.set_defaults(func=_run)

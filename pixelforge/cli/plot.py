"""``pixelforge plot RUN_DIR [RUN_DIR...] [-o curves.png]``: training curves of runs, overlaid."""
from __future__ import annotations

from .common import EXIT_OK, fail

__all__ = ["add_parser"]


def _run(args) -> int:
    from ..train.curves import plot_runs

    try:
        out = plot_runs(args.runs, args.output, metric=args.metric)
    except (OSError, ValueError, ImportError) as exc:
        return fail("plot", exc)
    print(out)
    return EXIT_OK


def add_parser(sub) -> None:
    """Add the ``plot`` sub-command."""
    p = sub.add_parser("plot", help="plot training runs (loss, learning rate, validation metric against step)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output folders of `pixelforge train` (metrics.jsonl)")
    p.add_argument("-o", "--output", default="curves.png", help="PNG to write (default curves.png)")
    p.add_argument("--metric", help="validation metric (default: the first run's recipe metric, e.g. psnr_y)")
    p.set_defaults(func=_run)

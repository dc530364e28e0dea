"""The ``pixelforge`` command line: one sub-command per job, each defined in the module that does the job."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

# command name -> "module:function"; the function takes the argparse sub-parsers object and adds its parser, with
# ``func`` set to a callable taking the parsed args and returning an exit code. Imported lazily so --help is fast.
COMMANDS = {
    "train": "pixelforge.train.cli:add_train_parser",
    "classify": "pixelforge.infer.classify:add_classify_parser",
    "upscale": "pixelforge.infer.upscale:add_upscale_parser",
    "eval": "pixelforge.infer.evaluate:add_eval_parser",
    "convert": "pixelforge.zoo.cli:add_convert_parser",
    "models": "pixelforge.zoo.cli:add_models_parser",
    "dereflect": "pixelforge.infer.dereflect:add_dereflect_parser",
    "generate": "pixelforge.generative.cli:add_generate_parser",
    "serve": "pixelforge.serve:add_serve_parser",
    "export": "pixelforge.export:add_export_parser",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="pixelforge", description="pixelforge: vision and generative models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for target in COMMANDS.values():
        module, func = target.split(":")
        getattr(importlib.import_module(module), func)(sub)
    return parser


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    SIGTERM and SIGHUP end the command through ``SystemExit`` (exit code 128 + signal), so that cleanup code runs
    (temporary files of atomic writes are removed) as it does for Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    signals = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        signals = []
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in signals}
    try:
        return int(args.func(args) or 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())

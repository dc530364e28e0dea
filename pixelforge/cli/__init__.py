"""The ``pixelforge`` command line: one module per command in this package, commands only (argument parsing and
calls into the library: :mod:`pixelforge.infer`, :mod:`pixelforge.zoo`, :mod:`pixelforge.train`...).

Exit codes, the same for every command (:mod:`.common`): 0 done; 1 error (the command stopped, e.g. unknown model,
unreadable weights); 2 a usage error (argparse) or a partial failure (some inputs failed, the others were written).
Errors are one stderr line ``pixelforge COMMAND: error: ...``.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import threading

__all__ = ["COMMANDS", "build_parser", "command_parser", "main"]

# command name -> "module:function"; the function takes the argparse sub-parsers object and adds its parser, with
# ``func`` set to a callable taking the parsed args and returning an exit code. Imported lazily so --help is fast.
# A new command is one module in this package and one line here.
COMMANDS = {
    "train": "pixelforge.cli.train:add_parser",
    "plot": "pixelforge.cli.plot:add_parser",
    "classify": "pixelforge.cli.classify:add_parser",
    "upscale": "pixelforge.cli.upscale:add_parser",
    "dereflect": "pixelforge.cli.dereflect:add_parser",
    "eval": "pixelforge.cli.eval:add_parser",
    "generate": "pixelforge.cli.generate:add_parser",
    "convert": "pixelforge.cli.convert:add_parser",
    "models": "pixelforge.cli.models:add_parser",
    "export": "pixelforge.cli.export:add_parser",
    "serve": "pixelforge.cli.serve:add_parser",
}


def _add(subparsers, command: str) -> argparse.ArgumentParser:
    module, func = COMMANDS[command].split(":")
    getattr(importlib.import_module(module), func)(subparsers)
    return subparsers.choices[command]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="pixelforge", description="pixelforge: vision and generative models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        _add(sub, command)
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one sub-command alone (``prog`` ``pixelforge COMMAND``), e.g. to read its defaults."""
    return _add(argparse.ArgumentParser(prog="pixelforge").add_subparsers(), command)


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

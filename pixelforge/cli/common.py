"""What every command shares: the exit codes, the one-line error report and the common options."""
from __future__ import annotations

import argparse
import sys

from ..infer.runner import one_line

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_PARTIAL", "fail", "add_backend_argument", "add_device_argument",
           "add_precision_argument"]

EXIT_OK = 0  # everything done
EXIT_ERROR = 1  # the command stopped: nothing (more) was done
EXIT_PARTIAL = 2  # some inputs failed, the others were done (argparse's usage errors also exit with 2)


def fail(command: str, problem: BaseException | str) -> int:
    """Print ``pixelforge COMMAND: error: PROBLEM`` as one stderr line; returns :data:`EXIT_ERROR`."""
    text = one_line(problem) if isinstance(problem, BaseException) else " ".join(problem.split())
    print(f"pixelforge {command}: error: {text}", file=sys.stderr)
    return EXIT_ERROR


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, default auto (CUDA when available, else the CPU), the same on every command that runs a model."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto: cuda when "
                                                         "available)")


def add_precision_argument(parser: argparse.ArgumentParser, help_extra: str = "") -> None:
    """``--precision {auto,fp32,bf16,fp16,int8}``, default auto, the same on every command that runs a model."""
    from ..infer.precision import MODES

    parser.add_argument("--precision", choices=MODES, default="auto",
                        help="auto (default: bf16 autocast where measured faster and accurate, else fp32), fp32, "
                             "bf16/fp16 autocast, or int8 (dynamic quantization of Linear layers, CPU)" + help_extra)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend {torch,onnxruntime}`` of the tiled commands."""
    from ..infer.onnx_backend import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch (default), or onnxruntime: the model exported to ONNX at the --tile size (or "
                             "an .onnx file from `pixelforge export` as --weights), fp32, CPU")

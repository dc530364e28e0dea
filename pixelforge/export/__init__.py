"""Exporting models for other runtimes: ONNX (``pixelforge export MODEL -o model.onnx --tile N``)."""
from .onnx import add_export_parser, export_onnx

__all__ = ["add_export_parser", "export_onnx"]

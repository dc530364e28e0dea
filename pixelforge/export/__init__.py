"""Exporting models for other runtimes: ONNX (``pixelforge export MODEL -o model.onnx --tile N``)."""
from .onnx import export_onnx, input_size

__all__ = ["export_onnx", "input_size"]

"""ONNX export of image models (at a fixed tile size) and classifiers (at their input size), opset 17.

Image models are traced at one tile size and batch 1: window attention, window padding, unfolds and relative-position
tables then have static shapes, and the tiled runner feeds every tile at that size (:class:`~pixelforge.infer.
onnx_backend.OnnxRuntimeModel` pads smaller ones and runs a batch image by image). Classifiers keep a dynamic batch
axis. The graph carries a ``pixelforge`` metadata entry
(JSON: model name, input size, upscale, spatial multiple, tile overlap) that the runtime wrapper reads. The exporter
is torch's TorchScript-based ``torch.onnx.export(dynamo=False)``, which needs no onnxscript.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx", "input_size"]

OPSET = 17


def input_size(model: nn.Module, tile: int | None) -> tuple[int, int, int]:
    """(C, H, W) of the exported input: the tile (rounded up to the model's spatial multiple) for image models,
    the pretrained input size for classifiers."""
    from ..infer.runner import model_channels

    if hasattr(model, "upscale"):
        if not tile or tile <= 0:
            raise ValueError("image models are exported at a fixed tile size: pass --tile N (e.g. 256)")
        multiple = int(getattr(model, "spatial_multiple", 1))
        tile = -(-tile // multiple) * multiple
        return model_channels(model), tile, tile
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" not in cfg:
        raise ValueError(f"{type(model).__name__} has no input_size in its pretrained config; cannot export it")
    return tuple(cfg["input_size"])


def export_onnx(model: nn.Module, output: str | Path | None, name: str, tile: int | None = None,
                opset: int = OPSET) -> bytes:
    """Export ``model`` (fp32, CPU, eval) to ONNX; returns the serialized model and writes it to ``output`` if given.

    Args:
        model: an image model (has ``upscale``; exported at ``tile``×``tile``) or a classifier (its input size).
        name: the model's registered name, recorded in the metadata.
        tile: input side of image models (rounded up to ``model.spatial_multiple``).
    Raises:
        ImportError when the ``onnx`` package is missing; ValueError when no tile is given for an image model.
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the optional packages: pip install 'pixelforge[onnx]'") from None
    size = input_size(model, tile)
    meta = {"model": name, "input_size": list(size), "torch": torch.__version__}
    for attr in ("upscale", "spatial_multiple", "tile_overlap"):
        if hasattr(model, attr):
            meta[attr] = int(getattr(model, attr))
    model = model.float().cpu().eval()
    buffer = io.BytesIO()
    image = hasattr(model, "upscale")
    meta["batch"] = 1 if image else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(model, (torch.rand(1, *size),), buffer, opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes=None if image else {"input": {0: "batch"}, "output": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "pixelforge", json.dumps(meta)
    data = proto.SerializeToString()
    if output is not None:
        from ..data.image_io import atomic_open

        with atomic_open(output, "wb") as f:
            f.write(data)
    return data

"""The ONNX Runtime backend of the tiled runner (``--backend onnxruntime``; optional extra ``pixelforge[onnx]``).

An image model exported by :func:`pixelforge.export.export_onnx` has a fixed tile size (window attention needs
static shapes); :class:`OnnxRuntimeModel` wraps the session as a module with the attributes
:func:`~pixelforge.infer.tiling.run_tiled` reads (``upscale``, ``spatial_multiple``, ``tile_overlap``), padding
smaller inputs up to the tile, so the runner drives it as any PyTorch model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BACKENDS", "OnnxRuntimeModel", "require_onnxruntime"]

BACKENDS = ("torch", "onnxruntime")


def require_onnxruntime():
    """The ``onnxruntime`` module, or ImportError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the onnxruntime backend needs the optional packages: pip install 'pixelforge[onnx]' "
                          "(onnx, onnxruntime)") from None
    return onnxruntime


class OnnxRuntimeModel(nn.Module):
    """An exported model run by ONNX Runtime on the CPU: (B, C, h, w) → (B, C', s·h, s·w), h, w ≤ the tile.

    Args:
        model: an ``.onnx`` file or its bytes, with the ``pixelforge`` metadata written by the exporter.
        threads: intra-op threads (default: torch's thread count, so both backends compare on equal terms).
    """

    def __init__(self, model: str | Path | bytes, threads: int | None = None):
        super().__init__()
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        source = str(model) if isinstance(model, (str, Path)) else model
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "pixelforge" not in meta:
            raise ValueError(f"{model if isinstance(model, (str, Path)) else 'the ONNX model'} was not written by "
                             f"`pixelforge export` (no pixelforge metadata)")
        self.meta = json.loads(meta["pixelforge"])
        self.input_size = tuple(self.meta["input_size"])  # (C, H, W) the graph was exported at
        self.in_chans = self.input_size[0]
        for attr in ("upscale", "spatial_multiple", "tile_overlap"):
            if attr in self.meta:
                setattr(self, attr, self.meta[attr])
        self._input = self.session.get_inputs()[0].name

    @property
    def tile(self) -> int:
        """The largest input side the exported graph takes."""
        return min(self.input_size[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) float32 with h ≤ H, w ≤ W of the export; smaller inputs are padded (replicate) and the
        output cropped. Returns the graph's output for x as a float32 CPU tensor."""
        _, h_max, w_max = self.input_size
        h, w = x.shape[-2:]
        if h > h_max or w > w_max:
            raise ValueError(f"input {w}x{h} is larger than the {w_max}x{h_max} the ONNX model was exported at; "
                             f"use --tile {min(h_max, w_max)} or less")
        padded = F.pad(x.float().cpu(), (0, w_max - w, 0, h_max - h), mode="replicate") if (h, w) != (h_max, w_max) \
            else x.float().cpu()
        chunks = padded.split(1) if self.meta.get("batch") == 1 else [padded]  # a graph of batch 1 runs image by image
        out = torch.cat([torch.from_numpy(self.session.run(None, {self._input: c.contiguous().numpy()})[0])
                         for c in chunks])
        if "upscale" not in self.meta:
            return out
        s = int(self.meta["upscale"])
        return out[..., : h * s, : w * s]

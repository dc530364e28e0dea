"""Linear layers and 1x1 convolutions for CPU inference through oneDNN, with fused activation / residual add.

On x86 CPUs PyTorch runs ``F.linear`` and single-threaded 1x1 convolutions through MKL's sgemm; oneDNN's
``mkldnn._linear_pointwise`` is as fast on Intel and about twice as fast on AMD (AMD EPYC Zen 5, one thread,
(4096 × 144) @ (144 × 432): 105 against 48 GMAC/s), and it fuses the bias, an activation (GELU, ReLU) or a residual
add into the product, saving a pass over the output. It may be used only where it computes the same thing: float32
CPU tensors, no autocast, no autograd (grad mode off or nothing requiring a gradient), not tracing (ONNX export);
everything else takes the plain PyTorch ops, so training is unchanged.

Where it may be used, it is used only where it is measured faster: the first call in a shape class (rows, in and
out features, each to the next power of two) races oneDNN against ``F.linear`` on a few rows of the call's size
(:func:`pixelforge.kernels.dispatch.measured_choice`: a few milliseconds, remembered per CPU, torch version and
thread count in ``$PIXELFORGE_HOME/kernels``); the fused GELU / residual-add variants follow the plain linear's
choice. ``PIXELFORGE_ONEDNN=1`` forces oneDNN and ``PIXELFORGE_ONEDNN=0`` the plain ops (A/B measurements);
``use_backend("torch")`` / ``PIXELFORGE_KERNELS=torch`` (the PyTorch reference) also takes the plain ops.

``--precision int8`` (:func:`quantize_linears_int8`) registers int8 weights here: the layers' own calls and these
functions then run ``torch.ops.quantized.linear_dynamic``, the kernel of torch.ao's ``quantize_dynamic``.
"""
from __future__ import annotations

import math
import os
import platform
import types
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dispatch import Race, get_backend, measured_choice

__all__ = ["linear", "linear_add", "conv1x1", "mlp_residual", "onednn_linear_available", "quantize_linears_int8",
           "int8_used"]


ENV_VAR = "PIXELFORGE_ONEDNN"
# multiply-adds of the problem each candidate of a race runs (about 0.2 ms on one Zen 5 core)
_RACE_MACS = 1 << 24


def _available() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except RuntimeError:
        return False


_ONEDNN = _available()


def _register_flops() -> None:
    """Let ``torch.utils.flop_counter`` count the oneDNN linear (2 · out elements · in features), which it does not
    know, so that a model's counted multiply-adds do not depend on the path taken."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = torch.ops.mkldnn._linear_pointwise
    if op not in flop_registry:
        register_flop_formula(op)(lambda x_shape, *args, out_shape, **kwargs: 2 * math.prod(out_shape) * x_shape[-1])


if _ONEDNN:
    _register_flops()
_ACTS = {None: lambda t: t, "gelu": F.gelu, "relu": F.relu}


# id of an nn.Linear's float weight → [weak reference to it, packed int8 weight and bias, used since registration];
# keyed by id (a tensor's == is elementwise, so tensors cannot key a WeakKeyDictionary), dropped with the weight
_INT8: dict[int, list] = {}


def quantize_linears_int8(model: nn.Module) -> list[nn.Linear]:
    """Dynamic int8 for every ``nn.Linear`` of ``model``, in place: the weight quantized per tensor with torch.ao's
    default dynamic-quantization observer (symmetric) and packed for ``torch.ops.quantized.linear_dynamic``, which
    quantizes the activations per call. Calling the layer, or :func:`linear` / :func:`linear_add` /
    :func:`mlp_residual` with its weight, then runs int8 (CPU inference). Returns the layers."""
    from torch.ao.quantization.observer import default_weight_observer

    layers = [m for m in model.modules() if type(m) is nn.Linear]
    for m in layers:
        observer = default_weight_observer()
        observer(m.weight.detach())
        scale, zero_point = observer.calculate_qparams()
        qweight = torch.quantize_per_tensor(m.weight.detach().float(), float(scale), int(zero_point), torch.qint8)
        bias = None if m.bias is None else m.bias.detach().float()
        key = id(m.weight)
        _INT8[key] = [weakref.ref(m.weight, lambda _, key=key: _INT8.pop(key, None)),
                      torch.ops.quantized.linear_prepack(qweight, bias), False]
        m.forward = types.MethodType(lambda self, x: linear(x, self.weight, self.bias), m)
    return layers


def int8_used(weight: torch.Tensor) -> bool:
    """Whether an int8-registered weight (:func:`quantize_linears_int8`) has run int8 since registration."""
    entry = _INT8.get(id(weight))
    return entry is not None and entry[0]() is weight and entry[2]


def _int8(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x · weightᵀ + bias in int8 when ``weight`` is registered (CPU, no autograd), else None."""
    entry = _INT8.get(id(weight)) if _INT8 else None
    if entry is None or entry[0]() is not weight or x.device.type != "cpu":
        return None
    if torch.is_grad_enabled() and x.requires_grad:
        return None
    entry[2] = True
    return torch.ops.quantized.linear_dynamic(x.float().contiguous(), entry[1], True)


def onednn_linear_available() -> bool:
    """Whether the oneDNN path is built into this PyTorch, on an x86 CPU, and not switched off
    (``PIXELFORGE_ONEDNN=0`` or the ``torch`` kernel backend)."""
    return _ONEDNN and os.environ.get(ENV_VAR) != "0" and get_backend() != "torch"


def _onednn_allowed(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether oneDNN computes what the plain ops would for this call (and is not switched off)."""
    if not onednn_linear_available() or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_tracing():  # the oneDNN op has no ONNX exporter
        return False
    if not torch.is_grad_enabled():
        return True
    return not (x.requires_grad or any(p is not None and p.requires_grad for p in params))


def _race(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Race:
    """oneDNN against ``F.linear`` for x (…, in) · weightᵀ (out, in): keyed by rows, in and out (next powers of
    two), timed on at most the call's rows, fewer when the product would exceed ``_RACE_MACS``."""
    n, k = weight.shape
    rows = x.numel() // max(1, k)

    def candidates():
        xs = x.new_ones(max(1, min(rows, _RACE_MACS // max(1, n * k))), k)
        return {"onednn": lambda: torch.ops.mkldnn._linear_pointwise(xs, weight, bias, "none", [], ""),
                "torch": lambda: F.linear(xs, weight, bias)}

    r, i, o = (1 << max(0, v - 1).bit_length() for v in (rows, k, n))
    return Race("linear", (f"rows<={r}", f"in<={i}", f"out<={o}", str(x.dtype)), candidates, ("onednn", "torch"))


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *others: torch.Tensor) -> bool:
    """Whether this call runs oneDNN: allowed (:func:`_onednn_allowed`), and forced or measured faster."""
    if not _onednn_allowed(x, weight, bias, *others):
        return False
    return os.environ.get(ENV_VAR) == "1" or measured_choice(_race(x, weight, bias)) == "onednn"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           act: str | None = None) -> torch.Tensor:
    """act(x · weightᵀ + bias): x (…, in), weight (out, in), bias (out,) → (…, out); act None, "gelu" (exact,
    erf) or "relu"."""
    if act not in _ACTS:
        raise ValueError(f"unknown activation '{act}'; choose from {list(_ACTS)}")
    if (out := _int8(x, weight)) is not None:
        return _ACTS[act](out)
    if _use_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act or "none", [], "none" if act else "")
    return _ACTS[act](F.linear(x, weight, bias))


def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, other: torch.Tensor) -> torch.Tensor:
    """x · weightᵀ + bias + other (a residual of the output's shape): x (…, in) → (…, out)."""
    if (out := _int8(x, weight)) is not None:
        return out + other
    if other.is_contiguous() and other.dtype == x.dtype and _use_onednn(x, weight, bias, other):
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, "add")
    return F.linear(x, weight, bias) + other


def conv1x1(x: torch.Tensor, conv: torch.nn.Conv2d, act: str | None = None) -> torch.Tensor:
    """act(conv(x)) of a 1x1, stride-1, ungrouped ``conv`` on (B, C, H, W) → (B, out, H, W) as a linear layer over
    the channels-last view: a channels-last input is read in place and the result is channels-last."""
    w = conv.weight
    if w.shape[-2:] != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or conv.padding not in ((0, 0), "valid"):
        raise ValueError("conv1x1 needs a 1x1, stride-1, unpadded, ungrouped convolution")
    return linear(x.permute(0, 2, 3, 1), w.flatten(1), conv.bias, act).permute(0, 3, 1, 2)


def mlp_residual(mlp: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + mlp(x) for a timm ``Mlp`` (fc1 → act → fc2), with the GELU fused into fc1 and the residual add into
    fc2 where :func:`linear` / :func:`linear_add` take the oneDNN path. Other MLPs (dropout in training, a hidden
    norm, another activation) run as they are. x (…, in), residual (…, out) → (…, out)."""
    act = mlp.act
    plain = (isinstance(act, torch.nn.GELU) and act.approximate == "none" and isinstance(mlp.norm, torch.nn.Identity)
             and not (mlp.training and (mlp.drop1.p or mlp.drop2.p)))
    if not (plain and _onednn_allowed(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, residual)):
        return residual + mlp(x)
    return linear_add(linear(x, mlp.fc1.weight, mlp.fc1.bias, "gelu"), mlp.fc2.weight, mlp.fc2.bias, residual)

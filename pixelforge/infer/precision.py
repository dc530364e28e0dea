"""Devices and numeric precision for inference: fp32, bf16/fp16 autocast, int8 dynamic quantization, and ``auto``.

``auto`` (the default of every command) runs bf16 autocast only where it is both faster and accurate enough for the
model at hand, fp32 elsewhere. The decision (:func:`choose_precision`) is made by capability, then measurement:

1. capability: bf16 is a candidate on CUDA devices that support it, and on CPUs with native bf16 arithmetic
   (x86 ``avx512_bf16`` / ``amx_bf16``, ARM ``bf16``); AVX2-only CPUs emulate bf16 and are never candidates;
2. speed: a one-off timing of the model's forward on a small probe (a crop of the bundled sample photo), fp32 and
   bf16 alternated, median of three, on one thread in CPU time (wall time on CUDA); bf16 must be at least
   :data:`MIN_SPEEDUP` times faster;
3. accuracy: the bf16 output of that probe against the fp32 one: PSNR ≥ 50 dB for images (≈ ≤ 0.05 dB PSNR change
   on a benchmark), top-1 agreement ≥ 99 % for logits.

The result is cached in ``$PIXELFORGE_HOME/precision.json`` per device signature, model, weights fingerprint and torch
version, so the measurement runs once per machine and model. Training (``train.mixed_precision:
auto``, :func:`choose_training_precision`) decides the same way on one training step of the first batch, with the
gradient's cosine similarity to fp32 as the accuracy check.
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import random
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PRECISIONS", "MODES", "QUALITY_BOUNDS", "MIN_SPEEDUP", "NonFiniteOutputError", "PrecisionChoice",
           "resolve_device", "autocast", "check_finite", "bf16_capability", "probe_input", "output_quality",
           "quality_ok", "choose_precision", "choose_training_precision", "quantize_int8", "prepare_model",
           "announce"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("auto", *PRECISIONS, "int8")  # the --precision choices
# output kind → the smallest quality of a reduced-precision output against fp32 (PSNR dB, top-1 agreement, cosine)
QUALITY_BOUNDS = {"image": 50.0, "logits": 0.99, "gradient": 0.99}
MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this factor (timing noise margin)
CACHE_ENTRIES = 256  # decisions kept in the cache file, the most recent
Timer = Callable[[str, Callable[[], object]], float]


class NonFiniteOutputError(RuntimeError):
    """A reduced-precision forward produced NaN or infinite values (fp16 overflow, typically)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``--precision`` resolved to and why; ``as_dict()`` goes into eval JSON and training metadata."""

    requested: str
    precision: str
    reason: str
    speedup: float | None = None  # measured time(fp32) / time(precision)
    quality: float | None = None  # PSNR dB (image) or top-1 agreement (logits) of the reduced output vs fp32
    warning: str | None = None  # the measured accuracy cost of an opt-in mode beyond QUALITY_BOUNDS

    def __str__(self) -> str:
        return f"precision {self.requested} → {self.precision} ({self.reason})"

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU raises ValueError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device '{device}'; use cpu or cuda")
    return device


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context running the forward in ``precision`` (``fp32``/``int8``: no autocast; ``bf16``/``fp16``:
    torch.autocast).

    Weights stay in float32; autocast casts the inputs of matmuls and convolutions, keeping reductions such as
    LayerNorm in float32. An ``int8`` model is quantized beforehand (:func:`quantize_int8`) and runs without autocast.
    """
    if precision not in PRECISIONS and precision != "int8":
        raise ValueError(f"unknown precision '{precision}'; choose from {', '.join(MODES[1:])}")
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=PRECISIONS[precision])


def check_finite(out: torch.Tensor, precision: str) -> torch.Tensor:
    """Raise :class:`NonFiniteOutputError` when ``out`` holds NaN/inf, naming the precision and the remedy."""
    if not torch.isfinite(out).all():
        hint = "; use --precision bf16 or fp32" if precision == "fp16" else ""
        raise NonFiniteOutputError(f"the model produced NaN or infinite values in {precision}{hint}")
    return out


def _cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 ``flags``, ARM ``Features``); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def bf16_capability(device: torch.device | str) -> tuple[bool, str]:
    """(whether bf16 is a candidate on ``device``, the reason): native bf16 CPU instructions or a bf16 GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name(device)} {'supports' if ok else 'lacks'} bf16"
    flags = _cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"}
    capability = torch.backends.cpu.get_cpu_capability()
    if flags:
        return True, f"CPU {capability} with {'/'.join(sorted(flags))}"
    return False, f"CPU {capability} has no native bf16 (emulated bf16 is slower than fp32)"


def _device_signature(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = sorted(_cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16"})
    return f"cpu {name} {torch.backends.cpu.get_cpu_capability()} {'/'.join(flags)}"


def _fingerprint(model: nn.Module) -> str:
    """Parameter count and L1 norm: tells different weights of one architecture apart (accuracy depends on them)."""
    params = list(model.parameters())
    total = sum(float(p.detach().double().abs().sum()) for p in params if p.is_floating_point())
    return f"{sum(p.numel() for p in params)}:{total:.6g}"


def probe_input(channels: int = 3, size: int | tuple[int, int] = 64, batch: int = 1) -> torch.Tensor:
    """A small natural-image probe (batch, channels, h, w) in [0, 1]: crops of the bundled sample photo.

    ``batch`` > 1 takes crops at different offsets (and flips), so a classifier sees different images.
    """
    from ..data.image_io import read_image
    from ..zoo.weights import PACKAGE_WEIGHTS

    h, w = (size, size) if isinstance(size, int) else size
    photo = read_image(PACKAGE_WEIGHTS.parent / "samples" / "tiger.png", channels=3).pixels
    if photo.shape[-2] < h or photo.shape[-1] < w:
        photo = F.interpolate(photo[None], size=(max(h, photo.shape[-2]), max(w, photo.shape[-1])),
                                                mode="bicubic", align_corners=False)[0].clamp(0, 1)
    H, W = photo.shape[-2:]
    crops = []
    for i in range(batch):
        y, x = (H - h) * ((i * 7) % 11) // 10, (W - w) * ((i * 3) % 11) // 10
        crop = photo[:, y:y + h, x:x + w]
        crops.append(crop.flip(-1) if i % 2 else crop)
    probe = torch.stack(crops)
    if channels == 1:
        from ..data.image_io import LUMA_BT601

        probe = torch.tensordot(probe.new_tensor(LUMA_BT601), probe, dims=([0], [1]))[:, None]
    return probe


def output_quality(ref: torch.Tensor, out: torch.Tensor, output: str = "image") -> float:
    """How close ``out`` is to the fp32 ``ref``: PSNR in dB of images in [0, 1] (inf when equal), the fraction of
    rows whose top-1 (argmax over the last dim) agrees for ``logits``, the cosine similarity for a ``gradient``."""
    ref, out = ref.detach().float().cpu(), out.detach().float().cpu()
    if output == "logits":
        return float((ref.argmax(-1) == out.argmax(-1)).float().mean())
    if output == "gradient":
        return float(F.cosine_similarity(ref.flatten(), out.flatten(), dim=0))
    if output != "image":
        raise ValueError(f"unknown output kind '{output}'; use image, logits or gradient")
    mse = float((ref.clamp(0, 1) - out.clamp(0, 1)).pow(2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def quality_ok(quality: float, output: str = "image") -> bool:
    """Whether ``quality`` (from :func:`output_quality`) meets :data:`QUALITY_BOUNDS`."""
    return quality >= QUALITY_BOUNDS[output]


def _quality_text(quality: float, output: str) -> str:
    if output == "gradient":
        return f"gradient cosine {quality:.4f} vs fp32"
    return f"{quality:.1f} dB vs fp32" if output == "image" else f"top-1 agreement {100 * quality:.1f}% vs fp32"


def _timer(device: torch.device) -> Timer:
    """CPU time of the calling thread on the CPU (the probe runs on one thread: steady on a shared machine, where
    wall time and the CPU time of several threads, spin-waits included, are not), wall time on CUDA."""
    clock = time.thread_time if device.type == "cpu" else time.perf_counter

    def timer(precision: str, fn: Callable[[], object]) -> float:
        start = clock()
        fn()
        return clock() - start
    return timer


def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _measured_choice(model: nn.Module, name: str, device: torch.device, run: Callable[[str], torch.Tensor],
                     output: str, timer: Timer | None, cache: str | Path | None) -> PrecisionChoice:
    """The ``auto`` decision shared by inference and training: capability, cache, then ``run(precision)`` timed
    (fp32 and bf16 alternated, median of three after a warm-up) and its results compared by :func:`output_quality`."""
    from ..zoo.weights import pixelforge_home

    capable, why = bf16_capability(device)
    if not capable:
        return PrecisionChoice("auto", "fp32", why)
    path = pixelforge_home() / "precision.json" if cache == "default" else (Path(cache) if cache else None)
    key = " | ".join([_device_signature(device), name, _fingerprint(model), f"torch {torch.__version__}"])
    entry = _load_cache(path).get(key) if path is not None else None
    if isinstance(entry, dict) and {"precision", "reason"} <= entry.keys():
        fields = {k: v for k, v in entry.items() if k in PrecisionChoice.__dataclass_fields__}
        return PrecisionChoice(**{**fields, "reason": entry["reason"] + ", cached"})
    timer = timer or _timer(device)

    def synced(precision: str) -> torch.Tensor:
        out = run(precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        ref, low = synced("fp32"), synced("bf16")  # also the warm-up
        times = {"fp32": [], "bf16": []}
        for _ in range(3):
            for precision in times:
                times[precision].append(timer(precision, lambda p=precision: synced(p)))
    finally:
        torch.set_num_threads(threads)
    speedup = statistics.median(times["fp32"]) / max(statistics.median(times["bf16"]), 1e-12)
    quality = output_quality(ref, low, output)
    measured = f"measured {speedup:.2f}x faster, {_quality_text(quality, output)}"
    if speedup < MIN_SPEEDUP:
        choice = PrecisionChoice("auto", "fp32", f"bf16 {measured}: not faster", speedup, quality)
    elif not quality_ok(quality, output):
        choice = PrecisionChoice("auto", "fp32", f"bf16 {measured}: below the bound {QUALITY_BOUNDS[output]:g}"
                                 f"{' dB' if output == 'image' else ''}", speedup, quality)
    else:
        choice = PrecisionChoice("auto", "bf16", measured, speedup, quality)
    if path is not None:
        from ..data.image_io import atomic_open

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            entries = {k: v for k, v in _load_cache(path).items() if k != key}
            entries = dict(list(entries.items())[-(CACHE_ENTRIES - 1):] + [(key, choice.as_dict())])
            with atomic_open(path, "w") as f:
                json.dump(entries, f, indent=1)
        except OSError:  # a read-only home only costs a re-measurement next time
            pass
    return choice


def choose_precision(model: nn.Module, probe: torch.Tensor, name: str, device: torch.device | str,
                     output: str = "image", timer: Timer | None = None, cache: str | Path | None = "default",
                     forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> PrecisionChoice:
    """Resolve ``auto`` for inference: bf16 where it is capable, measured faster and accurate enough on ``probe``;
    else fp32.

    Args:
        model: the model in eval mode on ``device``; probe: its input (B, C, h, w), small (e.g. 64²).
        name: the model's name, part of the cache key (with the device, weights fingerprint and torch version).
        output: ``image`` (PSNR bound) or ``logits`` (top-1 agreement bound), see :data:`QUALITY_BOUNDS`.
        timer: ``timer(precision, fn) -> seconds`` runs ``fn`` (one forward) and returns its cost; injectable so
            tests check the choice without timing. Default: thread CPU time at one thread (CPU), wall time
            (CUDA).
        cache: a JSON file of past decisions; "default": ``$PIXELFORGE_HOME/precision.json``; None: no cache.
        forward: ``forward(model, x)``, default ``model(x)``.
    """
    device = torch.device(device)
    forward = forward or (lambda m, x: m(x))
    x = probe.to(device)

    def run(precision: str) -> torch.Tensor:
        with torch.inference_mode(), autocast(precision, device):
            return forward(model, x)

    return _measured_choice(model, name, device, run, output, timer, cache)


def choose_training_precision(model: nn.Module, batch, step: Callable[[nn.Module, object], torch.Tensor],
                              name: str, device: torch.device | str, timer: Timer | None = None,
                              cache: str | Path | None = "default") -> PrecisionChoice:
    """Resolve ``train.mixed_precision: auto``: bf16 autocast where it is capable, a training step (forward and
    backward of ``step(model, batch) -> loss``) is measured faster, and its gradient keeps a cosine similarity
    ≥ 0.99 with the fp32 one; else fp32.

    The probe leaves no trace: RNG states (torch, Python, NumPy), buffers (running statistics, EMA codebooks) and
    gradients are restored. ``timer`` and ``cache`` as in :func:`choose_precision`.
    """
    device = torch.device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
               if not isinstance(v, nn.Parameter)}
    grads = [p.grad for p in params]
    py_state, np_state = random.getstate(), np.random.get_state()

    def run(precision: str) -> torch.Tensor:
        for p in params:
            p.grad = None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with autocast(precision, device):
                loss = step(model, batch)
            loss.float().backward()
        return torch.cat([p.grad.detach().float().flatten() for p in params if p.grad is not None])

    try:
        return _measured_choice(model, f"{name} training", device, run, "gradient", timer, cache)
    finally:
        model.load_state_dict(buffers, strict=False)
        for p, g in zip(params, grads):
            p.grad = g
        random.setstate(py_state)
        np.random.set_state(np_state)


def quantize_int8(model: nn.Module, run: Callable[[nn.Module], object] | None = None) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run dynamically quantized int8 (CPU only; weights int8 per
    tensor, activations quantized per call: the kernel and observer of torch.ao's ``quantize_dynamic``), whether the
    model calls the layer or passes its weight to :mod:`pixelforge.layers.linear` (the fused inference paths).
    Convolutions stay fp32.

    ``int8_layers`` on the copy counts the layers that ran int8 in ``run(copy)`` (a probe forward), or all of them
    without ``run``; a weight read in other ways (``F.linear(x, self.qkv.weight)``) stays float there.
    """
    import copy

    from ..layers.linear import int8_used, quantize_linears_int8

    quantized = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice of quantized tensors
        layers = quantize_linears_int8(quantized)
    if run is not None:
        with torch.inference_mode():
            run(quantized)
        layers = [m for m in layers if int8_used(m.weight)]
    quantized.int8_layers = len(layers)
    return quantized


_ANNOUNCED: set[tuple] = set()


def announce(choice: PrecisionChoice, prog: str = "pixelforge") -> None:
    """Print a measured choice (``precision auto → bf16 (measured 1.9x faster, 55.0 dB vs fp32)``) or its warning
    on stderr, once per process; explicitly requested precisions need no word."""
    if choice.warning:
        message = f"{prog}: warning: {choice.warning}"
    elif choice.reason != "requested":
        message = f"{prog}: {choice}"
    else:
        return
    key = (prog, choice.requested, choice.precision, choice.warning)  # a cached re-run is the same news
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(message, file=sys.stderr)


def prepare_model(model: nn.Module, requested: str, device: torch.device | str, name: str,
                  probe: torch.Tensor | None = None, output: str = "image", timer: Timer | None = None,
                  forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[nn.Module, PrecisionChoice]:
    """Apply ``--precision``: returns (the model to run, the choice); :func:`announce` prints the choice.

    ``auto`` → :func:`choose_precision`; ``int8`` → :func:`quantize_int8`, with the quality of its output on
    ``probe`` against fp32 measured and a warning naming the loss when it exceeds :data:`QUALITY_BOUNDS`; explicit
    fp32/bf16/fp16 are taken as they are. ``probe`` defaults to :func:`probe_input` for the model's channels.
    """
    device = torch.device(device)
    if requested not in MODES:
        raise ValueError(f"unknown precision '{requested}'; choose from {', '.join(MODES)}")
    if requested in PRECISIONS:
        return model, PrecisionChoice(requested, requested, "requested")
    if probe is None:
        probe = probe_input(int(getattr(model, "in_chans", 3)))
    if requested == "auto":
        return model, choose_precision(model, probe, name, device, output, timer, forward=forward)
    if device.type != "cpu":
        raise ValueError("--precision int8 (dynamic quantization) runs on the CPU only; use --device cpu")
    forward = forward or (lambda m, x: m(x))
    probe = probe.to(device)
    with torch.inference_mode():
        ref = forward(model, probe)
        quantized = quantize_int8(model, lambda m: forward(m, probe))
        quality = output_quality(ref, forward(quantized, probe), output)
    text = _quality_text(quality, output)
    if not quantized.int8_layers:
        return quantized, PrecisionChoice("int8", "int8", "no nn.Linear layer to quantize: runs as fp32",
                                          quality=quality, warning=f"precision int8 changes nothing on {name} (no "
                                                                   f"nn.Linear layer; it runs as fp32)")
    warning = None
    if not quality_ok(quality, output):
        warning = (f"precision int8 costs accuracy on {name}: {text} on a probe (bound {QUALITY_BOUNDS[output]:g}"
                   f"{' dB' if output == 'image' else ''}); use fp32 or auto for full quality")
    return quantized, PrecisionChoice("int8", "int8", f"{quantized.int8_layers} Linear layers int8, {text} on a probe",
                                      quality=quality, warning=warning)

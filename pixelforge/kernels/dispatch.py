"""Backend selection for the shared kernels: ``auto``, ``torch``, ``triton`` or ``native``.

The backend is chosen, in order of precedence, by the innermost :func:`use_backend` context, then by the
``PIXELFORGE_KERNELS`` environment variable (read at every call), then ``auto``.

- ``triton``: the Triton kernels (CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``).
- ``native``: the compiled CPU kernels of :mod:`pixelforge.kernels.native` (the selective-scan forward and backward), built
  on first use with the system C compiler; an op without a native kernel (attention, whose PyTorch path is
  already ATen's fused SDPA) takes its PyTorch path.
- ``torch``: the PyTorch path everywhere (the reference).
- ``auto``: Triton for CUDA tensors when Triton imports and works; for CPU tensors of ops that have a native
  kernel (when it builds), the faster of native and the PyTorch path, by measurement; the PyTorch path otherwise.

``auto`` on CPU never loses to the PyTorch path: the first call of an op in a shape class (:class:`Race`) times
both backends a few times (:func:`measure_candidates`, on the call's own inputs, cut to a few milliseconds of work)
and keeps the faster, in memory and in ``<library>.auto.json`` beside the native library in
``$PIXELFORGE_HOME/kernels``. The decision is keyed by the library's name (a hash of the kernel source, compiler,
flags and CPU), torch's version, the number of torch threads, the op and the shape class, so a changed CPU, source
or torch measures again; other processes read the file instead of measuring (delete it to measure again, e.g.
after a measurement on a heavily loaded machine). :func:`measured_choice` races other candidates the same way
(e.g. :mod:`pixelforge.layers.linear`: oneDNN against ``F.linear``), keyed by the CPU instead of the library, in
``cpu_<hash of the CPU model and flags>.auto.json``.

Triton is imported lazily, on the first call that wants it, and the native library is built on the first op call
that wants it, so importing pixelforge touches neither.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .native import cache_dir, cpu_signature, library_path, native_available

__all__ = ["BACKENDS", "use_backend", "get_backend", "resolve_backend", "triton_available", "native_available",
           "Race", "measure_candidates", "measured_choice"]

_log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton", "native")
ENV_VAR = "PIXELFORGE_KERNELS"

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("pixelforge_kernels_backend", default=None)


def _check(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r} from {source}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the shared kernels inside the ``with`` block with backend ``name`` (auto, torch, triton, native)."""
    token = _override.set(_check(name, "use_backend()"))
    try:
        yield
    finally:
        _override.reset(token)


def get_backend() -> str:
    """The requested backend: the innermost :func:`use_backend`, else ``$PIXELFORGE_KERNELS``, else ``auto``."""
    name = _override.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR)
    return _check(env, f"${ENV_VAR}") if env else "auto"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # any failure (missing package, broken install, driver trouble) means "not available"
        return False
    return True


def triton_available(device: torch.device | None = None) -> bool:
    """Whether the Triton kernels can run on ``device`` (a CUDA device, or any device under ``TRITON_INTERPRET=1``)."""
    if not _triton_importable():
        return False
    if _interpreting():
        return True
    return device is not None and device.type == "cuda"


@dataclasses.dataclass(frozen=True)
class Race:
    """What ``auto`` needs to choose between candidate implementations (native and the PyTorch path) for one call.

    op: the op's name; shape_class: what the choice is keyed by besides the op (bucketed sizes, dtype: anything
    JSON can hold); candidates: builds {name: fn} for each of ``names``, each fn running the op once (on a problem
    of about the call's proportions, small enough to time in milliseconds); called only when a measurement is due.
    names: the candidates; with ``"native"`` among them the choice is keyed by the native library, else by the CPU.
    """

    op: str
    shape_class: tuple
    candidates: Callable[[], dict[str, Callable[[], object]]]
    names: tuple[str, ...] = ("native", "torch")


def measure_candidates(candidates: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
    """Seconds per call of each candidate: a warm-up call each, then ``rounds`` rounds calling them in turn; the
    fastest round counts. Thread CPU time when torch runs one thread (steady on a loaded machine), else wall-clock.
    The timer of ``auto``: tests replace it to decide without timing anything."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    for fn in candidates.values():
        fn()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], clock() - t0)
    return best


# in-process decisions: ($PIXELFORGE_HOME, library path or CPU signature, op, shape class, threads) -> choice
_choices: dict[tuple, str] = {}


def _read_choices(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or unreadable: measure again
        return {}
    return data if isinstance(data, dict) else {}


@functools.lru_cache(maxsize=None)
def _cpu_choices_name(signature: str) -> str:
    return "cpu_" + hashlib.sha256(f"{signature}\0{platform.machine()}".encode()).hexdigest()[:16] + ".auto.json"


def measured_choice(race: Race) -> str:
    """The name in ``race.names`` whose candidate ran ``race`` faster (measured once per key, then remembered in
    memory and in ``$PIXELFORGE_HOME/kernels``: beside the native library when ``"native"`` is a candidate, else in
    a file named by a hash of the CPU)."""
    native = "native" in race.names
    machine = library_path() if native else cpu_signature()
    threads = torch.get_num_threads()
    # looked up first, without building paths or JSON: a small layer's call takes microseconds
    memo = (os.environ.get("PIXELFORGE_HOME"), machine, race.op, race.shape_class, threads)
    choice = _choices.get(memo)
    if choice is not None:
        return choice
    path = cache_dir() / (machine.stem + ".auto.json" if native else _cpu_choices_name(machine))
    key = json.dumps([race.op, *race.shape_class, f"threads={threads}", f"torch={torch.__version__}"])
    entry = _read_choices(path).get(key)
    if isinstance(entry, dict) and entry.get("choice") in race.names:
        choice = entry["choice"]
    else:
        times = measure_candidates(race.candidates())
        choice = min(times, key=times.get)
        _log.info("pixelforge %s %s: %s (%s)", race.op, race.shape_class, choice,
                  ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in times.items()))
        from ..data.image_io import atomic_open  # lazily: only a measurement writes

        data = _read_choices(path)  # re-read: another process may have added entries meanwhile
        data[key] = {"choice": choice, "ms": {k: round(v * 1e3, 4) for k, v in times.items()}}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
        except OSError as exc:  # a read-only cache: the choice still holds for this process
            _log.info("pixelforge: could not record the backend choice in %s (%s)", path, exc)
    _choices[memo] = choice
    return choice


def resolve_backend(*tensors: torch.Tensor, has_native: bool = False, race: Race | None = None) -> str:
    """``"torch"``, ``"triton"`` or ``"native"`` for an op on ``tensors``, following :func:`get_backend`.

    ``has_native``: whether the op has a native CPU kernel for this call. ``triton`` or ``native`` requested
    explicitly for tensors they cannot run on raises ``RuntimeError``; ``auto`` picks Triton only for CUDA
    tensors (never for CPU tensors, even under ``TRITON_INTERPRET=1``) and native only for CPU tensors, where
    ``race`` (see :class:`Race`) makes it the faster of native and the PyTorch path by measurement.
    """
    name = get_backend()
    device = tensors[0].device
    if name == "torch":
        return "torch"
    if name == "triton":
        if not triton_available(device):
            why = "Triton is not importable" if not _triton_importable() else f"tensors are on {device}, not CUDA"
            raise RuntimeError(f"kernel backend 'triton' requested but {why} "
                               "(set PIXELFORGE_KERNELS=torch or auto, or TRITON_INTERPRET=1 to emulate on CPU)")
        return "triton"
    if name == "native":
        if device.type != "cpu":
            raise RuntimeError(f"kernel backend 'native' requested but tensors are on {device}; native kernels run "
                               "on CPU tensors (set PIXELFORGE_KERNELS=auto)")
        if not has_native:
            return "torch"
        if not native_available():
            raise RuntimeError("kernel backend 'native' requested but the native kernels could not be built (no "
                               "working C compiler; see the pixelforge.kernels.native log) — set "
                               "PIXELFORGE_KERNELS=torch or auto")
        return "native"
    if device.type == "cuda" and triton_available(device):
        return "triton"
    if device.type == "cpu" and has_native and native_available():
        return "native" if race is None else measured_choice(race)
    return "torch"

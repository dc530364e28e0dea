"""Timing and machine description shared by the benchmark scripts in tools/."""
from __future__ import annotations

import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # process CPU time counts every thread's seconds


def alternating_medians(fns: Sequence[Callable[[], object]], repeats: int,
                        clocks: Mapping[str, Callable[[], float]] = CLOCKS, warmup: int = 1) -> list[dict[str, float]]:
    """Median seconds of each of ``fns`` by each clock, over ``repeats`` rounds of calls interleaved
    (fns[0], fns[1], ..., fns[0], ...) so that load changes on a shared machine hit every function alike.

    ``warmup`` untimed rounds come first. Returns one ``{clock name: median seconds}`` per function.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[dict[str, list[float]]] = [{name: [] for name in clocks} for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = {name: clock() for name, clock in clocks.items()}
            fn()
            for name, clock in clocks.items():
                record[name].append(clock() - start[name])
    return [{name: statistics.median(values) for name, values in record.items()} for record in times]


def median_time(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds (by ``clock``) of ``fn()`` over ``repeats`` runs after one warm-up call."""
    return alternating_medians([fn], repeats, {"t": clock})[0]["t"]


def matmul_probe(size: int = 2048) -> tuple[Callable[[], object], int, str]:
    """The machine's fastest fp32 (size, size) @ (size, size) product, to time as the yardstick rate: ``torch.mm``
    (MKL's sgemm on x86) or oneDNN's linear where PyTorch has it (about twice MKL's rate on AMD CPUs), whichever
    runs faster here (two quick rounds). Returns (the product to time, its multiply-adds = size³, its name)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    candidates = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available():
        bt = b.t().contiguous()
        candidates["oneDNN linear"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    with torch.inference_mode():
        times = alternating_medians(list(candidates.values()), 2)
    best = min(range(len(times)), key=lambda i: times[i]["cpu"])
    name = list(candidates)[best]
    return candidates[name], size ** 3, name


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` model name, else ``lscpu``, else ``platform.processor()``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()

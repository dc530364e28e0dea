"""Speed and quality of the precision modes against fp32 eager: bf16 autocast (what ``auto`` may pick), int8 dynamic
quantization of the Linear layers, and the ONNX Runtime backend.

    python tools/bench_precision.py [--threads 1] [--repeats 5] [--data ../shared/data]

Models: the bundled ``cfsr_x4`` and the released CFSR x4 weights (``../shared/parity/cfsr_official_x4``) on Set5 x4
(Y-PSNR, crop 4), and the bundled ``cct_2_3x2_32`` on the 10,000 CIFAR-10 test images (top-1). Speed: a 64² input
for SR (the ONNX graph is exported at tile 64), a batch of 32 for CCT; CPU time on one thread, wall time on more, the
modes alternated in one process, median of ``--repeats``. Quality: fp32 / bf16 / int8 on whole Set5 images; the ONNX
Runtime row is compared with fp32 eager run through the same 64-pixel tiling, so its delta isolates the backend.
Bounds: ≤ 0.05 dB, ≤ 0.5 points.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import alternating_medians, cpu_model  # noqa: E402

import pixelforge  # noqa: E402
from pixelforge.data.classification import read_archive_split  # noqa: E402
from pixelforge.infer.evaluate import evaluate_sr, find_pairs  # noqa: E402
from pixelforge.infer.precision import autocast, choose_precision, prepare_model, probe_input  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TILE = 64


def _modes(model: torch.nn.Module, name: str, probe: torch.Tensor, output: str) -> dict:
    """mode → (model to run, precision for autocast); int8 and onnxruntime where they can be built."""
    from pixelforge.export import export_onnx
    from pixelforge.infer.onnx_backend import OnnxRuntimeModel

    modes = {"fp32": (model, "fp32"), "bf16": (model, "bf16")}
    quantized, choice = prepare_model(model, "int8", "cpu", name, probe, output)
    modes["int8"] = (quantized, "int8")
    print(f"  int8: {choice.reason}")
    try:
        modes["onnxruntime"] = (OnnxRuntimeModel(export_onnx(model, None, name, TILE)), "fp32")
    except ImportError as exc:
        print(f"  onnxruntime: skipped ({exc})")
    return modes


def _speed(modes: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per call of each mode: CPU time on one thread, wall time on several (the CPU time of several
    threads counts their spin-waits, which dominate on a loaded machine)."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    def call(m, precision):
        def run():
            with torch.inference_mode(), autocast(precision, "cpu"):
                m(x)
        return run
    times = alternating_medians([call(*mp) for mp in modes.values()], repeats, {"t": clock})
    return {mode: t["t"] for mode, t in zip(modes, times)}


def bench_sr(name: str, model: torch.nn.Module, pairs, repeats: int) -> list[tuple]:
    print(f"{name}:")
    modes = _modes(model, name.split()[0], probe_input(3, TILE), "image")
    speed = _speed(modes, probe_input(3, TILE), repeats)
    psnr = {}
    for mode, (m, precision) in modes.items():
        tile = TILE if mode == "onnxruntime" else None
        psnr[mode] = evaluate_sr(m, pairs, 4, tile=tile, precision=precision)["mean"]["psnr_y"]
    psnr["fp32 tiled"] = evaluate_sr(model, pairs, 4, tile=TILE)["mean"]["psnr_y"]
    rows = []
    for mode in modes:
        ref = psnr["fp32 tiled" if mode == "onnxruntime" else "fp32"]
        delta = psnr[mode] - ref
        rows.append((name, mode, 1000 * speed[mode], speed["fp32"] / speed[mode], f"{psnr[mode]:.4f} dB",
                     f"{delta:+.4f} dB", "ok" if delta >= -0.05 else "OVER"))
    return rows


def bench_cls(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, repeats: int) -> list[tuple]:
    print("cct_2_3x2_32 (bundled):")
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (images - mean) / std
    modes = _modes(model, "cct_2_3x2_32", x[:64], "logits")
    speed = _speed(modes, x[:32], repeats)
    top1 = {}
    for mode, (m, precision) in modes.items():
        with torch.inference_mode(), autocast(precision, "cpu"):
            pred = torch.cat([m(chunk).argmax(-1) for chunk in x.split(500)])
        top1[mode] = 100 * (pred == labels).float().mean().item()
    return [("cct_2_3x2_32 (bundled), CIFAR-10", mode, 1000 * speed[mode], speed["fp32"] / speed[mode],
             f"{top1[mode]:.2f}%", f"{top1[mode] - top1['fp32']:+.2f} pt",
             "ok" if top1[mode] - top1["fp32"] >= -0.5 else "OVER") for mode in modes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--parity", type=Path, default=REPO.parent / "shared" / "parity")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    clock = "CPU time" if args.threads == 1 else "wall time"
    print(f"CPU: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{args.threads} thread(s); {clock}, median of {args.repeats}, modes alternated")
    pairs = find_pairs(args.data / "sr-bench" / "Set5", 4)
    rows = []
    bundled = pixelforge.create_model("cfsr_x4", pretrained=True).eval()
    released = pixelforge.create_model("cfsr_x4", weights=args.parity / "cfsr_official_x4" / "checkpoint.pth").eval()
    cct = pixelforge.create_model("cct_2_3x2_32", pretrained=True).eval()
    for name, model, probe, output in (("cfsr_x4", bundled, probe_input(3, TILE), "image"),
                                       ("cfsr_x4 released", released, probe_input(3, TILE), "image")):
        print(f"auto on {name}: {choose_precision(model, probe, name, 'cpu', output, cache=None)}")
    rows += bench_sr("cfsr_x4 (bundled), Set5 x4", bundled, pairs, args.repeats)
    rows += bench_sr("cfsr_x4 (released), Set5 x4", released, pairs, args.repeats)
    images, folders = read_archive_split(args.data / "cifar10-jpeg.tar.gz", "test")
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with safe_open(str(pixelforge.zoo.pretrained_file("cct_2_3x2_32")), "pt") as f:
        names = json.loads(f.metadata()["class_names"])
    labels = torch.tensor([names.index(f) for f in folders])
    mean, std = (torch.tensor(cct.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    auto = choose_precision(cct, (images[:16] - mean) / std, "cct_2_3x2_32", "cpu", "logits", cache=None)
    print(f"auto on cct_2_3x2_32: {auto}")
    rows += bench_cls(cct, images, labels, args.repeats)
    print()
    print("| model, data | mode | ms / call | speed-up vs fp32 eager | quality | change | bound |")
    print("|---|---|---|---|---|---|---|")
    for model, mode, ms, ratio, quality, delta, bound in rows:
        print(f"| {model} | {mode} | {ms:.1f} | {ratio:.2f}x | {quality} | {delta} | {bound} |")


if __name__ == "__main__":
    main()

"""CPU benchmark of the SR models CFSR x4, HAT-S x4, CRAFT x4 (and MambaIR x4 / light x4): speed, memory, bf16.

What it measures (each section can be selected with ``--sections``):
- ``speed``: forward time (median of ``--repeats``) and peak activation memory at each ``--sizes`` input, for
  our model and for a *baseline* — the same model and weights with the shared attention op swapped for plain
  PyTorch (explicit q·kᵀ, + bias + mask, softmax, ·v; the window partition is the models' own). The swap is a
  patch of the ``attention`` name in ``pixelforge.vision.hat`` / ``pixelforge.vision.craft`` for the duration of
  the measurement, inside this process only. CFSR has no attention; its baseline is its unmerged training form.
  MambaIR has no attention either; its baseline runs the shared selective scan on its PyTorch path
  (``use_backend("torch")``) instead of the native CPU kernel.
  fp32 and bf16 (``torch.autocast``: matmuls/convs in bf16, LayerNorm/softmax statistics and the fp32 residual
  stream kept in fp32).
- ``tiled``: a 1920x1080 input through :func:`pixelforge.infer.tiling.run_tiled` (``--tile``, ``--overlap``).
  Unless ``--full`` is given, only the first tile is computed and timed and the time is extrapolated to all tiles
  (the other tiles reuse its output, so the tiler's own allocations are still measured exactly).
- ``uhd``: peak memory of a 3840x2160 x4 HAT-S tiled upscale, the same way (target: < 4 GiB).
- ``psnr``: Y-PSNR (crop = scale) on Set5 x4 in fp32 and bf16. CFSR uses the released weights of
  ``parity/cfsr_official_x4`` when present; HAT-S and CRAFT have no weights here, so they use random but fixed
  weights (seed 0, every parameter perturbed so that every branch matters, conv_last scaled to an image-like output
  range): their PSNR against the ground truth is meaningless, the bf16-vs-fp32 PSNR of the outputs is the figure.
  ``--weights hat_s_x4=HAT-S_SRx4.pth`` (official or pixelforge files) measures a model with real weights instead.

Peak memory = the maximum of live tensor bytes allocated during the call (from the profiler's allocation events),
i.e. activations and workspaces on top of the weights (the parameter bytes are printed separately).

Example: ``python tools/bench_sr.py --sections speed --sizes 64 128 --threads 2``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

import pixelforge  # noqa: E402
from bench_common import median_time  # noqa: E402
from pixelforge.infer.tiling import run_tiled, tile_starts  # noqa: E402
from pixelforge.kernels import use_backend  # noqa: E402
from pixelforge.vision import craft as craft_mod  # noqa: E402
from pixelforge.vision import hat as hat_mod  # noqa: E402

MODELS = ("cfsr_x4", "hat_s_x4", "craft_x4", "mambair_x4", "mambair_light_x4")
DEFAULT_MODELS = MODELS[:3]
GiB, MiB = 2 ** 30, 2 ** 20


def explicit_attention(q, k, v, *, bias=None, mask=None, scale=None):
    """The plain PyTorch baseline: softmax(q·kᵀ·scale + bias + mask)·v, materialising the scores."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, W, H, Nq, Nk)
    if bias is not None:
        attn = attn + bias.to(attn.dtype)
    if mask is not None:
        attn = attn + mask.to(attn.dtype).unsqueeze(1)
    return attn.softmax(dim=-1) @ v


def baseline_ctx(name: str):
    """The baseline's swap for model ``name``: the PyTorch scan path for MambaIR, explicit attention otherwise."""
    return use_backend("torch") if name.startswith("mambair") else baseline_attention()


@contextlib.contextmanager
def baseline_attention():
    """Swap the shared op for :func:`explicit_attention` in the HAT and CRAFT modules (this process only)."""
    saved = hat_mod.attention, craft_mod.attention
    hat_mod.attention = craft_mod.attention = explicit_attention
    try:
        yield
    finally:
        hat_mod.attention, craft_mod.attention = saved


def precision_ctx(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def build(name: str, baseline: bool = False, realistic: bool = True) -> torch.nn.Module:
    """The registered model with fixed random weights (see the module doc); CFSR's baseline is its unmerged form."""
    torch.manual_seed(0)
    kwargs = {"deploy": False} if (baseline and name.startswith("cfsr")) else {}
    model = pixelforge.create_model(name, **kwargs).eval()
    if name.startswith("cfsr"):
        released = SHARED / "parity" / "cfsr_official_x4" / "checkpoint.pth"
        if not baseline and released.is_file():
            model = pixelforge.load_official(released, "cfsr")
        return model
    if realistic:
        _perturb(model)
    return model


@torch.no_grad()
def _perturb(model: torch.nn.Module) -> None:
    """Every parameter moved by a seeded N(0, 1/fan_in) (tables 0.5·N, norms 1 + 0.2·N) so each branch matters;
    then conv_last scaled so that the output has an image-like spread (std 0.2 on a fixed noise image)."""
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "relative_position_bias_table" in name:
            p.add_(0.5 * noise)
        elif p.ndim == 1 and ("norm" in name):
            p.add_(0.2 * noise if name.endswith("weight") else 0.1 * noise)
        elif p.ndim == 1:
            p.add_(0.1 * noise)
        elif p.ndim > 1:
            p.add_(noise / math.sqrt(p[0].numel()))
    x = torch.rand(1, 3, 32, 32, generator=gen)
    head = model.head
    last = head.conv_last if hasattr(head, "conv_last") else head.upsample[0]
    spread = (model(x) - model.mean).std()
    last.weight.mul_(0.2 / spread)
    last.bias.mul_(0.2 / spread)


CLOCK = time.perf_counter



def peak_bytes(fn) -> int:
    """Maximum of live tensor bytes allocated inside ``fn()`` (profiler allocation events, in time order)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------- speed
def bench_speed(models, sizes, repeats, memory: bool) -> None:
    print("\n## Forward time (median) and peak activation memory, CPU, batch 1")
    print(f"{'model':16} {'input':>8} {'variant':>14} {'fp32 ms':>9} {'bf16 ms':>9} {'fp32 MiB':>9} "
          f"{'bf16 MiB':>9}")
    for name in models:
        ours, base = build(name), build(name, baseline=True)
        for size in sizes:
            x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
            res = {}
            for variant, model in (("pixelforge", ours), ("baseline", base)):
                swap = (lambda: baseline_ctx(name)) if variant == "baseline" else contextlib.nullcontext
                for prec in ("fp32", "bf16"):
                    def run():
                        with torch.inference_mode(), precision_ctx(prec), swap():
                            model(x)
                    res[variant, prec, "t"] = median_time(run, repeats, CLOCK)
                    res[variant, prec, "m"] = peak_bytes(run) if memory else float("nan")
                print(f"{name:16} {size:>4}x{size:<3} {variant:>14} {res[variant, 'fp32', 't'] * 1e3:9.1f} "
                      f"{res[variant, 'bf16', 't'] * 1e3:9.1f} {res[variant, 'fp32', 'm'] / MiB:9.1f} "
                      f"{res[variant, 'bf16', 'm'] / MiB:9.1f}", flush=True)
            b32, o32, o16 = (res["baseline", "fp32", "t"], res["pixelforge", "fp32", "t"],
                             res["pixelforge", "bf16", "t"])
            print(f"{'':16} {'':8} {'ratios':>14}  fp32 speed-up vs baseline {b32 / o32:.2f}x, "
                  f"bf16 vs fp32 baseline {b32 / o16:.2f}x, bf16 vs fp32 {o32 / o16:.2f}x", flush=True)
        print(f"{'':10} weights {param_bytes(ours) / MiB:.1f} MiB (fp32)")


# ---------------------------------------------------------------------------------------------------------- tiled
class FirstTileOnly(torch.nn.Module):
    """Runs the wrapped model on the first call and replays that output afterwards (same tile size), so the tiler's
    allocations are exercised on a large image at the cost of one tile."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cached, self.calls, self.first_time = model, None, 0, 0.0
        self.upscale, self.spatial_multiple = model.upscale, model.spatial_multiple

    def forward(self, x):
        self.calls += 1
        if self.cached is None or self.cached.shape[-2:] != (x.shape[-2] * self.upscale, x.shape[-1] * self.upscale):
            start = CLOCK()
            self.cached = self.model(x)
            self.first_time = CLOCK() - start
        return self.cached.clone()


def bench_tiled(models, height, width, tile, overlap, precisions, full: bool, title: str) -> None:
    print(f"\n## {title}: {width}x{height} input, tile {tile}, overlap {overlap or 'per model'}")
    for name in models:
        model = build(name)
        ov = model.tile_overlap if overlap is None else overlap
        n_tiles = (len(tile_starts(height, min(tile, height), ov)) *
                   len(tile_starts(width, min(tile, width), ov)))
        image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        for prec in precisions:
            if full:
                start = CLOCK()
                peak = peak_bytes(lambda: run_tiled(model, image, tile=tile, overlap=ov, precision=prec))
                total, how = CLOCK() - start, "measured"
            else:
                proxy = FirstTileOnly(model)
                peak = peak_bytes(lambda: run_tiled(proxy, image, tile=tile, overlap=ov, precision=prec))
                total, how = proxy.first_time * n_tiles, f"1 tile {proxy.first_time:.2f} s x {n_tiles}"
            print(f"{name:10} {prec}: {n_tiles} tiles (overlap {ov}), time {total:8.1f} s ({how}), "
                  f"peak {peak / GiB:.2f} GiB + weights {param_bytes(model) / GiB:.3f} GiB + input {image.nbytes / GiB:.3f} GiB", flush=True)


# ----------------------------------------------------------------------------------------------------------- psnr
def bench_psnr(models, weights: dict[str, str]) -> None:
    from pixelforge.data.image_io import read_image
    from pixelforge.metrics.sr import psnr_ssim_tensor

    folder = SHARED / "data" / "sr-bench" / "Set5" / "x4"
    lrs = sorted(folder.glob("*_LR.png"))
    if not lrs:
        print(f"\n## PSNR: {folder} not found, skipped")
        return
    print("\n## Set5 x4 Y-PSNR (crop 4): fp32 vs bf16 autocast")
    for name in models:
        if name in weights:
            model, source = pixelforge.create_model(name, weights=weights[name]).eval(), weights[name]
        else:
            model = build(name)
            source = "released weights" if name.startswith("cfsr") else "random fixed weights (no trained weights)"
        gt_psnr = {"fp32": [], "bf16": []}
        agree = []
        for lr_path in lrs:
            lr = read_image(lr_path, channels=3).pixels[None]
            hr = read_image(str(lr_path).replace("_LR", "_HR"), channels=3).pixels
            outs = {}
            for prec in ("fp32", "bf16"):
                with torch.inference_mode(), precision_ctx(prec):
                    outs[prec] = model(lr)[0].float()
                gt_psnr[prec].append(psnr_ssim_tensor(outs[prec], hr, crop_border=4, ssim=False)["psnr"])
            agree.append(psnr_ssim_tensor(outs["bf16"], outs["fp32"], crop_border=4, ssim=False)["psnr"])
        p32, p16 = statistics.mean(gt_psnr["fp32"]), statistics.mean(gt_psnr["bf16"])
        print(f"{name:10} ({source}): fp32 {p32:.4f} dB, bf16 {p16:.4f} dB, change {p16 - p32:+.4f} dB; "
              f"bf16 output vs fp32 output {statistics.mean(agree):.2f} dB (min {min(agree):.2f})", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--sections", nargs="+", default=["speed", "tiled", "uhd", "psnr"],
                        choices=["speed", "tiled", "uhd", "psnr"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: each model's)")
    parser.add_argument("--weights", nargs="+", default=[], metavar="MODEL=PATH",
                        help="psnr section: real weights for these models, e.g. hat_s_x4=HAT-S_SRx4.pth")
    parser.add_argument("--no-memory", action="store_true", help="skip the (slower) profiled memory runs")
    parser.add_argument("--full", action="store_true", help="really run every tile of the tiled sections")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process CPU clock instead of the wall clock (use with --threads 1 on a "
                             "shared machine: other processes then do not inflate the figures)")
    args = parser.parse_args(argv)
    weights = dict(item.split("=", 1) for item in args.weights if "=" in item)
    if len(weights) != len(args.weights) or not set(weights) <= set(MODELS) or "" in weights.values():
        parser.error(f"--weights takes MODEL=PATH with MODEL in {', '.join(MODELS)}")
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK = time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {'process CPU' if args.cpu_time else 'wall'} time")
    if "speed" in args.sections:
        bench_speed(args.models, args.sizes, args.repeats, not args.no_memory)
    if "tiled" in args.sections:
        bench_tiled(args.models, 1080, 1920, args.tile, args.overlap, ("fp32", "bf16"), args.full,
                    "Tiled 1920x1080")
    if "uhd" in args.sections:
        bench_tiled(["hat_s_x4"], 2160, 3840, args.tile, args.overlap, ("bf16",), args.full,
                    "3840x2160 x4 HAT-S tiled upscale")
    if "psnr" in args.sections:
        bench_psnr(args.models, weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())

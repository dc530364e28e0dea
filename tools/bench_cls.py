"""Classification backbones on the CPU: inference images/s (batch 1 and 32), training steps/s, and Vim-tiny's
batch-1 forward with the shared selective scan vs a sequential-loop scan written like the official reference.

    python tools/bench_cls.py [--threads N] [--repeats R] [--bf16] [--clock wall|cpu] [--models cct_2_3x2_32 ...]

Medians of wall-clock time, or with ``--clock cpu`` of this process's CPU time (use it with ``--threads 1`` on a
shared, loaded machine: the CPU time a run needs does not depend on what else runs). The load average is printed
first.
"""
from __future__ import annotations

import argparse
import os
import time
from unittest import mock

import torch
import torch.nn.functional as F

import pixelforge
from bench_common import median_time
from pixelforge.kernels import use_backend
from pixelforge.kernels.dispatch import native_available
from pixelforge.vision import vim as vim_module

# the smallest variant of each family (CVT and ViT-Lite share the CCT transformer)
DEFAULT_MODELS = ["cct_2_3x2_32", "cvt_2_4_32", "vit_2_4_32", "SReT_T", "vim_tiny_patch16_224"]


def sequential_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    return_last_state=False, reverse=False):
    """The baseline: the official ``selective_scan_ref`` algorithm (precomputed exp(ΔA) and ΔBu over (b, d, L, n),
    one Python step per position); ``reverse`` by flipped copies, as the official Vim code does."""
    if reverse:
        flip = (lambda t: None if t is None else t.flip(-1))
        out = sequential_scan(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), delta_bias, delta_softplus,
                              return_last_state)
        return (out[0].flip(-1), out[1]) if return_last_state else out.flip(-1)
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = (M.float().flatten(1, 2) if M.dim() == 4 else M.float() for M in (B, C))  # (b, 1, n, L) → (b, n, L)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.float()))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype)
    return (out, x) if return_last_state else out




CLOCK = time.perf_counter  # --clock cpu switches it to time.process_time


def _input(model, batch: int) -> torch.Tensor:
    size = model.img_size
    return torch.randn(batch, 3, size, size)


def bench_model(name: str, repeats: int, train_batch: int, bf16: bool) -> dict:
    """Inference images/s at batch 1 and 32, training steps/s (AdamW, cross-entropy) at ``train_batch`` (a quarter
    of it for models above 64 px)."""
    torch.manual_seed(0)
    model = pixelforge.create_model(name)
    result = {}
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in (1, 32):
            x = _input(model, batch)
            result[f"infer_b{batch}_img_s"] = batch / median_time(lambda: model(x), repeats, CLOCK)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if model.img_size > 64:  # 224-px models: a quarter of the batch, to keep the run short
        train_batch = max(1, train_batch // 4)
    result["train_batch"] = train_batch
    x = _input(model, train_batch)
    y = torch.randint(0, model.num_classes, (train_batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    result["train_steps_s"] = 1 / median_time(step, max(2, repeats // 2), CLOCK)
    return result


def bench_vim_scan(repeats: int) -> dict:
    """Vim-tiny batch-1 forward with each CPU backend of the shared scan (PyTorch path; native kernel when it
    builds) vs the sequential loop: seconds per forward, speedups and the largest logit differences."""
    torch.manual_seed(0)
    model = pixelforge.create_model("vim_tiny_patch16_224").eval()
    x = torch.randn(1, 3, 224, 224)
    backends = ["torch"] + (["native"] if native_available() else [])
    res = {}
    with torch.inference_mode():
        with mock.patch.object(vim_module, "selective_scan", sequential_scan):
            slow_out = model(x)
            res["sequential_s"] = median_time(lambda: model(x), max(1, repeats // 2), CLOCK)
        for backend in backends:
            with use_backend(backend):
                out = model(x)
                res[backend] = {"s": median_time(lambda: model(x), repeats, CLOCK),
                                "max_abs_diff": (out - slow_out).abs().max().item()}
                res[backend]["speedup"] = res["sequential_s"] / res[backend]["s"]
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for inference and training")
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--skip-scan", action="store_true", help="skip the Vim scan comparison")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="what is timed (see above)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, {args.clock} clock, "
          f"{'bf16' if args.bf16 else 'fp32'}, train batch {args.train_batch}")
    print(f"{'model':<24}{'infer b1 img/s':>16}{'infer b32 img/s':>17}{'train steps/s':>15}{'(batch)':>9}")
    for name in args.models:
        r = bench_model(name, args.repeats, args.train_batch, args.bf16)
        print(f"{name:<24}{r['infer_b1_img_s']:>16.1f}{r['infer_b32_img_s']:>17.1f}{r['train_steps_s']:>15.3f}"
              f"{r['train_batch']:>9}", flush=True)
    if not args.skip_scan:
        r = bench_vim_scan(args.repeats)
        print(f"vim_tiny batch-1 forward, sequential-loop scan: {r['sequential_s'] * 1e3:.0f} ms")
        for backend in ("torch", "native"):
            if backend in r:
                b = r[backend]
                print(f"vim_tiny batch-1 forward, shared scan ({backend}): {b['s'] * 1e3:.0f} ms, speedup "
                      f"{b['speedup']:.1f}x (target >= 5x), max |logit diff| {b['max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

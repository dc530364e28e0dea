"""VAR sampling speed on CPU: KV-cached vs uncached (the whole prefix recomputed with the block-causal mask at every
scale), per image, with peak memory.

The transformer has the d16 shape (C 1024, 16 heads, 10 scales, L 680, V 4096; ``--depth`` blocks, 16 by default)
and the tokenizer is the released 256² VQ-VAE layout (ch 160), both with random weights. Each mode runs in a fresh
process so that its peak resident memory is its own. Settings: README FID protocol (cfg 1.5, top-k 900, top-p 0.96).

    python tools/bench_var.py                 # d16 shape, batch 1: about 1-2 minutes on an idle 2-core CPU
    python tools/bench_var.py --depth 4       # quicker look
    python tools/bench_var.py --threads 1     # on a busy machine: CPU-seconds stay meaningful
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(mode: str, args: dict, queue) -> None:
    import torch

    import pixelforge
    from pixelforge.generative.var import sample

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    var = pixelforge.create_model("var_d16", depth=args["depth"]).eval()
    vqvae = pixelforge.create_model("var_vqvae_f16").eval()
    labels = torch.arange(args["batch"]) % var.num_classes
    kw = dict(cfg=1.5, top_k=900, top_p=0.96, use_cache=mode == "cached")
    base = _rss_mb()
    times, cpu = [], []
    for rep in range(args["reps"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = sample(var, vqvae, args["batch"], labels, generator=torch.Generator().manual_seed(rep), **kw)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    start, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        vqvae.fhat_to_img(out.f_hat)
    b = args["batch"]
    queue.put({"mode": mode, "s_per_image": min(times) / b, "cpu_s_per_image": min(cpu) / b,
               "decode_s_per_image": (time.perf_counter() - start) / b,
               "decode_cpu_s_per_image": (time.process_time() - start_cpu) / b,
               "peak_rss_mb": _rss_mb(), "peak_rss_growth_mb": _rss_mb() - base,
               "threads": torch.get_num_threads()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=16, help="transformer blocks (16 = VAR-d16)")
    p.add_argument("--batch", type=int, default=1, help="images per sampling call")
    p.add_argument("--reps", type=int, default=1, help="timed calls per mode (the fastest is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = vars(p.parse_args())
    ctx = mp.get_context("spawn")
    results = {}
    for mode in ("cached", "uncached"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(mode, args, queue))
        proc.start()
        results[mode] = queue.get()
        proc.join()
        r = results[mode]
        print(f"{mode:9s} {r['s_per_image']:7.2f} s/image wall, {r['cpu_s_per_image']:7.2f} CPU-s/image "
              f"(decoder {r['decode_s_per_image']:.2f} s, {r['decode_cpu_s_per_image']:.2f} CPU-s)  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB (+{r['peak_rss_growth_mb']:.0f} MB while sampling)", flush=True)
    c, u = results["cached"], results["uncached"]
    for unit in ("s", "cpu_s"):
        t_c = c[f"{unit}_per_image"] - c[f"decode_{unit}_per_image"]
        t_u = u[f"{unit}_per_image"] - u[f"decode_{unit}_per_image"]
        print(f"uncached / cached ({'wall' if unit == 's' else 'CPU'} time): "
              f"{u[f'{unit}_per_image'] / c[f'{unit}_per_image']:.2f}x per image, {t_u / t_c:.2f}x for the "
              f"transformer alone (decoder excluded)")
    print(f"peak RSS uncached / cached: {u['peak_rss_mb'] / c['peak_rss_mb']:.2f}")
    print(json.dumps({"config": args, **results}))


if __name__ == "__main__":
    main()

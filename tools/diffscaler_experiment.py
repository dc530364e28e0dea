"""The DiffScaler experiment of specs/diffscaler.md §5, end to end, printing its table.

1. Pre-train a DiT on CIFAR-10 animals (``configs/diffscaler/dit_tiny_cifar_animals.yaml``).
2. Adapt it to each task of ``configs/diffscaler/adapt_cifar.yaml`` (vehicles, textures, inverted) with every method
   (DiffScaler, full fine-tuning, DiffFit, BitFit, LoRA, ...) at equal steps, one run per (method, task), same seed and
   data order; plus one joint DiffScaler run over all tasks in mixed batches.
3. Sample each (method, task) (DDIM, fixed generator, CFG on class-conditional tasks with the task's null class) and
   report the Fréchet distance to the task's held-out images, and the trainable parameters (% of the base model,
   counted in pixelforge's DiT layout: shared embedders, as the original DiT).

The features: ``--feature-model``/``--feature-weights`` name a classifier the project trained (e.g. on CIFAR-10),
reported as ``FD-<model>``; without it a seeded randomly initialised ResNet (``FD-rand``) is used as a sanity
reference. ``--inception PATH`` (the pytorch-fid ``pt_inception-2015-12-05`` weights) adds true FID. Never call the
others FID.

Every stage resumes/skips finished work (runs write their ``model.safetensors`` last). Examples::

    python tools/diffscaler_experiment.py --tier smoke --out runs/diffscaler-smoke-exp      # minutes
    python tools/diffscaler_experiment.py --out runs/diffscaler-exp --feature-model cct_7_3x1_32 \\
        --feature-weights runs/cls/cct/model.safetensors                                   # overnight on 2 CPUs
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIERS = {
    # pre-training config, adaptation config, default steps and sampling sizes
    "small": dict(pretrain="configs/diffscaler/dit_tiny_cifar_animals.yaml",
                  adapt="configs/diffscaler/adapt_cifar.yaml",
                  pretrain_steps=20000, adapt_steps=2000, samples=2000, sample_steps=50, seeds=3),
    "smoke": dict(pretrain="configs/diffscaler/dit_smoke.yaml", adapt="configs/diffscaler/adapt_smoke.yaml",
                  pretrain_steps=300, adapt_steps=100, samples=128, sample_steps=20, seeds=1),
}
# learning rate per method (the spec's grid centre; --lr-grid sweeps the grid and keeps the best validation loss)
LR = {"full": 1e-4, "diffscaler": 1e-3, "difffit": 1e-3, "bitfit": 1e-3, "lora": 1e-3, "lora_mlp": 1e-3}
LR_GRID = {"full": [3e-5, 1e-4, 3e-4]}
DEFAULT_GRID = [1e-4, 3e-4, 1e-3]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_training(cfg: dict) -> Path:
    """Train (or resume, or skip when finished) one config; returns its output folder."""
    from pixelforge.train.loop import train

    out = Path(cfg["output_dir"])
    if (out / "model.safetensors").is_file():
        log(f"done already: {out}")
        return out
    log(f"training {out} ({cfg['train']['total_steps']} steps)")
    return train(cfg)


def final_val_loss(run: Path) -> float:
    """The last logged validation loss of a run (inf when none)."""
    best = float("inf")
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec and "val_loss" in rec["eval"]:
            best = rec["eval"]["val_loss"]
    return best


def adapt_config(base_cfg: dict, pretrained: Path, method: str, tasks: list[dict], lr: float, steps: int,
                 out: Path, rank: int) -> dict:
    cfg = copy.deepcopy(base_cfg)
    cfg.update(base=str(pretrained / "pipeline"), tasks=tasks, train_tasks=None, output_dir=str(out))
    cfg["adapter"] = {"method": method, "rank": rank}
    cfg["optimizer"] = {**cfg.get("optimizer", {}), "lr": lr}
    cfg["train"] = {**cfg["train"], "total_steps": steps, "eval_every": steps, "checkpoint_every": steps}
    return cfg


def feature_extractor(args):
    from pixelforge.metrics.frechet import classifier_extractor

    if args.feature_model:
        return classifier_extractor(args.feature_model, args.feature_weights)
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    return classifier_extractor(net, name="rand-resnet10t-seed0", size=64)


def real_stats(extractor, task_spec: dict, cfg: dict, size: int, n: int):
    from torch.utils.data import DataLoader

    from pixelforge.data.image_specs import build_image_dataset
    from pixelforge.metrics.frechet import FeatureStats

    spec = dict(task_spec["val"])
    spec["length" if "crops" in spec else "limit"] = n  # an equal share of every class
    d = cfg.get("data", {})
    ds = build_image_dataset(spec, size, training=False, archive=d.get("archive"), cache_dir=d.get("cache_dir"))
    if len(ds) < n:
        raise ValueError(f"task '{task_spec['name']}' has {len(ds)} held-out images, fewer than --samples {n}")
    stats = FeatureStats()
    seen = 0
    for batch in DataLoader(ds, batch_size=250, shuffle=False):
        imgs = (batch["image"] + 1) / 2
        stats.update(extractor(imgs[: n - seen]))
        seen += imgs.shape[0]
        if seen >= n:
            break
    return stats


@torch.no_grad()
def sample_stats(extractor, pipe, task: str | None, n: int, steps: int, guidance: float, seed: int,
                 batch: int = 250):
    """Feature statistics of n samples of ``task`` (None: the base model's null class, i.e. zero-shot)."""
    from pixelforge.metrics.frechet import FeatureStats

    num_classes = 0 if task is None else pipe.transformer.num_classes_of(pipe.transformer.task_index(task))
    stats = FeatureStats()
    for start in range(0, n, batch):
        b = min(batch, n - start)
        classes = [(start + i) % num_classes for i in range(b)] if num_classes else None
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        imgs = pipe(class_labels=classes, task=task, batch_size=b, guidance_scale=guidance if num_classes else 1.0,
                    num_inference_steps=steps, generator=gen, output_type="pt").images
        stats.update(extractor(imgs))
    return stats


@torch.no_grad()
def mixed_batch_gap(model) -> float:
    """Largest difference between one mixed-task batch and the same samples run task by task."""
    c, size, tasks = model.config.in_channels, model.config.sample_size, model.config.tasks
    gen = torch.Generator().manual_seed(0)
    n = 4 * len(tasks)
    x = torch.randn(n, c, size, size, generator=gen).to(model.device)
    t = torch.randint(0, 1000, (n,), generator=gen).to(model.device)
    ids = torch.arange(n, device=model.device) % len(tasks)
    y = torch.tensor([i % max(1, tasks[k]["num_classes"]) if tasks[k]["num_classes"] else 0
                      for i, k in enumerate(ids.tolist())], device=model.device)
    mixed = model(x, t, y, task_ids=ids).sample
    gap = 0.0
    for k in range(len(tasks)):
        sel = ids == k
        gap = max(gap, (model(x[sel], t[sel], y[sel], task_ids=ids[sel]).sample - mixed[sel]).abs().max().item())
    return gap


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tier", choices=sorted(TIERS), default="small")
    p.add_argument("--out", default="runs/diffscaler-exp")
    p.add_argument("--methods", default="diffscaler,full,difffit,bitfit,lora")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--adapt-steps", type=int)
    p.add_argument("--samples", type=int, help="generated and real images per task")
    p.add_argument("--sample-steps", type=int, help="DDIM steps")
    p.add_argument("--seeds", type=int, help="sampling seeds (mean ± std)")
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--lr-grid", action="store_true", help="sweep the learning-rate grid, keep the best val loss")
    p.add_argument("--no-joint", action="store_true", help="skip the joint multi-task DiffScaler run")
    p.add_argument("--feature-model")
    p.add_argument("--feature-weights")
    p.add_argument("--inception", help="pt_inception-2015-12-05 weights: adds true FID")
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*",
                   help="key=value overrides applied to both configs (e.g. train.num_workers=2)")
    args = p.parse_args(argv)

    from pixelforge.generative.diffscaler.pipeline import load_pipeline
    from pixelforge.train.config import load_config

    tier = TIERS[args.tier]
    steps_pre = args.pretrain_steps or tier["pretrain_steps"]
    steps_ad = args.adapt_steps or tier["adapt_steps"]
    n, sample_steps = args.samples or tier["samples"], args.sample_steps or tier["sample_steps"]
    seeds = args.seeds or tier["seeds"]
    out = Path(args.out)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in LR]
    if unknown:
        p.error(f"unknown methods {unknown}; known: {', '.join(LR)}")

    # 1. pre-training
    pre_cfg = load_config(REPO / tier["pretrain"], args.overrides)
    pre_cfg["output_dir"] = str(out / "pretrain")
    pre_cfg["train"] = {**pre_cfg["train"], "total_steps": steps_pre}
    pretrained = run_training(pre_cfg)

    # 2. adaptation: one run per (method, task) at equal steps, and the joint DiffScaler run
    ad_cfg = load_config(REPO / tier["adapt"], args.overrides)
    tasks = ad_cfg["tasks"]
    runs: dict[tuple[str, str], Path] = {}
    for method in methods:
        for task in tasks:
            grid = (LR_GRID.get(method, DEFAULT_GRID) if args.lr_grid else [LR[method]])
            candidates = []
            for lr in grid:
                tag = f"{method}/{task['name']}" + (f"-lr{lr:g}" if args.lr_grid else "")
                cfg = adapt_config(ad_cfg, pretrained, method, [task], lr, steps_ad, out / tag, args.rank)
                candidates.append(run_training(cfg))
            runs[(method, task["name"])] = min(candidates, key=final_val_loss)
    if not args.no_joint and "diffscaler" in methods and len(tasks) > 1:
        cfg = adapt_config(ad_cfg, pretrained, "diffscaler", tasks, LR["diffscaler"], steps_ad,
                           out / "diffscaler-joint", args.rank)
        runs[("diffscaler-joint", "*")] = run_training(cfg)

    # the joint model serves every task in one batch: mixed batch == per-task batches (trained weights)
    if ("diffscaler-joint", "*") in runs:
        joint = load_pipeline(runs[("diffscaler-joint", "*")] / "pipeline", device=args.device).transformer
        log(f"joint model, mixed batch vs per-task batches: max |diff| = {mixed_batch_gap(joint):.2e}")

    # 3. evaluation
    extractors = [feature_extractor(args)]
    if args.inception:
        from pixelforge.metrics.frechet import inception_extractor

        extractors.append(inception_extractor(args.inception))
    for e in extractors:
        e.to(args.device)
    base = load_pipeline(pretrained / "pipeline", scheduler="ddim", device=args.device)
    size = base.transformer.config.sample_size
    real = {(e.name, t["name"]): real_stats(e, t, ad_cfg, size, n) for e in extractors for t in tasks}

    def evaluate(pipe, task_name: str | None, spec_name: str) -> dict[str, tuple[float, float]]:
        pipe.set_progress_bar_config(disable=True)
        res = {}
        for e in extractors:
            ref = real[(e.name, spec_name)]
            fds = [sample_stats(e, pipe, task_name, n, sample_steps, args.guidance, s).frechet(ref)
                   for s in range(seeds)]
            t = torch.tensor(fds, dtype=torch.float64)
            res[e.name] = (t.mean().item(), t.std().item() if len(fds) > 1 else 0.0)
        return res

    base_params = base.transformer.parameter_counts()["base"]
    rows = []
    log("evaluating zero-shot (base model, null class)")
    rows.append(("zero-shot", 0, {t["name"]: evaluate(base, None, t["name"]) for t in tasks}))
    for method in methods + (["diffscaler-joint"] if ("diffscaler-joint", "*") in runs else []):
        per_task, trainable = {}, 0
        for t in tasks:
            run = runs[(method, "*")] if method == "diffscaler-joint" else runs[(method, t["name"])]
            pipe = load_pipeline(run / "pipeline", scheduler="ddim", device=args.device)
            pipe.transformer.trainable_task(t["name"])  # what training this task updated (all weights for full)
            trainable = pipe.transformer.parameter_counts()["trainable"]
            log(f"evaluating {method} on {t['name']}")
            per_task[t["name"]] = evaluate(pipe, t["name"], t["name"])
        rows.append((method, trainable, per_task))

    # 4. the table
    metric_names = [e.name for e in extractors]
    header = ["method", "trainable / task", "% of base"] + [f"{m} {t['name']}" for m in metric_names for t in tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, trainable, per_task in rows:
        cells = [method, f"{trainable:,}", f"{100 * trainable / base_params:.2f}"]
        for m in metric_names:
            for t in tasks:
                mean, std = per_task[t["name"]][m]
                cells.append(f"{mean:.2f} ± {std:.2f}" if seeds > 1 else f"{mean:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    note = (f"\nbase model: {base_params:,} parameters (pixelforge DiT layout, shared embedders); {steps_pre} "
            f"pre-training steps, {steps_ad} adaptation steps per run; {n} generated vs {n} held-out images per "
            f"task, DDIM {sample_steps} steps, CFG {args.guidance} on class-conditional tasks, {seeds} seed(s).")
    print(table + note)
    (out / "results.md").write_text(table + note + "\n")
    log(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

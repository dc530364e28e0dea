"""Scores of the CIFAR-10 generators as `pixelforge generate` runs them: the bundled VAR (var_d6_32 + its tokenizer)
and the bundled DiT (dit_tiny_4) with its DiffScaler tasks, or the files of a training run.

Per row: FD-cct_2_3x2_32 (Fréchet distance of the pre-logit features of the bundled CIFAR-10 classifier, not
Inception FID) between N generated images and N held-out real images of the same classes / task, and for
class-conditional rows the share of samples that the classifier assigns to the requested class ("agreement"; chance
= 1 / classes). The DiT's "no adapter" rows compare the base model's own (animal) samples with each task's real
images: the gap to the adapted rows is what the task adapter learned.

    python tools/score_generators.py                                # the bundled files, 1,000 samples a row
    python tools/score_generators.py --var runs/var_d6_cifar10/model.safetensors \\
        --dit runs/diffscaler/pretrain/model.safetensors runs/diffscaler/diffscaler/tasks/*.safetensors --n 500
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARCHIVE = str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ANIMALS = ["bird", "cat", "deer", "dog", "frog", "horse"]
VEHICLES = ["airplane", "automobile", "ship", "truck"]
TEXTURES = {"crops": [str(REPO.parent / "shared" / "data" / "sr-train" / "BSDS200-test")]}


def real_images(spec: dict, n: int) -> torch.Tensor:
    """(n, 3, 32, 32) held-out images in [0, 1] of a dataset SPEC (an equal share per class)."""
    from pixelforge.data.image_specs import build_image_dataset

    spec = {**spec, ("length" if "crops" in spec else "limit"): n}
    ds = build_image_dataset(spec, 32, training=False, archive=ARCHIVE if "dir" in spec else None)
    if len(ds) < n:
        raise SystemExit(f"score_generators: {spec} has {len(ds)} images, fewer than --n {n}")
    return torch.stack([(ds[i]["image"] + 1) / 2 for i in range(n)])


@torch.no_grad()
def score(extractor, classifier, fake: torch.Tensor, real: torch.Tensor, wanted: list[int] | None) -> dict:
    """FD between fake and real (N, 3, H, W) in [0, 1]; agreement = share of fake classified as ``wanted``
    (CIFAR-10 ids, one per image)."""
    from pixelforge.metrics.frechet import FeatureStats

    stats = []
    for images in (fake, real):
        s = FeatureStats()
        for chunk in images.split(250):
            s.update(extractor(chunk))
        stats.append(s)
    out = {"fd": stats[0].frechet(stats[1])}
    if wanted is not None:
        logits = torch.cat([classifier((c - extractor.mean) / extractor.std) for c in fake.split(250)])
        out["agreement"] = (logits.argmax(1) == torch.tensor(wanted)).float().mean().item()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--var", help="var_d6_32 weights (default: bundled; its tokenizer from the file's config)")
    p.add_argument("--dit", nargs="+", help="dit_tiny_4 base file, then task files (default: bundled)")
    p.add_argument("--only", choices=["var", "dit"], help="score one generator")
    p.add_argument("--n", type=int, default=1000, help="generated and real images per row")
    p.add_argument("--steps", type=int, default=50, help="DiT DDIM steps")
    p.add_argument("--guidance", type=float, default=1.0, help="DiT classifier-free guidance (class rows)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from pixelforge.generative.generate import GenerateOptions, generate
    from pixelforge.metrics.frechet import classifier_extractor

    torch.manual_seed(0)
    extractor = classifier_extractor("cct_2_3x2_32").eval()
    classifier = extractor.net  # its logits: the same bundled classifier (32x32 inputs, no resizing)

    generated: dict[int, tuple] = {}  # one generation per options object (the base rows share theirs)

    def row(name, options, real_spec, classes_to_cifar=None):
        t0 = time.time()
        if id(options) not in generated:
            options.n = args.n // len(options.classes) if options.classes else args.n
            generated[id(options)] = generate(options)[:2]
        fake, labels = generated[id(options)]
        wanted = None if classes_to_cifar is None else [classes_to_cifar[c] for c in labels]
        res = score(extractor, classifier, fake, real_images(real_spec, len(fake)), wanted)
        print(f"{name:40s} n={len(fake):5d}  FD {res['fd']:8.2f}  agreement "
              f"{res.get('agreement', float('nan')) * 100:5.1f} %  ({time.time() - t0:.0f} s)", flush=True)

    common = dict(seed=args.seed, device="cpu", precision="fp32")
    if args.only in (None, "var"):
        weights = [args.var] if args.var else None
        row("var_d6_32 (cfg 1.5, top-p 0.96)", GenerateOptions("var_d6_32", weights=weights, classes=list(range(10)),
                                                               batch_size=250, **common),
            {"dir": "cifar10/test"}, list(range(10)))
    if args.only in (None, "dit"):
        dit = dict(model="dit_tiny_4", weights=args.dit, steps=args.steps, batch_size=250, **common)
        animals = {"dir": "cifar10/test", "classes": ANIMALS}
        to_cifar = lambda names: [CIFAR10.index(c) for c in names]
        base = GenerateOptions(classes=list(range(6)), guidance=args.guidance, **dit)
        row("dit_tiny_4 base (animals)", base, animals, to_cifar(ANIMALS))
        row("  task vehicles", GenerateOptions(task="vehicles", classes=list(range(4)), guidance=args.guidance, **dit),
            {"dir": "cifar10/test", "classes": VEHICLES}, to_cifar(VEHICLES))
        row("  base model (no adapter) vs vehicles", base, {"dir": "cifar10/test", "classes": VEHICLES})
        row("  task textures", GenerateOptions(task="textures", **dit), TEXTURES)
        row("  base model (no adapter) vs textures", base, TEXTURES)
        row("  task inverted", GenerateOptions(task="inverted", **dit), {**animals, "transform": "invert"})
        row("  base model (no adapter) vs inverted", base, {**animals, "transform": "invert"})
    return 0


if __name__ == "__main__":
    sys.exit(main())

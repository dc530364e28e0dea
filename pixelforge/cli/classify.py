"""``pixelforge classify IMAGE... [--model NAME] [--weights W] [--topk 5]``: top-k classes of images."""
from __future__ import annotations

import sys

import torch

from .common import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, add_device_argument, add_precision_argument, fail

__all__ = ["add_parser"]


def _run(args) -> int:
    from ..data.image_io import ImageIOError
    from ..infer.classify import classifier_probe, classify_images, load_classifier
    from ..infer.precision import announce, prepare_model, resolve_device
    from ..zoo import CheckpointError, pretrained_file

    if args.topk < 1:
        return fail("classify", "--topk must be at least 1")
    torch.manual_seed(0)  # models drawing random numbers at inference (SReT's slice shuffles) answer reproducibly
    try:
        device = resolve_device(args.device)
        weights = args.weights or pretrained_file(args.model)
        model, transform, names = load_classifier(args.model, weights, device)
        model, choice = prepare_model(model, args.precision, device, args.model, classifier_probe(transform),
                                      output="logits")
    except (ImageIOError, CheckpointError, FileNotFoundError, ValueError) as exc:
        return fail("classify", str(exc).replace("weights=PATH", "--weights W"))
    announce(choice, "pixelforge classify")
    failures = []
    for path in args.images:  # a bad file is reported on its own line; the others are still classified
        try:
            top = classify_images(model, transform, [path], args.topk, choice.precision)[0]
        except ImageIOError as exc:
            fail("classify", exc)
            failures.append(path)
            continue
        print(path)
        for rank, (index, prob) in enumerate(top, 1):
            label = names[index] if names is not None and index < len(names) else str(index)
            print(f"  {rank}. {label:<20} {100 * prob:6.2f}%")
    if failures and len(args.images) > 1:
        print(f"pixelforge classify: {len(failures)} of {len(args.images)} images failed: {', '.join(failures)}",
              file=sys.stderr)
    return EXIT_OK if not failures else EXIT_PARTIAL if len(failures) < len(args.images) else EXIT_ERROR


def add_parser(sub) -> None:
    """Add the ``classify`` sub-command."""
    p = sub.add_parser("classify", help="print the top-k classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", required=True, help="model name, e.g. cct_2_3x2_32 (see `pixelforge models`)")
    p.add_argument("--weights", help="weights: a pixelforge .safetensors or an official checkpoint (default: the "
                                     "model's bundled weights, e.g. cct_2_3x2_32 trained here on CIFAR-10)")
    p.add_argument("--topk", type=int, default=5, help="how many classes to print (default 5)")
    add_device_argument(p)
    add_precision_argument(p)
    p.set_defaults(func=_run)

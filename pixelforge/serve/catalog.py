"""What the page offers: the zoo (task, parameters, weights, measured scores) and the defaults of the commands.

Everything here is read from the project itself: models from the registry (built on the ``meta`` device, so no
memory or time goes into weights), weights from the same places ``create_model`` looks, scores from the bundled
weights README, and option choices and defaults from the ``upscale`` and ``generate`` argument parsers.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = ["ModelInfo", "cli_args", "cli_choices", "readme_scores", "build_catalog", "catalog_json"]

# README table columns that hold measured scores (others: config, steps, wall time, baselines)
_SCORE_COLUMN = re.compile(r"psnr|ssim|top-?[15]|fid|\bfd\b|lpips|accuracy", re.IGNORECASE)


@dataclass
class ModelInfo:
    """One registered model as the page shows it.

    kind: ``image`` (image-to-image: super-resolution or dereflection), ``var``, ``diffusion``, ``tokenizer`` or
    ``classifier``; weights: ``bundled``, ``$PIXELFORGE_HOME``, ``server file`` (``serve --weights``), ``missing``
    (a release is named but not installed) or ``-`` (none defined).
    """

    name: str
    kind: str
    task: str
    params: int
    weights: str
    scale: int | None = None
    scores: list[str] = field(default_factory=list)

    @property
    def has_weights(self) -> bool:
        return self.weights not in ("missing", "-")


def cli_args(command: str, argv: list[str]):
    """The namespace ``pixelforge COMMAND ARGV...`` would run with: the command's own defaults and checks."""
    from ..cli import command_parser

    return command_parser(command).parse_args(argv)


def cli_choices(command: str, dest: str) -> tuple[list[str], str]:
    """(choices, default) of one option of a command, e.g. ``cli_choices("upscale", "precision")``."""
    from ..cli import command_parser

    for action in command_parser(command)._actions:
        if action.dest == dest:
            return list(action.choices or ()), action.default
    raise KeyError(f"pixelforge {command} has no option {dest}")


def readme_scores(text: str) -> dict[str, list[str]]:
    """Measured scores per weights file name from a weights README.

    Markdown tables whose first column names a file (```file```) give their score columns as ``"header: value"``;
    elsewhere, a sentence ending in a bold figure (``Top-1 / top-5 on ...: **80.98 % / 98.77 %**``) counts for the
    files its section names.
    """
    scores: dict[str, list[str]] = {}
    header = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            header = None
        elif header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            file = cells[0].strip("`")
            for name, value in zip(header[1:], cells[1:]):
                if _SCORE_COLUMN.search(name):
                    scores.setdefault(file, []).append(f"{name}: {value}")
    for section in re.split(r"\n(?=#)", text):
        prose = " ".join(section.split())
        figures = [f"{label.strip()}: {value.strip()}" for label, value in
                   re.findall(r"(?:^|[.;]\s)([A-Z][^.;:]*?):\s*\*\*([^*]+)\*\*", prose)]
        for file in dict.fromkeys(re.findall(r"`([\w.-]+\.(?:safetensors|pth))`", section)):
            if figures and file not in scores:
                scores[file] = figures
    return scores


def _describe(model: torch.nn.Module) -> tuple[str, str, int | None]:
    """(kind, task, scale) of a model instance."""
    from ..generative.diffscaler.dit import DiT
    from ..generative.var import VAR, VQVAE
    from ..vision.dense import DenseImageModel

    if isinstance(model, DenseImageModel):
        scale = int(getattr(model, "upscale", 1))
        return "image", (f"super-resolution x{scale}" if scale > 1 else "reflection removal"), scale
    if isinstance(model, VAR):
        return "var", "class-conditional generation (VAR)", None
    if isinstance(model, VQVAE):
        return "tokenizer", "VAR tokenizer (VQ-VAE)", None
    if isinstance(model, DiT):
        return "diffusion", "diffusion generation (DiT + DiffScaler tasks)", None
    return "classifier", "image classification", None


def build_catalog(server_weights: dict[str, Path] | None = None) -> list[ModelInfo]:
    """Every registered model with its task, parameter count, weights status and bundled scores.

    ``server_weights`` (model name → file, from ``pixelforge serve --weights``) mark models as having weights.
    Builds each model on the ``meta`` device (about 10 s of CPU for the whole zoo).
    """
    from timm.models import get_pretrained_cfg

    from ..zoo import create_model, list_models, pretrained_status
    from ..zoo.weights import PACKAGE_WEIGHTS

    readme = PACKAGE_WEIGHTS / "README.md"
    scores = readme_scores(readme.read_text(encoding="utf-8")) if readme.is_file() else {}
    catalog = []
    for name in list_models():
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # e.g. RRFormer's random-VGG notice: no weights are loaded here
            model = create_model(name)
        kind, task, scale = _describe(model)
        cfg = get_pretrained_cfg(name)
        weights = "server file" if name in (server_weights or {}) else pretrained_status(name)
        catalog.append(ModelInfo(name, kind, task, sum(p.numel() for p in model.parameters()), weights, scale,
                                 scores.get(cfg.file, []) if cfg is not None and cfg.file else []))
    return catalog


def catalog_json(catalog: list[ModelInfo]) -> list[dict]:
    """The catalogue as JSON-ready dicts (with ``has_weights``)."""
    return [{**asdict(m), "has_weights": m.has_weights} for m in catalog]

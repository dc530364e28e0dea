"""Training curves from ``metrics.jsonl``: loss, learning rate and the validation metric against step, one panel
each (``curves.png`` of a run; ``pixelforge plot RUN_DIR...`` overlays runs)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_runs", "read_metrics"]


def read_metrics(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of a run folder's ``metrics.jsonl``; lines cut short are skipped."""
    train, evals = [], []
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no metrics.jsonl (not a pixelforge training run?)")
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        (evals if "eval" in record else train).append(record)
    return train, evals


def _main_metric(run: Path) -> str | None:
    """The recipe's main metric, read from the run's resolved ``config.yaml``."""
    import yaml

    try:
        saved = yaml.safe_load((run / "config.yaml").read_text()) or {}
        recipe = saved.get("recipe") or saved.get("task")  # runs of older versions name it task
        from .loop import resolve_task

        return resolve_task(recipe).main_metric
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return None


def plot_runs(runs: list[str | Path], out: str | Path, metric: str | None = None) -> Path:
    """Write a PNG of three panels (training loss, learning rate, validation ``metric``) against step, one line
    per run (labelled by folder name). ``metric`` defaults to the first run's recipe main metric.

    Returns the path written (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.image_io import atomic_open

    runs = [Path(r) for r in runs]
    metric = metric or _main_metric(runs[0])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for run in runs:
        train, evals = read_metrics(run)
        label = run.name if len(runs) > 1 else None
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r.get("loss") for r in train], label=label)
        axes[1].plot(steps, [r.get("lr") for r in train], label=label)
        points = [(r["step"], r["eval"][metric]) for r in evals if metric in r["eval"]]
        axes[2].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    for ax, title in zip(axes, ("training loss", "learning rate", f"validation {metric or '(none)'}")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_open(out) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return out

"""Shared test fixtures: where ../shared lives, and reading parity cases."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIXELFORGE_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
DATA = SHARED / "data"

# Measured choices (kernel backends, precision auto) and built kernels of a test run go to a throw-away home, not to
# the user's cache, unless $PIXELFORGE_HOME is set on purpose.
if "PIXELFORGE_HOME" not in os.environ:
    os.environ["PIXELFORGE_HOME"] = tempfile.mkdtemp(prefix="pixelforge-tests-")
    atexit.register(shutil.rmtree, os.environ["PIXELFORGE_HOME"], ignore_errors=True)


def parity_case(name: str) -> tuple[dict, dict, Path]:
    """(case.json as dict, io tensors, case folder) of ``../shared/parity/<name>``.

    Skips when ../shared is absent outside CI; in CI (``CI`` set) a missing fixture is an error.
    """
    folder = PARITY / name
    if not folder.is_dir():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"parity fixture missing: {folder}")
        pytest.skip(f"parity fixture not available: {folder}")
    from safetensors.torch import load_file

    case = json.loads((folder / "case.json").read_text())
    return case, load_file(str(folder / "io.safetensors")), folder


def case_checkpoint(case: dict, folder: Path) -> Path:
    """The checkpoint file of a case (following ``checkpoint_from`` when the case reuses another's)."""
    if case.get("checkpoint"):
        return folder / case["checkpoint"]
    return PARITY / case["checkpoint_from"] / "checkpoint.pth"


def keys_manifest(variant: str) -> dict:
    """``parity/keys/<variant>.json``: {"wrapper": ..., "keys": {name: [shape, dtype]}}."""
    path = PARITY / "keys" / f"{variant}.json"
    if not path.is_file():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"keys manifest missing: {path}")
        pytest.skip(f"keys manifest not available: {path}")
    return json.loads(path.read_text())


def random_state_from_manifest(manifest: dict, device: str = "cpu") -> dict:
    """A wrapped random state dict with exactly the manifest's keys, shapes and dtypes (device may be 'meta')."""
    import torch

    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, (shape, dtype) in manifest["keys"].items():
        dt = getattr(torch, dtype.replace("torch.", ""))
        if device == "meta":
            state[name] = torch.empty(shape, dtype=dt, device="meta")
        elif dt.is_floating_point:
            state[name] = (torch.randn(shape, generator=gen) * 0.02).to(dt)
        else:
            state[name] = torch.zeros(shape, dtype=dt)
    return {manifest["wrapper"]: state} if manifest.get("wrapper") else state


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    """An empty ``$PIXELFORGE_HOME`` for the test."""
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"

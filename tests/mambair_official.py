"""The official MambaIR class (csguoh/MambaIR ``basicsr/archs/mambair_arch.py``), imported from its clone on the CPU.

The official file imports mamba_ssm's CUDA ``selective_scan_fn``; here both names it imports resolve to mamba_ssm's
pure-PyTorch ``selective_scan_ref`` (state-spaces/mamba clone), through the shared official runner
(``../shared/official/build.py``: its ``basicsr`` stand-in and private imports). Nothing of the official code is
copied: it is read from the clones at run time. Clones: ``$PF_REFS``, else ``.refs`` in this repository.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = Path(os.environ.get("PIXELFORGE_SHARED", REPO.parent / "shared")) / "official"
ARCH = Path("basicsr") / "archs" / "mambair_arch.py"
CLONES = ("csguoh+MambaIR", "state-spaces+mamba")

# Official network_g of the released models (options/test/mambair/*.yml), by our factory name.
RELEASED = {
    **{f"mambair_x{s}": dict(upscale=s, in_chans=3, img_size=64, img_range=1.0, d_state=16, depths=[6] * 6,
                             embed_dim=180, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
       for s in (2, 3, 4)},
    **{f"mambair_light_x{s}": dict(upscale=s, in_chans=3, img_size=64, img_range=1.0, d_state=10, depths=[6] * 4,
                                   embed_dim=60, mlp_ratio=1.2, upsampler="pixelshuffledirect",
                                   resi_connection="1conv") for s in (2, 3, 4)},
    # ColorDN (gaussian colour denoising) and CAR (grayscale JPEG) share one layout each: the restoration head
    "mambair_dereflect": dict(upscale=1, in_chans=3, img_size=128, img_range=1.0, d_state=16, depths=[6] * 6,
                              embed_dim=180, mlp_ratio=1.2),
    "car": dict(upscale=1, in_chans=1, img_size=126, d_state=16, depths=[6] * 6, embed_dim=180, mlp_ratio=1.2),
}


def refs_dir() -> Path:
    return Path(os.environ.get("PF_REFS") or REPO / ".refs")


def missing() -> str | None:
    """Why the official class cannot be built here (a missing clone or runner), or None."""
    if not (OFFICIAL_DIR / "build.py").is_file():
        return f"official runner not found: {OFFICIAL_DIR / 'build.py'}"
    for name in CLONES:
        if not (refs_dir() / name).is_dir():
            return (f"clone {refs_dir() / name} not found (git archive the snapshot there, or set PF_REFS; "
                    f"see {OFFICIAL_DIR / 'README.md'})")
    return None


_CLASS = []


def official_mambair():
    """The official ``MambaIR`` class, its scan being mamba_ssm's ``selective_scan_ref`` (imported once)."""
    if _CLASS:
        return _CLASS[0]
    spec = importlib.util.spec_from_file_location("pixelforge_test_official_build", OFFICIAL_DIR / "build.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    refs = str(refs_dir())
    scan_ref = runner.selective_scan_ref(refs)
    package, ops = types.ModuleType("mamba_ssm"), types.ModuleType("mamba_ssm.ops")
    iface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    iface.selective_scan_fn = iface.selective_scan_ref = scan_ref
    preset = {"mamba_ssm": package, "mamba_ssm.ops": ops, iface.__name__: iface}
    import einops  # noqa: F401  (imported by the arch file)

    with runner._private_imports(owned=["basicsr", "mamba_ssm"], preset=preset):
        runner._exec_package("basicsr", runner.SHIMS)
        spec = importlib.util.spec_from_file_location("official_mambair_arch", refs_dir() / CLONES[0] / ARCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    _CLASS.append(module.MambaIR)
    return module.MambaIR

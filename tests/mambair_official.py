"""The official MambaIR class (csguoh/MambaIR ``basicsr/archs/mambair_arch.py``), imported from its clone on the CPU.

The official file imports mamba_ssm's CUDA ``selective_scan_fn``; here both names it imports resolve to mamba_ssm's
pure-PyTorch ``selective_scan_ref`` (state-spaces/mamba clone), through the shared official runner
(``../shared/official/build.py``: its ``basicsr`` stand-in and private imports). Nothing of the official code is
copied: it is read from the clones at run time. Clones: ``$PF_REFS``, else ``.refs`` in this repository.

``python tests/mambair_official.py --record tests/data/mambair`` records what the tests need without the clones: the
parity cases' weights, inputs and official outputs, and the released state-dict layouts (numbers and key names
produced by running the official class, no official code).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys
import types
import zlib
from pathlib import Path

import torch

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


# Small official configurations of the parity tests (embed_dim >= 30: the CAB squeezes channels by 30).
SMALL = {
    "classic_x2": dict(upscale=2, img_size=16, d_state=8, depths=[2, 1], embed_dim=32, mlp_ratio=1.5,
                       upsampler="pixelshuffle"),
    "light_x3": dict(upscale=3, img_size=16, d_state=10, depths=[1, 2], embed_dim=30, mlp_ratio=1.2,
                     upsampler="pixelshuffledirect"),
    "restore_gray_3conv": dict(upscale=1, in_chans=1, img_size=16, d_state=4, depths=[2], embed_dim=32,
                               mlp_ratio=2.0, resi_connection="3conv"),
}
INPUT_SHAPE = (2, 9, 11)  # batch, height, width of the parity input
BIG = 1024  # tensors with more elements are regenerated from their name, mean and std, not recorded


def regenerated(key: str, shape, mean: float, std: float) -> torch.Tensor:
    """A seeded stand-in for a large weight, a function of its state-dict key: normal of ``shape``, ``mean`` and
    ``std`` (fp32)."""
    noise = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
    return noise * std + mean


def parity_input(config: dict) -> torch.Tensor:
    """The parity input, (B, C, H, W) in [0, 1), from a fixed seed."""
    b, h, w = INPUT_SHAPE
    return torch.rand(b, config.get("in_chans", 3), h, w, generator=torch.Generator().manual_seed(1))


def official_case(name: str):
    """Live official case ``name`` of SMALL: (net, regenerated {key: (shape, mean, std)}, input, official output).

    Seeded official init, every parameter moved by 0.02 noise so that each branch matters, then each tensor of over
    BIG elements replaced by ``regenerated`` with its mean and std (so that a recording stores only the small ones)."""
    config = SMALL[name]
    torch.manual_seed(0)
    net = official_mambair()(**config).eval()
    regen = {}
    with torch.no_grad():
        for key, p in net.state_dict().items():
            p.add_(torch.randn_like(p) * 0.02)
            if p.numel() > BIG:
                regen[key] = (list(p.shape), float(p.mean()), float(p.std()))
                p.copy_(regenerated(key, *regen[key]))
        x = parity_input(config)
        out = net(x)
    return net, regen, x, out


def layout(config: dict) -> dict:
    """Key names and shapes of the official state dict of ``config``, and its parameter count."""
    net = official_mambair()(**config)
    return {"state": [[k, list(v.shape)] for k, v in net.state_dict().items()],
            "n_params": sum(p.numel() for p in net.parameters())}


def record(folder: Path) -> None:
    """Write the fixtures the tests read without the clones: per SMALL case ``<name>.safetensors`` (the official
    state dict's recorded tensors, the input ``__input__`` and official output ``__output__``, fp32) and
    ``<name>.json`` (constructor kwargs and the regenerated tensors); ``layouts.json.gz`` (RELEASED layouts)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, config in SMALL.items():
        net, regen, x, out = official_case(name)
        tensors = {k: v.contiguous().clone() for k, v in net.state_dict().items() if k not in regen}
        save_file({**tensors, "__input__": x, "__output__": out.contiguous()}, str(folder / f"{name}.safetensors"))
        (folder / f"{name}.json").write_text(json.dumps({"config": config, "regenerated": regen}, indent=1) + "\n")
    layouts = {variant: {"config": config, **layout(config)} for variant, config in RELEASED.items()}
    with gzip.GzipFile(folder / "layouts.json.gz", "wb", mtime=0) as f:
        f.write(json.dumps(layouts, separators=(",", ":")).encode())


def recorded_case(folder: Path, name: str):
    """Recorded case ``name``: (config, official-format state dict, input, official output)."""
    from safetensors.torch import load_file

    meta = json.loads((folder / f"{name}.json").read_text())
    tensors = load_file(str(folder / f"{name}.safetensors"))
    x, out = tensors.pop("__input__"), tensors.pop("__output__")
    tensors.update({k: regenerated(k, *args) for k, args in meta["regenerated"].items()})
    return meta["config"], tensors, x, out


def recorded_layouts(folder: Path) -> dict:
    """{variant: {"config", "state": [[key, shape]], "n_params"}} of the recorded RELEASED layouts."""
    with gzip.open(folder / "layouts.json.gz", "rt") as f:
        return json.load(f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, required=True, help="folder of the fixtures (tests/data/mambair)")
    args = parser.parse_args()
    if missing():
        sys.exit(missing())
    record(args.record)

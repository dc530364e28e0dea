"""pixelforge against the official code, side by side on the CPU: same weights, same input, fp32, one process.

For every case the official model is built from its repository clone by the shared runner (``build.py`` of
``../shared/official``, imported by path at run time; nothing of it is copied here), its weights are loaded into
pixelforge (``pixelforge.load_official`` / ``create_model(weights=...)``), and then, at each thread count:

- the outputs are compared (max |diff|, and PASS when |ours - official| <= atol + rtol·|official| everywhere, with
  the tolerance of the family's parity fixture in ``../shared/parity``);
- both forwards are timed alternately (median of ``--reps``; wall and process CPU time, ``--clock`` picks the one
  the figures use);
- the model's multiply-adds (``torch.utils.flop_counter.FlopCounterMode`` on the pixelforge side, MACs = flops/2;
  the selective scan of Vim is not an aten op the counter knows, so Vim's count leaves it out) are set against the
  machine's fp32 matmul rate: a 2048² product by the fastest fp32 GEMM PyTorch has here (torch.mm, or oneDNN's
  linear where it is faster, as on AMD CPUs), timed in the same interleaved rounds at that thread count;
- the issue's target is checked: the family's speed-up (HAT-S 4x, CRAFT 3x, CFSR 2x, RRFormer 4x, SReT_T 2x,
  CCT 2x, Vim-tiny 5x, VAR-d16 sampling 2x) or >= 70 % of the matmul rate, with outputs within tolerance.

Cases: hat / craft / cfsr x4 SR of 64² and 128² LR images (the official test-time padding); rrformer as released at
64² and 128²; sret SReT_T batch 1 and 8 (224²); cct cct_7_3x1_32 batch 1 and 32 (32²); vim tiny batch 1 (224²);
var one VAR-d16 256 px sample (class 207, seed 0, cfg 1.5, top-k 900, top-p 0.96, KV cache on both sides). All
weights are the runner's seeded random fill (the same tensors on both sides).

    python tools/bench_vs_official.py --families cfsr cct --threads 1 --reps 3
    python tools/bench_vs_official.py --quick --markdown            # smallest case per family, 1 and 2 threads
    python tools/bench_vs_official.py --json vs_official.json --clock cpu

Clones: ``--refs``, else ``$PF_REFS``, else ``.refs`` in this repository (see ``../shared/official/README.md``).
On a shared, loaded machine wall times are noisy: use ``--clock cpu`` with one thread, and several reps.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import alternating_medians, cpu_model, matmul_probe  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One benchmark input: ``shape`` (B, C, H, W) of the input image batch, or None for VAR sampling."""
    family: str
    label: str
    shape: tuple[int, ...] | None


CASES = {
    "hat": [Case("hat", "x4 64²", (1, 3, 64, 64)), Case("hat", "x4 128²", (1, 3, 128, 128))],
    "craft": [Case("craft", "x4 64²", (1, 3, 64, 64)), Case("craft", "x4 128²", (1, 3, 128, 128))],
    "cfsr": [Case("cfsr", "x4 64²", (1, 3, 64, 64)), Case("cfsr", "x4 128²", (1, 3, 128, 128))],
    "rrformer": [Case("rrformer", "64²", (1, 3, 64, 64)), Case("rrformer", "128²", (1, 3, 128, 128))],
    "sret": [Case("sret", "b1 224²", (1, 3, 224, 224)), Case("sret", "b8 224²", (8, 3, 224, 224))],
    "cct": [Case("cct", "b1 32²", (1, 3, 32, 32)), Case("cct", "b32 32²", (32, 3, 32, 32))],
    "vim": [Case("vim", "b1 224²", (1, 3, 224, 224))],
    "var": [Case("var", "d16 256px sample", None)],
}
# issue 12: speed-up over the official code each family must reach (or MATMUL_FRACTION of the matmul rate)
TARGETS = {"hat": 4.0, "craft": 3.0, "cfsr": 2.0, "rrformer": 4.0, "sret": 2.0, "cct": 2.0, "vim": 5.0, "var": 2.0}
MATMUL_FRACTION = 0.70
# the parity fixture whose tolerance a family's outputs are held to, and the output it names (per_tensor_atol)
PARITY_CASES = {"hat": "hat_small", "craft": "craft_small", "cfsr": "cfsr_official_x4", "rrformer": "rrformer_small",
                "sret": "sret_small", "cct": "cct_small", "vim": "vim_small", "var": "var_small_sample"}
PARITY_OUTPUT = {"var": "img"}
# official checkpoint container of each family (what pixelforge's converters unwrap)
CONTAINERS = {"hat": "params_ema", "craft": "params_ema", "cfsr": "params_ema", "rrformer": "icnn",
              "sret": "model", "vim": "model", "cct": None}
VAR_SAMPLING = dict(label=207, seed=0, cfg=1.5, top_k=900, top_p=0.96)


# ------------------------------------------------------------------------------------------------ pure helpers
def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-adds of one ``fn()`` call by ``torch.utils.flop_counter`` (flops / 2), under inference mode.

    An uncounted call comes first: the first call at a new thread count measures auto's backend choices (races of
    candidate kernels), whose work is not the model's."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode():
        fn()
        with counter:
            fn()
    return counter.get_total_flops() // 2


def parity_tolerance(case_json: dict, output: str | None = None) -> tuple[float, float]:
    """(atol, rtol) of a parity fixture's ``case.json``; ``output`` also admits its ``per_tensor_atol`` entries
    for that output name (keys like ``C_img``), taking the loosest."""
    atol = [case_json["atol"]]
    if output:
        atol += [v for k, v in case_json.get("per_tensor_atol", {}).items() if k.split("_", 1)[-1] == output]
    return max(atol), case_json["rtol"]


def compare_outputs(ours: torch.Tensor, official: torch.Tensor, atol: float, rtol: float) -> tuple[float, bool]:
    """(max |ours - official|, whether |ours - official| <= atol + rtol·|official| everywhere, as assert_close).
    Shapes that differ give (nan, False)."""
    if ours.shape != official.shape:
        return float("nan"), False
    diff = (ours.double() - official.double()).abs()
    return diff.max().item(), bool((diff <= atol + rtol * official.double().abs()).all())


def evaluate_target(speedup: float, fraction: float, target: float, parity_ok: bool,
                    min_fraction: float = MATMUL_FRACTION) -> tuple[bool, str]:
    """(met, verdict): met when the outputs agree and the speed-up reaches ``target`` or pixelforge reaches
    ``min_fraction`` of the matmul rate; the verdict says which, or by how much it falls short."""
    if not parity_ok:
        return False, "outputs differ"
    if speedup >= target:
        return True, f"{speedup:.2f}x >= {target:g}x"
    if fraction >= min_fraction:
        return True, f"{fraction:.0%} >= {min_fraction:.0%} of matmul"
    return False, f"short: {speedup / target:.0%} of {target:g}x, {fraction / min_fraction:.0%} of {min_fraction:.0%}"


def markdown_table(rows: list[dict]) -> str:
    """The result rows as a markdown table (one line per case and thread count)."""
    head = ("| family | case | threads | GMAC | official ms | pixelforge ms | speed-up | matmul GMAC/s "
            "| official % mm | pixelforge % mm | target | met | max abs diff | parity |")
    lines = [head, "|" + "|".join(["---"] * 2 + ["---:"] * 9 + ["---"] * 3) + "|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['case']} | {r['threads']} | {r['macs'] / 1e9:.2f} "
                     f"| {r['official_s'] * 1e3:,.1f} | {r['pixelforge_s'] * 1e3:,.1f} | {r['speedup']:.2f}x "
                     f"| {r['matmul_macs_per_s'] / 1e9:.1f} "
                     f"| {r['official_fraction']:.0%} | {r['pixelforge_fraction']:.0%} "
                     f"| {r['target']:g}x / {MATMUL_FRACTION:.0%} | {'yes' if r['met'] else 'no'} ({r['verdict']}) "
                     f"| {r['max_diff']:.1e} | {'PASS' if r['parity_ok'] else 'FAIL'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the two sides
def load_runner(official_dir: Path) -> ModuleType:
    """``build.py`` of the shared official runner, imported by path."""
    path = official_dir / "build.py"
    if not path.is_file():
        raise SystemExit(f"official runner not found: {path} (pass --official-dir, the shared/official folder "
                         "whose README explains it)")
    spec = importlib.util.spec_from_file_location("pixelforge_bench_official_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def missing_clone(runner: ModuleType, family: str, refs: str | None, official_dir: Path) -> str | None:
    """None when the family's clone is there, else a one-line message naming it and how to get it."""
    try:
        runner.clone_dir(family, refs)
    except FileNotFoundError:
        repo = runner.REPOS[family]
        where = Path(runner.refs_dir(refs)) / repo.replace("/", "+")
        return (f"{family}: skipped, the clone of {repo} is missing ({where}); make it as "
                f"{official_dir / 'README.md'} section 1 says (clone_refs.sh MIRROR_ROOT DEST), then pass "
                "--refs DEST or set PF_REFS")
    return None


def build_pair(runner: ModuleType, family: str, refs: str | None):
    """(official call, pixelforge call) on the same weights, each taking the case input (None for var)."""
    import pixelforge

    if family == "var":
        from pixelforge.generative.var import sample

        net = runner.build("var", refs=refs)
        vae = net.vae_proxy[0]
        ours = pixelforge.load_official(_copy(net.state_dict()), "var").eval()
        our_vae = pixelforge.load_official(_copy(vae.state_dict()), "var_vqvae").eval()
        s = VAR_SAMPLING

        def official(_):  # the official sampler always runs with its KV cache
            return runner.var_sample(net, batch=1, label=s["label"], seed=s["seed"], cfg=s["cfg"], top_k=s["top_k"],
                                     top_p=s["top_p"])

        def mine(_):
            return sample(ours, our_vae, 1, s["label"], cfg=s["cfg"], top_k=s["top_k"], top_p=s["top_p"],
                          generator=torch.Generator().manual_seed(s["seed"]), use_cache=True).images
        return official, mine
    net = runner.build(family, refs=refs)
    state = _copy((net.net_i if family == "rrformer" else net).state_dict())
    container = CONTAINERS[family]
    checkpoint = {container: state} if container else state
    if family in ("sret", "cct", "vim"):  # registered under the official factory names
        ours = pixelforge.create_model(runner.DEFAULTS[family], weights=checkpoint).eval()
    else:
        config = dict(runner.DEFAULTS[family])
        if family == "rrformer":  # the runner's seeded VGG-19 on both sides, as torchvision's vgg19 state dict
            config["vgg_weights"] = {f"features.{k}": v.clone()
                                     for k, v in net.vgg.vgg_pretrained_features.state_dict().items()}
        ours = pixelforge.load_official(checkpoint, family, config).eval()
    official = (lambda x: runner.sr_forward(net, x, family)) if family in ("hat", "craft", "cfsr") else net
    return official, ours


def case_input(case: Case) -> torch.Tensor | None:
    """The case's input: seeded uniform [0, 1) images of ``case.shape`` (None for VAR sampling)."""
    return torch.rand(case.shape, generator=torch.Generator().manual_seed(0)) if case.shape else None


def _copy(state: dict) -> dict:
    return {k: v.clone() for k, v in state.items()}


def _first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


# --------------------------------------------------------------------------------------------------- running
def header(threads: list[int]) -> dict:
    """What the figures depend on: CPU, its capability, torch, threads, kernel backend, precision."""
    from pixelforge.kernels import get_backend
    from pixelforge.kernels.dispatch import native_available

    backend = get_backend()
    native = native_available() if backend in ("auto", "native") else None
    return {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": threads, "kernels": backend, "native_kernels": native, "precision": "fp32",
            "load_average": os.getloadavg()[0]}


def run_case(case: Case, official: Callable, ours: Callable, threads: int, reps: int, clock: str, macs: int,
             tolerance: tuple[float, float]) -> dict:
    """Compare, then time the official forward, ours and a 2048² fp32 matmul in interleaved rounds at ``threads``
    (so the matmul rate is the machine's rate under the same load); one result row."""
    torch.set_num_threads(threads)
    x = case_input(case)
    matmul, matmul_macs, matmul_name = matmul_probe()
    with torch.inference_mode():
        torch.manual_seed(0)  # SReT_T draws its token shuffles from the global RNG, in eval mode too
        y_official = _first(official(x))
        torch.manual_seed(0)
        y_ours = _first(ours(x))
        max_diff, parity_ok = compare_outputs(y_ours, y_official, *tolerance)
        matmul()  # warm-up; the two forwards above were theirs
        t_official, t_ours, t_matmul = alternating_medians([lambda: official(x), lambda: ours(x), matmul], reps,
                                                           warmup=0)
    seconds = {"official": t_official, "pixelforge": t_ours}
    rate = {name: matmul_macs / s for name, s in t_matmul.items()}
    speedup = {name: t_official[name] / t_ours[name] for name in t_ours}
    fraction = {side: macs / t[clock] / rate[clock] for side, t in seconds.items()}
    met, verdict = evaluate_target(speedup[clock], fraction["pixelforge"], TARGETS[case.family], parity_ok)
    row = dict(family=case.family, case=case.label, threads=threads, clock=clock, reps=reps, macs=macs,
               official_s=t_official[clock], pixelforge_s=t_ours[clock], speedup=speedup[clock],
               official_fraction=fraction["official"], pixelforge_fraction=fraction["pixelforge"],
               matmul_macs_per_s=rate[clock], matmul=matmul_name, max_diff=max_diff, atol=tolerance[0], rtol=tolerance[1],
               parity_ok=parity_ok, target=TARGETS[case.family], met=met, verdict=verdict)
    for name in t_ours:  # both clocks, whichever the figures use
        row.update({f"official_{name}_s": t_official[name], f"pixelforge_{name}_s": t_ours[name],
                    f"speedup_{name}": speedup[name], f"matmul_macs_per_s_{name}": rate[name]})
    return row


def format_row(r: dict) -> str:
    other = "cpu" if r["clock"] == "wall" else "wall"
    return (f"{r['family']:8s} {r['case']:16s} t{r['threads']}  {r['macs'] / 1e9:6.2f} GMAC  "
            f"official {r['official_s'] * 1e3:8.1f} ms ({r['official_fraction']:4.0%})  "
            f"pixelforge {r['pixelforge_s'] * 1e3:8.1f} ms ({r['pixelforge_fraction']:4.0%})  "
            f"{r['speedup']:5.2f}x ({other} {r[f'speedup_{other}']:.2f}x)  "
            f"matmul ({r.get('matmul', 'torch.mm')}) {r['matmul_macs_per_s'] / 1e9:5.1f} GMAC/s  "
            f"max|diff| {r['max_diff']:.1e} (atol {r['atol']:g}, rtol {r['rtol']:g}) "
            f"{'PASS' if r['parity_ok'] else 'FAIL'}  target {r['target']:g}x or {MATMUL_FRACTION:.0%}: "
            f"{'met' if r['met'] else 'NOT met'} ({r['verdict']})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, help="timed calls per side (default 5, --quick 2)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the speed-ups and rates use: wall time or process CPU time (both are recorded)")
    p.add_argument("--quick", action="store_true", help="the smallest case of each family, 2 reps")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table of the results")
    p.add_argument("--json", type=Path, help="write the header and the result rows here")
    p.add_argument("--official-dir", type=Path, default=SHARED / "official", help="the shared official runner")
    p.add_argument("--parity-dir", type=Path, default=SHARED / "parity", help="fixtures giving the tolerances")
    p.add_argument("--refs", help="folder of the official clones (default: $PF_REFS, else .refs in this repo)")
    args = p.parse_args(argv)
    reps = args.reps or (2 if args.quick else 5)
    refs = args.refs or os.environ.get("PF_REFS") or (str(REPO / ".refs") if (REPO / ".refs").is_dir() else None)
    runner = load_runner(args.official_dir)

    info = header(args.threads)
    print(f"CPU {info['cpu']} (capability {info['capability']}), torch {info['torch']}, threads {args.threads}, "
          f"kernels {info['kernels']} (native built: {info['native_kernels']}), precision {info['precision']}, "
          f"{args.clock} clock, median of {reps}, load average {info['load_average']:.1f}", flush=True)
    print("per case: GMAC (flop counter, pixelforge side); official and pixelforge median ms (% of the fp32 matmul "
          "rate they reach); speed-up; the rate of the fastest fp32 GEMM here, measured in the same rounds", flush=True)
    rows = []
    for family in args.families:
        message = missing_clone(runner, family, refs, args.official_dir)
        if message:
            print(message, flush=True)
            continue
        fixture = args.parity_dir / PARITY_CASES[family] / "case.json"
        if not fixture.is_file():
            print(f"{family}: skipped, its tolerance fixture {fixture} is missing (pass --parity-dir)", flush=True)
            continue
        tolerance = parity_tolerance(json.loads(fixture.read_text()), PARITY_OUTPUT.get(family))
        try:
            official, ours = build_pair(runner, family, refs)
        except Exception as e:  # report and go on with the other families
            print(f"{family}: cannot build: {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        for case in CASES[family][:1] if args.quick else CASES[family]:
            torch.set_num_threads(args.threads[0])
            macs = count_macs(lambda: ours(case_input(case)))
            for t in args.threads:
                rows.append(run_case(case, official, ours, t, reps, args.clock, macs, tolerance))
                print(format_row(rows[-1]), flush=True)
        del official, ours
    if args.markdown:
        print()
        print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"header": info, "clock": args.clock, "reps": reps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

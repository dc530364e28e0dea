"""The pure helpers of tools/bench_vs_official.py and tools/bench_common.py: no timing, no official clones."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_vs_official as bvo  # noqa: E402
from bench_common import alternating_medians  # noqa: E402


def test_every_family_has_cases_a_target_and_a_tolerance_fixture():
    assert set(bvo.CASES) == set(bvo.TARGETS) == set(bvo.PARITY_CASES)
    assert {"hat", "craft", "cfsr", "rrformer", "sret", "cct", "vim", "var"} == set(bvo.CASES)
    assert all(case.family == family for family, cases in bvo.CASES.items() for case in cases)


def test_count_macs_of_a_tiny_conv_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    x = torch.rand(2, 3, 8, 8)
    conv = 2 * 8 * 8 * (8 * 3 * 3 * 3)  # batch · output pixels · (out channels · in channels · kernel)
    linear = 2 * 512 * 10
    assert bvo.count_macs(lambda: net(x)) == conv + linear


def test_parity_tolerance_takes_the_loosest_entry_for_the_output():
    case = {"atol": 1e-4, "rtol": 2e-4, "per_tensor_atol": {"C_img": 1e-3, "C_fhat": 5e-3, "C_logits_cfg_s*": 1e-2}}
    assert bvo.parity_tolerance(case, "img") == (1e-3, 2e-4)
    assert bvo.parity_tolerance(case) == (1e-4, 2e-4)
    assert bvo.parity_tolerance({"atol": 5e-5, "rtol": 1e-4}, "img") == (5e-5, 1e-4)


def test_compare_outputs_follows_assert_close():
    official = torch.tensor([1.0, 100.0])
    diff, ok = bvo.compare_outputs(official + torch.tensor([1e-5, 1e-3]), official, atol=2e-5, rtol=2e-5)
    assert ok and diff == pytest.approx(1e-3, rel=1e-3)  # the large element passes by rtol
    assert not bvo.compare_outputs(official + 1e-3, official, atol=2e-5, rtol=2e-5)[1]
    diff, ok = bvo.compare_outputs(torch.zeros(2, 3), torch.zeros(3, 2), atol=1, rtol=1)
    assert math.isnan(diff) and not ok


@pytest.mark.parametrize("speedup, fraction, parity_ok, met, words", [
    (4.2, 0.30, True, True, "4.20x >= 4x"),
    (2.0, 0.75, True, True, "75% >= 70% of matmul"),
    (2.0, 0.35, True, False, "short: 50% of 4x, 50% of 70%"),
    (9.0, 0.95, False, False, "outputs differ"),
])
def test_evaluate_target(speedup, fraction, parity_ok, met, words):
    assert bvo.evaluate_target(speedup, fraction, 4.0, parity_ok) == (met, words)


def test_markdown_table():
    row = dict(family="cfsr", case="x4 64²", threads=1, macs=1.22e9, official_s=0.1221, pixelforge_s=1.2345,
               speedup=0.099, matmul_macs_per_s=50.4e9, official_fraction=0.4, pixelforge_fraction=0.04,
               target=2.0, met=False, verdict="short", max_diff=4.1e-6, parity_ok=True)
    lines = bvo.markdown_table([row, dict(row, threads=2, met=True, parity_ok=False)]).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| family | case | threads | GMAC |")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(cells) == len(lines[0].strip("|").split("|")) == len(lines[1].strip("|").split("|"))
    assert cells == ["cfsr", "x4 64²", "1", "1.22", "122.1", "1,234.5", "0.10x", "50.4", "40%", "4%", "2x / 70%",
                     "no (short)", "4.1e-06", "PASS"]
    assert lines[3].endswith("| FAIL |") and "| yes (short) |" in lines[3]


def test_missing_clone_names_the_repository_and_the_remedy(tmp_path):
    def clone_dir(family, refs):
        raise FileNotFoundError(family)

    runner = SimpleNamespace(clone_dir=clone_dir, REPOS={"cfsr": "Aitical/CFSR"}, refs_dir=lambda refs: refs)
    message = bvo.missing_clone(runner, "cfsr", str(tmp_path), tmp_path / "official")
    assert message.startswith("cfsr: skipped, the clone of Aitical/CFSR is missing")
    assert str(tmp_path / "Aitical+CFSR") in message and "README.md" in message and "PF_REFS" in message
    present = SimpleNamespace(clone_dir=lambda family, refs: str(tmp_path))
    assert bvo.missing_clone(present, "cfsr", None, tmp_path) is None


def test_alternating_medians_interleaves_and_takes_medians_by_each_clock():
    now = {"t": 0.0, "calls": []}
    durations = {"a": [5.0, 1.0, 3.0, 2.0], "b": [10.0, 30.0, 20.0, 40.0]}  # first of each: the warm-up

    def step(name):
        now["calls"].append(name)
        now["t"] += durations[name][len([c for c in now["calls"] if c == name]) - 1]

    clock = lambda: now["t"]  # noqa: E731  (an injected clock: nothing is really timed)
    a, b = alternating_medians([lambda: step("a"), lambda: step("b")], 3, {"x": clock, "y": clock})
    assert now["calls"] == ["a", "b"] * 4
    assert a == {"x": 2.0, "y": 2.0} and b == {"x": 30.0, "y": 30.0}

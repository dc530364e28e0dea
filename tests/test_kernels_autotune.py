"""auto on CPU chooses native or the PyTorch path by measurement: with an injected timer (nothing real is timed),
it runs the faster, remembers the choice in memory and in the JSON file beside the library, measures again when
the key changes (another library, i.e. CPU / source / compiler; another shape class), and explicit backends still
force theirs."""
import json

import pytest
import torch

from pixelforge.kernels import dispatch, native, use_backend
from pixelforge.kernels.dispatch import measure_candidates, native_available
from pixelforge.kernels.scan import _race
from test_kernels_scan import _call, random_inputs

pytestmark = pytest.mark.skipif(not native_available(), reason="no working C compiler for the native kernels")


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """An empty cache home, no remembered choices, a fake timer (set ``times``) and a log of what ran."""

    class Tuner:
        times = {"native": 1.0, "torch": 2.0}
        measured: list[tuple[str, ...]] = []  # candidate names of each measurement
        ran: list[str] = []  # backends the op ran, measurements excluded

        def choices(self) -> dict:
            files = list((tmp_path / "home" / "kernels").glob("*.auto.json"))
            return json.loads(files[0].read_text()) if files else {}

    t = Tuner()
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PIXELFORGE_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_choices", {})
    monkeypatch.setattr(dispatch, "measure_candidates",
                        lambda cands: t.measured.append(tuple(sorted(cands))) or dict(t.times))
    real_native = native.selective_scan_native
    monkeypatch.setattr("pixelforge.kernels.scan.selective_scan_native",
                        lambda *a: t.ran.append("native") or real_native(*a))
    real_resolve = dispatch.resolve_backend

    def resolve(*a, **kw):
        name = real_resolve(*a, **kw)
        if name == "torch":
            t.ran.append("torch")
        return name

    monkeypatch.setattr("pixelforge.kernels.scan.resolve_backend", resolve)
    return t


def _infer(inp, **kw):
    with torch.no_grad():
        return _call(inp, delta_softplus=True, **kw)


@pytest.mark.parametrize("faster", ["native", "torch"])
def test_auto_picks_the_faster_and_caches_it(tuner, faster):
    tuner.times = {"native": 1.0, "torch": 2.0} if faster == "native" else {"native": 3.0, "torch": 0.5}
    inp = random_inputs(1, 16, 4, 12, seed=0)
    out = _infer(inp)
    assert tuner.measured == [("native", "torch")] and tuner.ran == [faster]
    (key, entry), = tuner.choices().items()
    assert entry["choice"] == faster and json.loads(key)[0] == "selective_scan"
    # the same shape class again (other sizes in the same buckets, reverse): remembered, not measured
    _infer(random_inputs(1, 14, 4, 10, seed=1), reverse=True)
    assert tuner.measured == [("native", "torch")] and tuner.ran == [faster, faster]
    # another process: reads the file instead of measuring
    dispatch._choices.clear()
    torch.testing.assert_close(_infer(inp), out, rtol=0, atol=0)
    assert len(tuner.measured) == 1 and tuner.ran == [faster] * 3


def test_a_changed_key_measures_again(tuner, monkeypatch):
    inp = random_inputs(1, 16, 4, 12, seed=0)
    _infer(inp)
    assert len(tuner.measured) == 1
    _infer(random_inputs(2, 16, 4, 12, seed=0))  # b·d in another bucket
    _infer(random_inputs(1, 16, 4, 40, seed=0))  # L in another bucket
    _infer(random_inputs(1, 16, 5, 12, seed=0))  # another state size
    _infer({k: (None if v is None else v.half()) for k, v in inp.items()})  # another dtype
    assert len(tuner.measured) == 5 and len(tuner.choices()) == 5
    # another CPU, kernel source or compiler: another library name, another choices file
    tuner.times = {"native": 5.0, "torch": 1.0}
    real = native.library_path()
    monkeypatch.setattr(dispatch, "library_path", lambda: real.with_name("pf_scan_0000000000000000.so"))
    _infer(inp)
    assert len(tuner.measured) == 6 and tuner.ran[-1] == "torch"
    files = sorted(p.name for p in dispatch.cache_dir().glob("*.auto.json"))
    assert files == sorted([real.stem + ".auto.json", "pf_scan_0000000000000000.auto.json"])


def test_explicit_backends_force_theirs(tuner):
    inp = random_inputs(1, 16, 4, 12, seed=0)
    tuner.times = {"native": 3.0, "torch": 1.0}
    _infer(inp)
    assert tuner.ran == ["torch"]
    with use_backend("native"):
        _infer(inp)
    with use_backend("torch"):
        _infer(inp)
    assert tuner.ran == ["torch", "native", "torch"] and len(tuner.measured) == 1


def test_training_calls_are_measured_separately(tuner):
    """A call that needs gradients races forward + backward under its own key; with a fixed B (no native
    backward) it measures nothing and runs the PyTorch path."""
    inp = random_inputs(1, 16, 4, 12, seed=0)
    _infer(inp)
    leaf = {k: (v.clone().requires_grad_(True) if k == "u" else v) for k, v in inp.items()}
    _call(leaf, delta_softplus=True).sum().backward()
    assert len(tuner.measured) == 2 and tuner.ran == ["native", "native"] and leaf["u"].grad is not None
    keys = sorted(tuner.choices())
    assert len(keys) == 2 and sum("forward+backward" in k for k in keys) == 1
    fixed = random_inputs(1, 16, 4, 12, "fixed", "g1", seed=0)
    _call({**fixed, "u": fixed["u"].requires_grad_(True)}, delta_softplus=True).sum().backward()
    assert len(tuner.measured) == 2 and tuner.ran[-1] == "torch"


def test_an_unreadable_choices_file_is_measured_again(tuner):
    inp = random_inputs(1, 16, 4, 12, seed=0)
    dispatch.cache_dir().mkdir(parents=True)
    path = dispatch.cache_dir() / (native.library_path().stem + ".auto.json")
    path.write_text("{not json")
    _infer(inp)
    assert len(tuner.measured) == 1 and len(tuner.choices()) == 1
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("layouts", [("g1", "g1"), ("fixed", "var3"), ("grouped", "fixed")])
def test_race_candidates_run_the_op_on_a_prefix(layouts, monkeypatch):
    """Both candidates compute the same scan, over the first positions of the call."""
    monkeypatch.setattr("pixelforge.kernels.scan._RACE_ELEMS", 1)  # the shortest prefix: 64 positions
    inp = random_inputs(2, 8, 4, 100, *layouts, groups=2, seed=4)
    args = tuple(inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    cands = _race(args, True, False, False).candidates()
    with torch.no_grad():
        (nat, nat_last), (ref, ref_last) = cands["native"](), cands["torch"]()
        with use_backend("torch"):
            prefix = {k: (v[..., :64] if v is not None and v.dim() >= 3 else v) for k, v in inp.items()}
            full = _call(prefix, delta_softplus=True)
    assert nat.shape == (2, 8, 64)
    torch.testing.assert_close(nat, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(nat_last, ref_last, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ref, full, rtol=0, atol=0)


@pytest.mark.parametrize("layouts", [("g1", "g1"), ("var3", "grouped")])
def test_training_race_candidates_leave_the_inputs_alone(layouts):
    """The training race runs forward + backward of both candidates on detached prefixes: no gradient reaches the
    call's own tensors and no graph is kept."""
    inp = random_inputs(2, 8, 4, 100, *layouts, groups=2, seed=4)
    args = tuple(None if v is None else v.clone().requires_grad_(True) for v in
                 (inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")))
    cands = _race(args, True, False, True).candidates()
    assert sorted(cands) == ["native", "torch"]
    for fn in cands.values():
        assert fn() is None
    assert all(x is None or x.grad is None for x in args)


def test_measure_candidates_calls_each_in_turn():
    calls = []
    times = measure_candidates({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2)
    assert calls == ["a", "b"] * 3 and set(times) == {"a", "b"} and all(t >= 0 for t in times.values())

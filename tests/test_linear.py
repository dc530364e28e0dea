"""layers.linear chooses oneDNN or the plain ops by measurement: with an injected timer (nothing real is timed) it
runs the faster, remembers the choice in memory and in the CPU's choices file, measures again when the key changes
(shape class, threads, CPU), and PIXELFORGE_ONEDNN / the torch kernel backend force theirs. Both paths compute the
same linear, linear+GELU, linear_add, conv1x1 and mlp_residual."""
import json

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from pixelforge.kernels import dispatch, use_backend
from pixelforge.layers import linear as L

pytestmark = pytest.mark.skipif(not L._ONEDNN, reason="no oneDNN linear in this PyTorch / on this CPU")


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """An empty cache home, no remembered choices, a fake timer (set ``times``) and a count of plain F.linear
    calls (the oneDNN path makes none)."""

    class Tuner:
        times = {"onednn": 1.0, "torch": 2.0}
        measured: list[tuple[str, ...]] = []
        plain = 0

        def choices(self) -> dict:
            files = list((tmp_path / "home" / "kernels").glob("cpu_*.auto.json"))
            return json.loads(files[0].read_text()) if files else {}

    t = Tuner()
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path / "home"))
    for var in ("PIXELFORGE_KERNELS", "PIXELFORGE_ONEDNN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dispatch, "_choices", {})
    monkeypatch.setattr(dispatch, "measure_candidates",
                        lambda cands: t.measured.append(tuple(sorted(cands))) or dict(t.times))
    real_linear = F.linear

    def counted(*a, **kw):
        t.plain += 1
        return real_linear(*a, **kw)

    monkeypatch.setattr(F, "linear", counted)
    return t


def _params(rows, k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g) / k ** 0.5, torch.randn(n, generator=g)


@pytest.mark.parametrize("faster", ["onednn", "torch"])
def test_auto_picks_the_faster_and_caches_it(tuner, faster):
    tuner.times = {"onednn": 1.0, "torch": 2.0} if faster == "onednn" else {"onednn": 3.0, "torch": 0.5}
    x, w, b = _params(100, 24, 40)
    with torch.no_grad():
        out = L.linear(x, w, b)
        assert tuner.measured == [("onednn", "torch")] and tuner.plain == (faster == "torch")
        (key, entry), = tuner.choices().items()
        assert entry["choice"] == faster and json.loads(key)[:4] == ["linear", "rows<=128", "in<=32", "out<=64"]
        # the same shape class (other sizes in the same buckets), the fused variants: remembered, not measured
        x2, w2, b2 = _params(70, 30, 33, seed=1)
        L.linear(x2, w2, b2, "gelu")
        L.linear_add(x2, w2, b2, torch.randn(70, 33))
        assert len(tuner.measured) == 1 and tuner.plain == 3 * (faster == "torch")
        # another process: reads the file instead of measuring
        dispatch._choices.clear()
        torch.testing.assert_close(L.linear(x, w, b), out, rtol=0, atol=0)
    assert len(tuner.measured) == 1 and tuner.plain == 4 * (faster == "torch")


def test_a_changed_key_measures_again(tuner, monkeypatch):
    x, w, b = _params(100, 24, 40)
    with torch.no_grad():
        L.linear(x, w, b)
        L.linear(torch.randn(200, 24), w, b)  # rows in another bucket
        L.linear(torch.randn(100, 48), torch.randn(40, 48))  # in features in another bucket
        L.linear(x, torch.randn(80, 24))  # out features in another bucket
        assert len(tuner.measured) == 4 and len(tuner.choices()) == 4
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(threads + 1)
            L.linear(x, w, b)
        finally:
            torch.set_num_threads(threads)
        assert len(tuner.measured) == 5 and len(tuner.choices()) == 5
        # another CPU: another choices file, measured again
        tuner.times = {"onednn": 5.0, "torch": 1.0}
        monkeypatch.setattr(dispatch, "cpu_signature", lambda: "model name: another CPU")
        plain = tuner.plain
        L.linear(x, w, b)
    assert len(tuner.measured) == 6 and tuner.plain == plain + 1
    assert len(list(dispatch.cache_dir().glob("cpu_*.auto.json"))) == 2


def test_forced_choices(tuner, monkeypatch):
    x, w, b = _params(100, 24, 40)
    with torch.no_grad():
        tuner.times = {"onednn": 3.0, "torch": 1.0}
        monkeypatch.setenv("PIXELFORGE_ONEDNN", "1")
        L.linear(x, w, b)
        assert tuner.plain == 0
        with use_backend("torch"):  # the PyTorch reference is plain, whatever else is set
            L.linear(x, w, b)
            assert tuner.plain == 1 and not L.onednn_linear_available()
        monkeypatch.setenv("PIXELFORGE_KERNELS", "torch")
        L.linear(x, w, b)
        assert tuner.plain == 2
        monkeypatch.delenv("PIXELFORGE_KERNELS")
        tuner.times = {"onednn": 1.0, "torch": 3.0}
        monkeypatch.setenv("PIXELFORGE_ONEDNN", "0")
        L.linear(x, w, b)
    assert tuner.plain == 3 and tuner.measured == []


def test_autograd_measures_nothing(tuner):
    x, w, b = _params(100, 24, 40)
    w.requires_grad_(True)
    L.linear(x, w, b, "gelu").sum().backward()
    assert tuner.measured == [] and tuner.plain == 1 and w.grad is not None


def _both(fn):
    """fn() on the oneDNN path and on the plain path (each checked to have run), under no_grad."""
    outs = []
    for force, plain in (("1", False), ("0", True)):
        with pytest.MonkeyPatch.context() as mp, torch.no_grad():
            mp.setenv("PIXELFORGE_ONEDNN", force)
            mp.delenv("PIXELFORGE_KERNELS", raising=False)
            calls = []
            mp.setattr(F, "linear", lambda *a, calls=calls, real=F.linear, **kw: calls.append(1) or real(*a, **kw))
            outs.append(fn())
            assert bool(calls) == plain
    return outs


def test_paths_compute_the_same():
    x, w, b = _params(150, 24, 40)
    other = torch.randn(150, 40)
    for act in (None, "gelu", "relu"):
        one, plain = _both(lambda act=act: L.linear(x, w, b, act))
        torch.testing.assert_close(one, plain, rtol=1e-5, atol=1e-5)
    one, plain = _both(lambda: L.linear_add(x, w, b, other))
    torch.testing.assert_close(one, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, F.linear(x, w, b) + other, rtol=0, atol=0)

    conv = nn.Conv2d(24, 40, 1)
    img = torch.randn(2, 24, 9, 7)
    with torch.no_grad():
        ref = conv(img)
    for act in (None, "gelu"):
        one, plain = _both(lambda act=act: L.conv1x1(img, conv, act))
        expect = ref if act is None else F.gelu(ref)
        torch.testing.assert_close(one, expect, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain, expect, rtol=1e-5, atol=1e-5)

    mlp = Mlp(24, 64, 40).eval()
    res = torch.randn(150, 40)
    with torch.no_grad():
        ref = res + mlp(x)
    one, plain = _both(lambda: L.mlp_residual(mlp, x, res))
    torch.testing.assert_close(one, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, ref, rtol=0, atol=0)


def test_race_candidates_compute_the_linear_on_fewer_rows(monkeypatch):
    monkeypatch.setattr(L, "_RACE_MACS", 24 * 40 * 10)  # ten rows
    x, w, b = _params(150, 24, 40)
    race = L._race(x, w, b)
    assert race.shape_class == ("rows<=256", "in<=32", "out<=64", "torch.float32")
    with torch.no_grad():
        cands = race.candidates()
        one, plain = cands["onednn"](), cands["torch"]()
    assert one.shape == (10, 40)
    torch.testing.assert_close(one, plain, rtol=1e-5, atol=1e-5)

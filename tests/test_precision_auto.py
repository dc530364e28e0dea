"""Precision ``auto``: capability, injected timings, the accuracy bound, the cache; int8; the commands' defaults."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelforge.infer import precision as P


class Conv1x1(nn.Module):
    """An image model (B, 3, H, W) → (B, 3, H, W): one 1x1 convolution (autocast runs it in bf16)."""

    upscale = 1

    def __init__(self, weight: torch.Tensor, bias: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(weight.view(3, 3, 1, 1))
            self.conv.bias.fill_(bias)

    def forward(self, x):
        return self.conv(x)


def _fake_timer(seconds: dict[str, float]):
    calls = []

    def timer(precision, fn):
        calls.append(precision)
        return seconds[precision]
    return timer, calls


def _no_timer(precision, fn):
    raise AssertionError("timed although no measurement was due")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with native bf16, whatever this machine has (the choice logic is what is tested)."""
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})


def test_capability_decides_the_candidates(monkeypatch):
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "fma"})
    ok, why = P.bf16_capability("cpu")
    assert not ok and "no native bf16" in why
    choice = P.choose_precision(Conv1x1(torch.eye(3)), torch.rand(1, 3, 8, 8), "m", "cpu", timer=_no_timer,
                                cache=None)
    assert choice.precision == "fp32" and choice.speedup is None and "no native bf16" in choice.reason
    for flags in ({"avx512_bf16"}, {"amx_bf16"}, {"bf16"}):  # x86 AVX-512 BF16, AMX, ARM
        monkeypatch.setattr(P, "_cpu_flags", lambda flags=flags: flags)
        assert P.bf16_capability("cpu")[0]


def test_auto_picks_the_faster_and_caches_it(tmp_path, bf16_cpu):
    model, probe, cache = Conv1x1(torch.eye(3) * 0.5, 0.25), P.probe_input(3, 16), tmp_path / "cache.json"
    timer, calls = _fake_timer({"fp32": 2.0, "bf16": 1.0})
    choice = P.choose_precision(model, probe, "m", "cpu", timer=timer, cache=cache)
    assert choice.precision == "bf16" and choice.speedup == pytest.approx(2.0)
    assert choice.quality >= P.QUALITY_BOUNDS["image"]
    assert sorted(calls) == ["bf16"] * 3 + ["fp32"] * 3 and calls[:2] == ["fp32", "bf16"]  # alternated
    assert str(choice).startswith("precision auto → bf16 (measured 2.00x faster, ") and "dB vs fp32" in str(choice)
    again = P.choose_precision(model, probe, "m", "cpu", timer=_no_timer, cache=cache)  # no timing: cached
    assert again.precision == "bf16" and again.speedup == choice.speedup and again.reason.endswith("cached")
    entry, = json.loads(cache.read_text()).values()
    assert entry["precision"] == "bf16"
    # other weights (a new fingerprint) are measured again
    slower, _ = _fake_timer({"fp32": 1.0, "bf16": 1.05})
    other = P.choose_precision(Conv1x1(torch.eye(3) * 0.4, 0.3), probe, "m", "cpu", timer=slower, cache=cache)
    assert other.precision == "fp32" and "not faster" in other.reason
    assert len(json.loads(cache.read_text())) == 2


def test_auto_keeps_fp32_when_bf16_is_inaccurate(bf16_cpu):
    # out = 0.5 + 50·(x0 − x1): bf16 rounding of x0 and x1 (2^-9 relative) is amplified 50 times
    weight = torch.zeros(3, 3)
    weight[:, 0], weight[:, 1] = 50.0, -50.0
    x = torch.rand(1, 1, 16, 16) * 0.5 + 0.25
    probe = torch.cat([x + 1e-3, x, x], dim=1)
    timer, _ = _fake_timer({"fp32": 3.0, "bf16": 1.0})
    choice = P.choose_precision(Conv1x1(weight, 0.5), probe, "m", "cpu", timer=timer, cache=None)
    assert choice.precision == "fp32" and choice.speedup == pytest.approx(3.0)
    assert choice.quality < P.QUALITY_BOUNDS["image"] and "below the bound 50 dB" in choice.reason


def test_output_quality():
    a = torch.rand(2, 3, 8, 8) * 0.9
    assert P.output_quality(a, a) == float("inf")
    assert P.output_quality(a, a + 0.01) == pytest.approx(40.0, abs=1e-3)  # PSNR of a uniform 0.01 error
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    assert P.output_quality(logits, logits.flip(-1), "logits") == 0.0
    assert P.output_quality(logits, logits * 2, "logits") == 1.0
    with pytest.raises(ValueError, match="image, logits or gradient"):
        P.output_quality(a, a, "tokens")


def test_explicit_precisions_pass_through():
    model = Conv1x1(torch.eye(3))
    for precision in ("fp32", "bf16", "fp16"):
        same, choice = P.prepare_model(model, precision, "cpu", "m", timer=_no_timer)
        assert same is model and choice.precision == precision and choice.reason == "requested"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        P.prepare_model(model, "fp8", "cpu", "m")


class DirectWeight(nn.Module):
    """A Linear called as a module, and one whose weight is read directly (F.linear): only the first can be int8."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.qkv = nn.Linear(16, 10)

    def forward(self, x):
        return F.linear(self.fc(x), self.qkv.weight, self.qkv.bias)


def test_int8_quantizes_the_linear_layers_it_can():
    torch.manual_seed(0)
    model, probe = DirectWeight().eval(), torch.randn(32, 16)
    quantized, choice = P.prepare_model(model, "int8", "cpu", "m", probe=probe, output="logits")
    assert quantized.int8_layers == 1  # fc; qkv's weight is read directly by F.linear and stays float
    assert choice.precision == "int8" and choice.quality >= P.QUALITY_BOUNDS["logits"] and choice.warning is None
    out = quantized(probe)
    assert not torch.equal(out, model(probe))
    torch.testing.assert_close(out, model(probe), atol=0.05, rtol=0)
    assert not hasattr(model, "int8_layers") and model.fc.forward.__func__ is nn.Linear.forward  # original untouched


def test_int8_is_torch_ao_dynamic_quantization_on_every_path():
    """The layer called, its weight through layers.linear (the fused inference paths), and torch.ao's
    quantize_dynamic give the same int8 result."""
    from torch.ao.quantization import quantize_dynamic

    from pixelforge.layers.linear import linear, linear_add

    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(24, 40)).eval(), torch.randn(3, 5, 24)
    reference = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)(x)
    quantized = P.quantize_int8(model)
    fc = quantized[0]
    with torch.inference_mode():
        torch.testing.assert_close(fc(x), reference, atol=0, rtol=0)
        torch.testing.assert_close(linear(x, fc.weight, fc.bias), reference, atol=0, rtol=0)
        torch.testing.assert_close(linear(x, fc.weight, fc.bias, "gelu"), F.gelu(reference), atol=0, rtol=0)
        torch.testing.assert_close(linear_add(x, fc.weight, fc.bias, x[..., :1]), reference + x[..., :1])
        assert not torch.equal(linear(x, model[0].weight, model[0].bias), reference)  # the original stays float


def test_int8_says_when_it_costs_accuracy_or_does_nothing(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 2)).eval()
    with torch.no_grad():  # two near-tied classes: int8 rounding flips many top-1 answers
        model[0].weight.copy_(torch.randn(1, 64).expand(2, 64) + torch.randn(2, 64) * 1e-3)
    _, choice = P.prepare_model(model, "int8", "cpu", "tied", probe=torch.randn(64, 64), output="logits")
    assert choice.warning is not None and "costs accuracy on tied: top-1 agreement" in choice.warning
    P.announce(choice, "pixelforge classify")
    P.announce(choice, "pixelforge classify")  # once per process
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("pixelforge classify: warning: precision int8 costs accuracy")
    _, conv_only = P.prepare_model(Conv1x1(torch.eye(3)), "int8", "cpu", "convs", probe=torch.rand(1, 3, 8, 8))
    assert "changes nothing on convs" in conv_only.warning
    with pytest.raises(ValueError, match="CPU only"):
        P.prepare_model(model, "int8", "meta", "m", probe=torch.randn(2, 64))


def test_probe_input():
    probe = P.probe_input(3, 32, batch=3)
    assert probe.shape == (3, 3, 32, 32) and 0 <= probe.min() and probe.max() <= 1
    assert not torch.equal(probe[0], probe[1])  # different crops
    assert P.probe_input(1, (24, 40)).shape == (1, 1, 24, 40)


def test_every_command_defaults_to_auto():
    from pixelforge.cli import build_parser

    parser = build_parser()
    for argv in (["upscale", "a.png", "-o", "o"], ["dereflect", "a.png", "-o", "o"], ["eval", "--model", "m",
                 "--data", "d"], ["classify", "a.png", "--model", "m"], ["generate", "--model", "m"]):
        args = parser.parse_args(argv)
        assert args.precision == "auto", argv
        assert parser.parse_args(argv + ["--precision", "int8"]).precision == "int8"


def test_eval_json_records_the_choice(tmp_path, capsys, monkeypatch):
    from test_upscale_cli import tiny_weights

    from pixelforge.cli import main
    from pixelforge.data.image_io import write_image

    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(P, "_ANNOUNCED", set())  # an earlier test in this process may have said the same
    tiny_weights(tmp_path / "w.safetensors", "cfsr_x2")
    for folder, size in (("LR", 12), ("HR", 24)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        write_image(tmp_path / "data" / folder / "a.png", torch.rand(3, size, size))
    argv = ["eval", "--model", "cfsr_x2", "--weights", str(tmp_path / "w.safetensors"), "--data",
            str(tmp_path / "data"), "--json", str(tmp_path / "s.json"), "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    choice = report["precision_choice"]
    assert choice["requested"] == "auto" and report["precision"] == choice["precision"] in ("fp32", "bf16")
    assert f"pixelforge eval: precision auto → {choice['precision']} (" in capsys.readouterr().err
    assert main(argv + ["--precision", "fp32"]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["precision"] == "fp32" and report["precision_choice"]["reason"] == "requested"
    assert "precision" not in capsys.readouterr().err  # an explicit choice is not announced


def test_training_auto_measures_a_step_and_leaves_no_trace(tmp_path, bf16_cpu):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 1)).train()
    batch = (torch.randn(32, 8), torch.randn(32, 1))
    model[0].weight.grad = torch.ones_like(model[0].weight)

    def step(m, b):
        return F.mse_loss(m(b[0]), b[1])

    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    timer, calls = _fake_timer({"fp32": 2.0, "bf16": 1.0})
    choice = P.choose_training_precision(model, batch, step, "mlp", "cpu", timer=timer, cache=tmp_path / "c.json")
    assert choice.precision == "bf16" and "gradient cosine" in choice.reason
    assert choice.quality >= P.QUALITY_BOUNDS["gradient"] and len(calls) == 6
    assert torch.equal(torch.get_rng_state(), rng)  # dropout masks drawn from a forked RNG
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # BatchNorm statistics restored
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight)) and model[3].weight.grad is None
    cached = P.choose_training_precision(model, batch, step, "mlp", "cpu", timer=_no_timer, cache=tmp_path / "c.json")
    assert cached.precision == "bf16" and cached.reason.endswith("cached")


def test_a_damaged_cache_is_measured_again(tmp_path, bf16_cpu):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    timer, calls = _fake_timer({"fp32": 2.0, "bf16": 1.0})
    model, probe = Conv1x1(torch.eye(3) * 0.5, 0.25), P.probe_input(3, 16)
    assert P.choose_precision(model, probe, "m", "cpu", timer=timer, cache=cache).precision == "bf16"
    key, = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: {"precision": "bf16"}}))  # an entry of another layout
    assert P.choose_precision(model, probe, "m", "cpu", timer=timer, cache=cache).precision == "bf16"
    assert len(calls) == 12  # measured twice

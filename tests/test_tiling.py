"""The tiled runner: exact blending of pointwise models, bounded tile size, padding, precision, and real CFSR seams."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pixelforge
from conftest import DATA, parity_case
from pixelforge.data import read_image
from pixelforge.infer import NonFiniteOutputError, autocast, run_tiled, tile_starts
from pixelforge.infer.tiling import MIN_TILE, plan_tiles


class PointwiseUpscaler(nn.Module):
    """A per-pixel model (nearest upsampling, then a 1x1 conv): tiling must not change its output at all.

    Records the largest input it saw and, when ``multiple`` > 1, insists on sizes that are multiples of it.
    """

    def __init__(self, upscale: int = 2, multiple: int = 1, out_chans: int = 3):
        super().__init__()
        self.upscale, self.spatial_multiple = upscale, multiple
        self.proj = nn.Conv2d(3, out_chans, 1)
        self.largest = (0, 0)

    def forward(self, x):
        h, w = x.shape[-2:]
        assert h % self.spatial_multiple == 0 and w % self.spatial_multiple == 0, (h, w)
        self.largest = max(self.largest, (h, w))
        return self.proj(F.interpolate(x, scale_factor=self.upscale, mode="nearest"))


def test_tile_starts_cover_with_overlap():
    for size in range(1, 70):
        for tile, overlap in [(8, 0), (8, 3), (16, 7), (64, 32)]:
            starts = tile_starts(size, tile, overlap)
            length = min(tile, size)
            assert starts[0] == 0 and starts[-1] + length == size
            assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_pointwise_model_is_unchanged_by_tiling(scale):
    torch.manual_seed(0)
    model = PointwiseUpscaler(scale)
    x = torch.rand(2, 3, 37, 50)
    ref = model(x).detach()
    for tile, overlap in [(16, 0), (16, 8), (17, 5), (20, 10), (64, 8)]:
        out = run_tiled(model, x, tile=tile, overlap=overlap)
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)
    assert torch.equal(run_tiled(model, x), ref)  # whole image: exactly model(x)


def test_tiles_are_bounded_and_padded_to_the_spatial_multiple():
    model = PointwiseUpscaler(2, multiple=8)
    x = torch.rand(1, 3, 45, 70)
    ref = model(F.pad(x, (0, 2, 0, 3), mode="reflect"))[..., :90, :140].detach()
    model.largest = (0, 0)
    out = run_tiled(model, x, tile=20, overlap=6)  # tile rounded up to 24
    assert model.largest == (24, 24)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)
    small = x[..., :2, :3]  # too small to reflect-pad to 8: replicate
    ref = model(F.pad(small, (0, 5, 0, 6), mode="replicate"))[..., :4, :6].detach()
    torch.testing.assert_close(run_tiled(model, small), ref)


def test_argument_errors():
    model = PointwiseUpscaler()
    with pytest.raises(ValueError, match="overlap"):
        run_tiled(model, torch.rand(1, 3, 8, 8), tile=8, overlap=8)
    with pytest.raises(ValueError, match="zero-size"):
        run_tiled(model, torch.rand(1, 3, 0, 8))
    with pytest.raises(ValueError, match="precision"):
        run_tiled(model, torch.rand(1, 3, 8, 8), precision="fp8")


def test_reduced_precision():
    torch.manual_seed(0)
    model = pixelforge.create_model("cfsr_x2", embed_dim=8, depths=(1,)).eval()
    x = torch.rand(1, 3, 12, 14)
    ref = run_tiled(model, x)
    out = run_tiled(model, x, precision="bf16")
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.05
    with autocast("bf16", "cpu"):
        assert model.head.upsample[0](torch.rand(1, 8, 4, 4)).dtype == torch.bfloat16
    overflow = nn.Conv2d(3, 3, 1)  # beyond fp16's range (65504), within bf16's
    nn.init.constant_(overflow.weight, 1e5)
    with pytest.warns(UserWarning, match="NaN/inf in fp16; such tiles are redone in bf16") as caught:
        out = run_tiled(overflow, x, tile=16, overlap=4, precision="fp16")  # 1x1 conv: tiles blend exactly
    assert len(caught) == 1  # one warning per run, not per tile
    torch.testing.assert_close(out, run_tiled(overflow, x, precision="bf16"))
    nn.init.constant_(overflow.bias, float("nan"))  # non-finite in every precision: never silent
    with pytest.raises(NonFiniteOutputError, match="fp16.*bf16 or fp32"), pytest.warns(UserWarning):
        run_tiled(overflow, x, precision="fp16")


def test_fp16_non_finite_tiles_redone_in_bf16_then_fp32():
    """An injected non-finite output: the model returns inf under fp16 autocast, NaN under bf16, finite in fp32."""
    class Fragile(nn.Module):
        def forward(self, x):
            if torch.is_autocast_enabled("cpu"):
                bad = float("inf") if torch.get_autocast_dtype("cpu") == torch.float16 else float("nan")
                return x * bad
            return x * 2

    x = torch.rand(1, 3, 12, 14)
    with pytest.warns(UserWarning, match="redone in fp32"):
        out = run_tiled(Fragile(), x, precision="fp16")
    assert torch.equal(out, x * 2)


def test_cfsr_tiled_matches_whole_image():
    """Released CFSR x4 weights: 64-px tiles with 32 px overlap stay within 1/255 of whole-image inference."""
    case, _, folder = parity_case("cfsr_official_x4")
    model = pixelforge.load_official(folder / "checkpoint.pth", "cfsr", case["official"]["kwargs"])
    x = read_image(DATA / "sr-bench/Set14/x4/img_005_SRF_4_LR.png", channels=3).pixels[None, :, :96, :80]
    ref = run_tiled(model, x)
    out = run_tiled(model, x, tile=64, overlap=32)  # 2x2 tiles
    assert (out - ref).abs().max() < 1 / 255


def test_overlap_defaults_to_the_models_recommendation():
    """Without an explicit overlap the model's ``tile_overlap`` is used (capped at half the tile); HAT asks for 80."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)).eval()
    x = torch.rand(1, 3, 40, 44)
    model.tile_overlap = 6
    default = run_tiled(model, x, tile=16)
    assert torch.equal(default, run_tiled(model, x, tile=16, overlap=6))
    assert not torch.equal(default, run_tiled(model, x, tile=16, overlap=4))
    with pytest.raises(ValueError, match="overlap"):
        run_tiled(model, x, tile=16, overlap=100)
    assert pixelforge.create_model("hat_s_x4", pretrained=False).tile_overlap == 80
    assert pixelforge.create_model("cfsr_x4", pretrained=False).tile_overlap == 32


class _Counting(nn.Module):
    """A pointwise model that counts its calls; asks for 32 px of overlap, like CFSR."""

    tile_overlap = 32

    def __init__(self, multiple: int = 1):
        super().__init__()
        self.spatial_multiple, self.calls = multiple, 0
        self.proj = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        self.calls += 1
        return self.proj(x)


def test_small_tiles_never_collapse_the_stride():
    """A tile at or below the model's overlap once advanced 1 px at a time (9,409 calls on 128x128 with 32-px
    tiles); the overlap is now capped at half the tile, a tile below the minimum is raised, and a warning says so."""
    model = _Counting()
    x = torch.rand(1, 3, 128, 128)
    ref = model(x).detach()
    model.calls = 0
    with pytest.warns(UserWarning, match="overlap 32 reduced to 16 for tile 32"):
        out = run_tiled(model, x, tile=32)
    assert model.calls == 7 * 7  # starts 0, 16, ..., 96 on each axis
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)
    model.calls = 0
    with pytest.warns(UserWarning, match=f"tile 2 raised to {MIN_TILE}"):
        run_tiled(model, x, tile=2, overlap=1)
    assert MIN_TILE == 16 and model.calls == 9 * 9  # starts 0, 15, ..., 105, 112
    with pytest.warns(UserWarning, match="the tile overlap 20 reduced to 16"):
        run_tiled(model, x, tile=32, overlap=20)  # an explicit overlap is capped the same way
    assert plan_tiles(_Counting(16), 20, None) == (32, 16, [  # rounded up to the model's multiple, then capped
        "the model's tile overlap 32 reduced to 16 for tile 32 (tiles must advance by at least half their size)"])
    assert plan_tiles(_Counting(16), 64, None) == (64, 32, [])
    assert plan_tiles(_Counting(), None, 5) == (None, 0, [])


def test_output_too_large_for_memory_fails_before_the_model_runs(monkeypatch):
    """The full-size accumulator is sized before any tile runs; when it does not fit, the error names the output
    size (an out-of-memory there used to surface after the first tile, as "try a smaller --tile")."""
    import pixelforge.infer.tiling as tiling

    model = _Counting()
    monkeypatch.setattr(tiling, "_available_memory", lambda: 100_000)
    with pytest.raises(tiling.OutputTooLargeError, match=r"the 128x96 output needs 0\.0 GiB .*smaller tile does not"):
        run_tiled(model, torch.rand(1, 3, 96, 128), tile=32, overlap=8)  # 3·96·128·4 = 147 kB
    assert model.calls == 0
    run_tiled(model, torch.rand(1, 3, 64, 64), tile=32, overlap=8)  # 49 kB fits
    assert model.calls == 9

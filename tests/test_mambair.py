"""MambaIR against the official forward (built from the clone with mamba_ssm's reference scan, else its recording in
tests/data/mambair), the released layouts, the four-direction scan on the shared op, tiling, checkpointing and the
restoration head."""
from pathlib import Path

import pytest
import torch

import pixelforge
import pixelforge.vision.mambair as mambair_mod
from conftest import DATA
from mambair_official import RELEASED, SMALL, layout, missing, official_case, recorded_case, recorded_layouts
from pixelforge.data import read_image
from pixelforge.infer import run_tiled
from pixelforge.kernels import use_backend

# Recorded by `python tests/mambair_official.py --record tests/data/mambair`: read when the clones are absent (CI);
# with the clones, the tests build the official model live and check that the recording equals it.
FIXTURES = Path(__file__).parent / "data" / "mambair"
LIVE = missing() is None


def _official_case(name: str):
    """(config, official-format state dict, input, official output) of SMALL case ``name``: live when the clones are
    here (checked against the recording), else recorded."""
    config, state, x, ref = recorded_case(FIXTURES, name)
    if LIVE:
        net, _, x_live, ref_live = official_case(name)
        live = net.state_dict()
        assert config == SMALL[name] and state.keys() == live.keys()
        for key, value in live.items():
            torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=key)
        torch.testing.assert_close(x, x_live, atol=0, rtol=0)
        torch.testing.assert_close(ref, ref_live, atol=1e-5, rtol=1e-5)
        state, x, ref = live, x_live, ref_live
    return config, state, x, ref


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_official_parity(name, backend):
    config, state, x, ref = _official_case(name)
    model = pixelforge.load_official({"params": state}, config=config)  # family from the keys
    with torch.no_grad(), use_backend(backend):
        out = model(x)
    assert ref.std() > 0.05  # the output depends on the input, not only on biases
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", sorted(RELEASED))
def test_released_layout_loads_strictly(variant):
    """The official model's state-dict layout (recorded, or built on the CPU when the clones are here; read on the
    meta device) loads strictly, through load_official (hyper-parameters from the shapes) and into the registered
    factory."""
    config, recorded = RELEASED[variant], recorded_layouts(FIXTURES)[variant]
    assert recorded["config"] == config
    if LIVE:
        assert {k: recorded[k] for k in ("state", "n_params")} == layout(config)
    state = {k: torch.empty(shape, device="meta") for k, shape in recorded["state"]}
    n_params = recorded["n_params"]
    with torch.device("meta"):
        model = pixelforge.load_official({"params": state}, config=config)
        if variant != "car":
            registered = pixelforge.create_model(variant, weights=state)
            assert sum(p.numel() for p in registered.parameters()) == n_params
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model.upscale == config["upscale"] and model.backbone.num_features == config["embed_dim"]
    assert len(model.backbone.layers) == len(config["depths"])


def test_registered_configs_match_the_paper():
    """Parameter counts of the paper's Table (MambaIR x2 20.42 M; MambaIR-light 905 K / 913 K / 924 K)."""
    counts = {n: sum(p.numel() for p in pixelforge.create_model(n).parameters())
              for n in ("mambair_x2", "mambair_light_x2", "mambair_light_x3", "mambair_light_x4")}
    assert counts == {"mambair_x2": 20_421_863, "mambair_light_x2": 905_016, "mambair_light_x3": 913_131,
                      "mambair_light_x4": 924_492}


def _small(name="mambair_light_x4", seed=0, **kw):
    torch.manual_seed(seed)
    model = pixelforge.create_model(name, **{"embed_dim": 30, "depths": (2, 2), "d_state": 8, **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_four_directions_take_two_shared_scan_calls_per_block(monkeypatch):
    """Each block scans through the shared op twice (forward, then reverse=True), never with flipped copies, and
    the sum equals the four official directions: row-major, column-major and their reversals (flip/scan/flip)."""
    calls = []
    scan = mambair_mod.selective_scan

    def counting(*args, **kwargs):
        calls.append(kwargs.get("reverse", False))
        return scan(*args, **kwargs)

    monkeypatch.setattr(mambair_mod, "selective_scan", counting)
    model = _small()
    with torch.no_grad():
        model(torch.rand(1, 3, 9, 11))
    assert calls == [False, True] * 4
    ss2d = model.backbone.layers[0].blocks[0].self_attention
    x = torch.randn(1, ss2d.d_inner, 5, 7)
    b, d, h, w = x.shape
    orders = [x.flatten(2), x.transpose(2, 3).flatten(2)]
    orders += [o.flip(-1) for o in orders]
    A, D = -torch.exp(ss2d.A_logs).view(4, d, -1), ss2d.Ds.view(4, d)
    ys = []
    for k, u in enumerate(orders):  # one direction at a time, as the official per-direction definition
        dbl = ss2d.x_proj_weight[k] @ u
        dt, bb, cc = dbl.split([ss2d.dt_rank, ss2d.d_state, ss2d.d_state], dim=1)
        ys.append(scan(u, ss2d.dt_projs_weight[k] @ dt, A[k], bb, cc, D[k], delta_bias=ss2d.dt_projs_bias[k],
                       delta_softplus=True))
    y_row = ys[0] + ys[2].flip(-1)
    y_col = ys[1] + ys[3].flip(-1)
    ref = y_row.view(b, d, h, w) + y_col.view(b, d, w, h).transpose(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(ss2d.scan(x), ref, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    model = _small(drop_path_rate=0.0).train()
    x = torch.rand(2, 3, 8, 10)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.isfinite(g).all() for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_is_close_to_fp32():
    model = _small()
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 0.05


def test_restoration_heads_keep_size():
    model = _small(head="restore")
    assert model.upscale == 1
    assert model(torch.rand(1, 3, 10, 12)).shape == (1, 3, 10, 12)
    dereflect = pixelforge.create_model("mambair_dereflect", embed_dim=30, depths=(1,))
    assert dereflect(torch.rand(1, 3, 9, 7)).shape == (1, 3, 9, 7)
    assert dereflect.backbone.layers[0].blocks[0].self_attention.d_inner == 36  # restoration expansion 1.2


def test_any_input_size_and_backbone_contract():
    model = _small(name="mambair_x3", upscale=3, embed_dim=32)
    assert model.spatial_multiple == 1 and model.tile_overlap == mambair_mod.MambaIRBackbone.tile_overlap
    for h, w in [(1, 1), (3, 8), (17, 5)]:
        with torch.no_grad():
            assert model(torch.rand(1, 3, h, w)).shape == (1, 3, 3 * h, 3 * w)
    feats = model.forward_features(torch.rand(1, 3, 6, 7))
    assert feats.shape == (1, 32, 6, 7)


def test_tiled_inference_matches_whole_image():
    """With the measured overlap, tiles reproduce whole-image inference within 1/255; without overlap they do not
    (the scans carry state across the whole image)."""
    model = _small()
    x = read_image(DATA / "sr-bench/Set14/x4/img_013_SRF_4_LR.png", channels=3).pixels[None, :, :96, :80]
    with torch.no_grad():
        ref = run_tiled(model, x)
        assert (run_tiled(model, x, tile=64, overlap=model.tile_overlap) - ref).abs().max() < 1 / 255
        assert (run_tiled(model, x, tile=32, overlap=0) - ref).abs().max() > 2 / 255


def test_unknown_residual_connection_is_refused():
    with pytest.raises(ValueError, match="resi_connection"):
        pixelforge.create_model("mambair_light_x2", resi_connection="2conv")

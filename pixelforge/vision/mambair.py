"""MambaIR: a simple baseline for image restoration with state-space models (Guo et al., ECCV 2024, arXiv 2402.15648).

A SwinIR-style residual network whose token mixer is a four-direction 2D selective scan (SS2D): each residual state
space block (RSSB) is LayerNorm → SS2D with a learnable skip scale, then LayerNorm → channel-attention conv block
(CAB, the "local enhancement") with a second skip scale; residual state-space groups (RSSG) of RSSBs end in a 3x3
conv with a residual. Faithful to the official code (csguoh/MambaIR, ``basicsr/archs/mambair_arch.py``):

- SS2D scans the depthwise-conv features in four orders (row-major, column-major and both reversed), each direction
  with its own x_proj, dt_proj, A, D and dt bias, and sums the four outputs before the output LayerNorm and the
  SiLU(z) gate (no D-less variant, no dropout: 0 in every release);
- the lightweight models (``pixelshuffledirect``) use the light CAB (1x1 squeeze by 2, depthwise 3x3, GELU, 1x1,
  depthwise 3x3 dilated by 2, channel attention), the others HAT's CAB (compress 3); squeeze factor 30 in both;
- ``mlp_ratio`` is the SS2D expansion (d_inner = int(mlp_ratio·C)); there is no MLP.

The four directions run in two calls of the shared :func:`pixelforge.kernels.selective_scan` per block: the row-
and column-major sequences are stacked on the channel axis (2·d_inner channels, B and C in 2 groups) and scanned
left to right, then right to left (``reverse=True``) with the reversed directions' parameters, so no flipped copy is
made. Measured faster than one call over four stacked directions with flips (1 thread, AMD EPYC Zen 5, CPU time):
inference of the light SS2D scan at 64² 13.6 vs 15.1 ms, of the MambaIR one 68 vs 99 ms; forward + backward of the
light one on the PyTorch path 236 vs 257 ms. The released checkpoints (BasicSR ``params``) load through
:func:`pixelforge.load_official`; the official forward is reproduced within 2e-4 (tests/test_mambair.py).

Tiled inference: a scan carries state across the whole image (row-major order even wraps from the end of one row to
the start of the next), so no overlap makes tiles exactly seamless. ``MambaIRBackbone.tile_overlap`` = 32 input
pixels keeps tiled output within 1/255 of whole-image output for the official random init (24 px suffice there).
A random network with every parameter perturbed (tools/bench_sr.py ``_perturb``, output spread like an image) does
not converge with the overlap: tile 64, overlap 8/16/32 → 30/22/22 /255 (light x4), 30/8.5/9.5 /255 (x4), its slowest
channels remembering further than any overlap. Trained weights may sit anywhere between; whole-image inference is
exact.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import selective_scan
from ..layers.channel_attention import ChannelAttention
from ..layers.init import init_transformer_weights
from ..layers.precision import full_precision
from ..zoo import CheckpointError, load_weights, register_family, register_model
from .dense import DenseBackbone, DenseImageModel, build_dense_model
from .hat import CAB

__all__ = ["MambaIRBackbone", "SS2D", "checkpoint_filter_fn"]

_DIRECTIONS = 4  # row-major, column-major, reversed row-major, reversed column-major


class SS2D(nn.Module):
    """2D selective scan: in_proj → [x | z]; x → depthwise conv → SiLU → four-direction scan → sum → LayerNorm,
    gated by SiLU(z) → out_proj.

    Args:
        dim: C. d_state: N. expand: d_inner = int(expand·C). d_conv: depthwise kernel. dt_rank: rank of the
        dt projection (official "auto": ceil(C / 16)). dt_min, dt_max, dt_init_floor: dt initialisation range.
    Parameters (official names): ``x_proj_weight`` (4, dt_rank + 2N, d_inner), ``dt_projs_weight``
    (4, d_inner, dt_rank), ``dt_projs_bias`` (4, d_inner), ``A_logs`` (4·d_inner, N), ``Ds`` (4·d_inner,).
    Shapes: (B, H, W, C) → (B, H, W, C).
    """

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, d_conv: int = 3, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        super().__init__()
        d_inner = int(expand * dim)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        k = _DIRECTIONS
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner)
        bound = d_inner ** -0.5  # nn.Linear's default init, as the official per-direction Linear layers
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        std = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank).uniform_(-std, std))
        dt = torch.exp(torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the four directional scans of x (B, d_inner, H, W) → (B, d_inner, H, W).

        The row- and column-major sequences are stacked on channels, u (B, 2·d_inner, L), and scanned twice by the
        shared op: left to right with the parameters of directions 0, 1 and right to left (``reverse=True``) with
        those of directions 2, 3 (the official flipped sequences, without flipped copies); B and C are 2 groups.
        """
        b, d, h, w = x.shape
        k, c = _DIRECTIONS, self.x_proj_weight.shape[1]
        seq = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)  # (B, 2, d, L)
        # x_dbl[:, r, j]: (dt | B | C) of order j (row/column-major) scanned forward (r = 0) or reversed (r = 1)
        x_dbl = torch.einsum("bjdl,rjcd->brjcl", seq, self.x_proj_weight.view(2, k // 2, c, d))
        dts, bs, cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=3)
        dts = torch.einsum("brjql,rjdq->brjdl", dts, self.dt_projs_weight.view(2, k // 2, d, self.dt_rank))
        u = seq.flatten(1, 2)
        A = -torch.exp(self.A_logs.float()).view(2, 2 * d, self.d_state)
        D, bias = self.Ds.float().view(2, 2 * d), self.dt_projs_bias.float().view(2, 2 * d)
        y = sum(selective_scan(u, dts[:, r].flatten(1, 2), A[r], bs[:, r], cs[:, r], D[r], delta_bias=bias[r],
                               delta_softplus=True, reverse=bool(r)) for r in range(2))
        y = y.view(b, 2, d, h * w)
        return y[:, 0].view(b, d, h, w) + y[:, 1].view(b, d, w, h).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.out_norm(self.scan(x).permute(0, 2, 3, 1))
        return self.out_proj(y * F.silu(z))


class LightCAB(nn.Module):
    """Light channel-attention block (official ``CAB`` with ``is_light_sr``): 1x1 (C → C/2) → depthwise 3x3 → GELU
    → 1x1 (→ C) → depthwise 3x3 dilated 2 → channel attention. Shapes: (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, dim: int, squeeze_factor: int = 30):
        super().__init__()
        hidden = dim // 2
        self.cab = nn.Sequential(
            nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden), nn.GELU(),
            nn.Conv2d(hidden, dim, 1), nn.Conv2d(dim, dim, 3, 1, padding=2, dilation=2, groups=dim),
            ChannelAttention(dim, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return self.cab(x)


class RSSB(nn.Module):
    """Residual state-space block: x·s₁ + SS2D(LN x), then x·s₂ + CAB(LN x). Shapes: (B, H, W, C) → (B, H, W, C).

    Parameter names follow the official ``VSSBlock`` (``ln_1``, ``self_attention``, ``skip_scale``, ``conv_blk``…).
    """

    def __init__(self, dim: int, d_state: int, expand: float, light: bool, drop_path: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, d_state, expand)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.skip_scale = nn.Parameter(torch.ones(dim))
        self.conv_blk = LightCAB(dim) if light else CAB(dim, compress_ratio=3, squeeze_factor=30)
        self.ln_2 = nn.LayerNorm(dim)
        self.skip_scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        x = x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x)))
        return x * self.skip_scale2 + self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _residual_conv(dim: int, kind: str) -> nn.Module:
    """The conv closing a group and the body: ``1conv`` (3x3) or ``3conv`` (3x3 → C/4, 1x1, 3x3, LeakyReLU 0.2)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"resi_connection must be '1conv' or '3conv', not '{kind}'")


class RSSG(nn.Module):
    """Residual state-space group: x + conv(RSSB_{depth−1}(… RSSB_0(x))). Shapes: (B, H, W, C) → (B, H, W, C)."""

    def __init__(self, dim: int, depth: int, d_state: int, expand: float, light: bool, drop_path: list[float],
                 resi_connection: str):
        super().__init__()
        self.blocks = nn.ModuleList(RSSB(dim, d_state, expand, light, drop_path[i]) for i in range(depth))
        self.conv = _residual_conv(dim, resi_connection)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        y = x
        for blk in self.blocks:
            y = checkpoint(blk, y, use_reentrant=False) if ckpt else blk(y)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


class MambaIRBackbone(DenseBackbone):
    """MambaIR body: conv_first → LayerNorm → RSSGs → LayerNorm → conv_after_body, plus the shallow residual.

    Args (official names and meaning):
        in_chans: image channels. embed_dim: C. depths: RSSBs per group. d_state: N of the scans. mlp_ratio: the
        SS2D expansion. light: the light CAB (official: implied by ``upsampler='pixelshuffledirect'``).
        drop_path_rate: stochastic depth, linear over all blocks (training only). patch_norm: LayerNorm after
        conv_first. resi_connection: ``"1conv"`` or ``"3conv"`` (group and body convs).
    Shapes: forward_features (B, in_chans, H, W) → (B, embed_dim, H, W); any H, W (no windows, no padding).
    """

    # Measured (run_tiled, tile 64, Set14 LR crop 128x128, x4, fp32): official random init, max |tiled - whole|
    # 1/255 · {overlap 8: 7.8, 16: 0.29, 24: 0.03, 32: 0.03} (light). See the module docstring for the limits.
    tile_overlap = 32

    def __init__(self, in_chans: int = 3, embed_dim: int = 180, depths: tuple[int, ...] = (6,) * 6,
                 d_state: int = 16, mlp_ratio: float = 2.0, light: bool = False, drop_path_rate: float = 0.1,
                 patch_norm: bool = True, resi_connection: str = "1conv"):
        super().__init__()
        depths = tuple(depths)
        self.in_chans, self.num_features = in_chans, embed_dim
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.norm_embed = nn.LayerNorm(embed_dim) if patch_norm else nn.Identity()
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            RSSG(embed_dim, d, d_state, mlp_ratio, light, dpr[sum(depths[:i]):sum(depths[:i + 1])], resi_connection)
            for i, d in enumerate(depths))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        self.apply(init_transformer_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, in_chans, H, W) → (B, embed_dim, H, W)."""
        x = full_precision(self.conv_first, x)  # the long residual stays float32 under autocast
        t = self.norm_embed(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            t = layer(t)
        return self.conv_after_body(self.norm(t).permute(0, 3, 1, 2)) + x


_HEAD_PREFIXES = ("conv_before_upsample.", "upsample.", "conv_last.")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official MambaIR keys → ours; our own keys pass unchanged.

    ``layers.i.residual_group.X`` → ``backbone.layers.i.X``, ``patch_embed.norm`` → ``backbone.norm_embed``,
    reconstruction modules → ``head.*``, the rest → ``backbone.*``.
    """
    out = {}
    for k, v in state_dict.items():
        if not k.startswith(("backbone.", "head.")):
            k = k.replace(".residual_group.", ".").replace("patch_embed.norm.", "norm_embed.")
            k = ("head." if k.startswith(_HEAD_PREFIXES) else "backbone.") + k
        out[k] = v
    return out


_BACKBONE_ARGS = ("in_chans", "embed_dim", "depths", "d_state", "mlp_ratio", "light", "drop_path_rate", "patch_norm",
                  "resi_connection")


def _create_mambair(variant: str, pretrained: bool = False, **kwargs) -> DenseImageModel:
    """Official MambaIR SR configuration, overridden by ``kwargs`` (backbone args above; head, upscale, upsampler,
    img_range, num_feat and timm/zoo arguments)."""
    defaults = dict(embed_dim=180, depths=(6,) * 6, d_state=16, mlp_ratio=2.0, upscale=4, upsampler="pixelshuffle")
    return build_dense_model(MambaIRBackbone, _BACKBONE_ARGS, variant, pretrained, checkpoint_filter_fn,
                             **{**defaults, **kwargs})


def _official_detect(state: dict) -> bool:
    return "conv_first.weight" in state and "layers.0.residual_group.blocks.0.self_attention.x_proj_weight" in state


def _official_head(state: dict, in_chans: int) -> dict:
    """Upsampler, scale and width from the reconstruction keys (no upsampler: the restoration head)."""
    if "conv_before_upsample.0.weight" in state:
        num_feat = state["conv_before_upsample.0.weight"].shape[0]
        convs = sorted(int(k.split(".")[1]) for k in state if k.startswith("upsample.") and k.endswith(".weight"))
        upscale = 3 if state[f"upsample.{convs[0]}.weight"].shape[0] == 9 * num_feat else 2 ** len(convs)
        return dict(upsampler="pixelshuffle", num_feat=num_feat, upscale=upscale)
    if "upsample.0.weight" in state:
        upscale = int(round(math.sqrt(state["upsample.0.weight"].shape[0] / in_chans)))
        return dict(upsampler="pixelshuffledirect", upscale=upscale)
    if "conv_last.weight" in state:
        return dict(head="restore")
    raise CheckpointError("MambaIR checkpoint without reconstruction modules; nothing to build")


def _official_build(state: dict, config: dict) -> DenseImageModel:
    """Infer C, depths, N, the SS2D expansion, the CAB kind, norms, residual convs and the head from the shapes;
    img_range and drop_path_rate come from ``config``."""
    embed_dim, in_chans = state["conv_first.weight"].shape[:2]
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    depths = []
    for i in range(n_layers):
        pre = f"layers.{i}.residual_group.blocks."
        depths.append(1 + max(int(k[len(pre):].split(".")[0]) for k in state if k.startswith(pre)))
    ss2d = "layers.0.residual_group.blocks.0.self_attention."
    d_inner = state[ss2d + "out_norm.weight"].shape[0]
    mlp_ratio = config.get("mlp_ratio", 2.0)
    if int(embed_dim * mlp_ratio) != d_inner:
        mlp_ratio = d_inner / embed_dim
    bb = dict(in_chans=in_chans, embed_dim=embed_dim, depths=depths, d_state=state[ss2d + "A_logs"].shape[1],
              mlp_ratio=mlp_ratio, light="layers.0.residual_group.blocks.0.conv_blk.cab.5.attention.1.weight" in state,
              patch_norm="patch_embed.norm.weight" in state,
              resi_connection="3conv" if "conv_after_body.0.weight" in state else "1conv",
              drop_path_rate=float(config.get("drop_path_rate", 0.1)))
    model = DenseImageModel(MambaIRBackbone(**bb), out_chans=in_chans, img_range=float(config.get("img_range", 1.0)),
                            **_official_head(state, in_chans))
    return load_weights(model, state, checkpoint_filter_fn)


register_family("mambair", _official_detect, _official_build, wrapper="params")


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "license": "apache-2.0",
            "paper_ids": "arXiv:2402.15648", "notes": "official release (not bundled): put the file in "
            "$PIXELFORGE_HOME/weights for pretrained=True", **kwargs}


default_cfgs = {
    **{f"mambair_x{s}": _cfg(file=f"MambaIR_SR{s}.pth") for s in (2, 3, 4)},
    **{f"mambair_light_x{s}": _cfg(file=f"MambaIR_light{s}.pth") for s in (2, 3, 4)},
}

_LIGHT = dict(embed_dim=60, depths=(6,) * 4, d_state=10, mlp_ratio=1.2, light=True, upsampler="pixelshuffledirect")


@register_model
def mambair_x2(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """MambaIR x2: C 180, 6 groups x 6 RSSBs, N 16, expansion 2, CAB 3/30, pixelshuffle (20.4 M params)."""
    return _create_mambair("mambair_x2", pretrained, **{"upscale": 2, **kwargs})


@register_model
def mambair_x3(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """MambaIR x3."""
    return _create_mambair("mambair_x3", pretrained, **{"upscale": 3, **kwargs})


@register_model
def mambair_x4(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """MambaIR x4."""
    return _create_mambair("mambair_x4", pretrained, **{"upscale": 4, **kwargs})


@register_model
def mambair_light_x2(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """Lightweight MambaIR x2: C 60, 4 groups x 6 RSSBs, N 10, expansion 1.2, light CAB, pixelshuffle-direct."""
    return _create_mambair("mambair_light_x2", pretrained, **{**_LIGHT, "upscale": 2, **kwargs})


@register_model
def mambair_light_x3(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """Lightweight MambaIR x3."""
    return _create_mambair("mambair_light_x3", pretrained, **{**_LIGHT, "upscale": 3, **kwargs})


@register_model
def mambair_light_x4(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """Lightweight MambaIR x4."""
    return _create_mambair("mambair_light_x4", pretrained, **{**_LIGHT, "upscale": 4, **kwargs})

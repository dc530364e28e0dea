"""RRFormer: ultra-high-definition single-image reflection removal (Zhang et al., arXiv 2308.00265).

Three modules on the blended image I (RGB in [0, 1]), output the transmission layer at the same size:

- PEM (preprocessing embedding): a hypercolumn of I and frozen VGG-19 taps relu1_1 … relu5_1 (on the raw image, no
  ImageNet normalisation), each bilinearly resized to H×W, then conv1 (1x1, ReLU), conv2 (3x3, ReLU), conv3 (3x3,
  stride 2, ReLU) to 240 channels at half resolution. The 1x1 conv1 is applied to every tap at its own resolution
  before resizing (bilinear resizing is linear, so this equals the official conv of the concatenation), which
  never materialises the 1475-channel map (49 GB at 4K in the official code).
- SA-FEM (self-attention feature extraction): residual Swin transformer groups (SwinIR's RSTB, shifted 8x8 windows,
  on :func:`pixelforge.kernels.attention`), ``conv_after_body(features) + input``. **The released code discards
  this result and returns its input**, so the network that was trained and evaluated there is PEM → identity →
  MSFEM: ``sa_depths=()`` (the default) reproduces it, non-empty ``sa_depths`` builds the paper-style stage, which
  cannot be checked against anything official.
- MSFEM (multi-scale spatial features): transposed conv x2 (ReLU), 3x3 conv (ReLU), pyramid pooling (average pools
  4/8/16/32 with the remainder dropped, 1x1 conv without bias, LeakyReLU 0.2, nearest resize back, concatenated with
  the input, 1x1 bottleneck, LeakyReLU 0.2), then the head: 1x1 conv to RGB and ReLU (no residual, no clamp).

Inference pads odd sizes by reflection to even (the official network returns one pixel more there) and inputs
smaller than 32 pixels (where the official pyramid pooling fails) by mirroring.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import attention
from ..layers.init import init_transformer_weights
from ..layers.linear import conv1x1, linear
from ..layers.vgg import VGG19Features
from ..layers.window import (gather_relative_position_bias, merge_heads, pad_to_multiple, relative_position_index,
                             shift_window_mask, split_heads, window_partition, window_reverse)
from ..zoo import CheckpointError, load_weights, register_family, register_model
from .dense import DenseBackbone, DenseImageModel, build_dense_model

__all__ = ["RRFormerBackbone", "SelfAttentionStage", "PyramidPooling", "checkpoint_filter_fn", "HYPERCOLUMN_TAPS"]

HYPERCOLUMN_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
_MIN_SIZE = 32  # the largest pyramid pooling kernel


class WindowAttention(nn.Module):
    """Multi-head self-attention inside M×M windows with a learned relative-position bias (Swin/SwinIR).

    Shapes: (B, nW, N, C) with N = M² → (B, nW, N, C); ``mask`` (nW, N, N) additive or None.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"self-attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, nW, N, C) → (B, nW, N, C)."""
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        bias = gather_relative_position_bias(self.relative_position_bias_table, self.relative_position_index)
        return self.proj(merge_heads(attention(q, k, v, bias=bias, mask=mask)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each with a residual and stochastic depth.

    Shapes: channels-last (B, H, W, C), H and W multiples of the window → same. ``mask`` is the shift mask of
    this (H, W) for shifted blocks.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.window_size, self.shift_size = window_size, (window_size // 2 if shift else 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, H, W, C) → (B, H, W, C)."""
        _, h, w, _ = x.shape
        s = self.shift_size
        y = self.norm1(x)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, self.window_size), mask if s else None)
        y = window_reverse(y, self.window_size, h, w)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ResidualSwinGroup(nn.Module):
    """SwinIR's RSTB: blocks (shift on every odd block), 3x3 conv, residual. (B, H, W, C) → (B, H, W, C)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 drop_path: Sequence[float]):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      drop_path=drop_path[i]) for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.grad_checkpointing = False

    def _body(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.blocks:
            y = block(y, mask)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C), shift mask (nW, N, N) → (B, H, W, C)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._body, x, mask, use_reentrant=False)
        return self._body(x, mask)


class SelfAttentionStage(nn.Module):
    """The paper-style SA-FEM: y = conv_after_body(norm(groups(norm_in(x)))) + x.

    The map is reflect-padded to a multiple of the window and cropped back (as the official stage does).
    Args:
        dim: channels (240 in RRFormer). depths, num_heads: blocks and heads per group. window_size: M.
        mlp_ratio, qkv_bias, drop_path_rate: as SwinIR (2, True, 0.1; stochastic depth grows linearly).
    Shapes: (B, dim, h, w) → (B, dim, h, w).
    """

    def __init__(self, dim: int = 240, depths: Sequence[int] = (6,) * 5, num_heads: Sequence[int] = (6,) * 5,
                 window_size: int = 8, mlp_ratio: float = 2.0, qkv_bias: bool = True, drop_path_rate: float = 0.1):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"sa_depths {tuple(depths)} and sa_num_heads {tuple(num_heads)} differ in length")
        self.window_size = window_size
        self.norm_in = nn.LayerNorm(dim)
        dpr = torch.linspace(0, drop_path_rate, max(sum(depths), 1), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            ResidualSwinGroup(dim, d, h, window_size, mlp_ratio, qkv_bias, dpr[s:s + d])
            for d, h, s in zip(depths, num_heads, starts))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, h, w) → (B, dim, h, w)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.window_size, "reflect")
        hp, wp = x.shape[-2:]
        mask = shift_window_mask(hp, wp, self.window_size, self.window_size // 2, -100.0, dtype=x.dtype,
                                 device=x.device)
        y = self.norm_in(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            y = layer(y, mask)
        y = self.conv_after_body(self.norm(y).permute(0, 3, 1, 2)) + x
        return y[..., :h, :w]


class PyramidPooling(nn.Module):
    """Pyramid pooling: per scale s, AvgPool2d(s) (remainder dropped) → 1x1 conv (no bias) → LeakyReLU(0.2) →
    nearest resize back; concat [p_s…, x] → 1x1 bottleneck → LeakyReLU(0.2).

    Shapes: (B, C, h, w), h, w ≥ max(scales) → (B, out_chans, h, w).
    """

    def __init__(self, channels: int, out_chans: int, scales: Sequence[int] = (4, 8, 16, 32),
                 ct_channels: int | None = None):
        super().__init__()
        ct = ct_channels or channels // 4
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AvgPool2d(s), nn.Conv2d(channels, ct, 1, bias=False), nn.LeakyReLU(0.2))
            for s in scales)
        self.bottleneck = nn.Conv2d(channels + len(scales) * ct, out_chans, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, out_chans, h, w)."""
        size = x.shape[-2:]
        priors = [F.interpolate(stage(x), size=size, mode="nearest") for stage in self.stages]
        return F.leaky_relu(conv1x1(torch.cat(priors + [x], dim=1), self.bottleneck), 0.2)


class RRFormerBackbone(DenseBackbone):
    """RRFormer without its 1x1 output conv: image (B, 3, H, W) in [0, 1] → features (B, embed_dim, H, W).

    Args:
        embed_dim: F (``n_feats``; 256 released). mid_dim: width at half resolution (hard-coded 240 officially).
        sa_depths, sa_num_heads, window_size, mlp_ratio, qkv_bias, drop_path_rate: the self-attention stage;
            ``sa_depths=()`` switches it off (the released network).
        pyramid: use pyramid pooling (official ``pyramid=True``); pyramid_scales; pyramid_chans (F//4).
        vgg_weights: torchvision VGG-19 weights (path or state dict) for the hypercolumn; see
            :class:`~pixelforge.layers.vgg.VGG19Features` (random, warned once, when none is found).
    The input must be the raw [0, 1] image (build :class:`DenseImageModel` with ``rgb_mean=None``): the frozen
    VGG-19 sees it as is. H and W must be even and at least 32 (``pad_input`` ensures it).
    """

    spatial_multiple = 2
    in_chans = 3

    def __init__(self, embed_dim: int = 256, mid_dim: int = 240, sa_depths: Sequence[int] = (),
                 sa_num_heads: Sequence[int] = (), window_size: int = 8, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.1, pyramid: bool = True,
                 pyramid_scales: Sequence[int] = (4, 8, 16, 32), pyramid_chans: int | None = None, vgg_weights=None):
        super().__init__()
        self.num_features = embed_dim
        self.vgg = VGG19Features(HYPERCOLUMN_TAPS, weights=vgg_weights, purpose="the RRFormer hypercolumn")
        self.conv1 = nn.Conv2d(3 + sum(self.vgg.tap_channels), embed_dim, 1)
        self.conv2 = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv3 = nn.Conv2d(embed_dim, mid_dim, 3, 2, 1)
        self.transformer = (SelfAttentionStage(mid_dim, sa_depths, sa_num_heads, window_size, mlp_ratio, qkv_bias,
                                               drop_path_rate) if len(sa_depths) else None)
        self.deconv1 = nn.ConvTranspose2d(mid_dim, embed_dim, 4, 2, 1)
        self.deconv2 = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.pyramid = PyramidPooling(embed_dim, embed_dim, pyramid_scales, pyramid_chans) if pyramid else None
        self.min_size = max(pyramid_scales) if pyramid else 1

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad (B, 3, H, W) at the bottom/right to even sizes of at least 32 (none for the usual sizes)."""
        h, w = x.shape[-2:]
        mh = max(2, self.min_size + self.min_size % 2) if h < self.min_size else 2
        mw = max(2, self.min_size + self.min_size % 2) if w < self.min_size else 2
        return pad_to_multiple(x, (mh, mw), "reflect")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.transformer is not None:
            for layer in self.transformer.layers:
                layer.grad_checkpointing = enable

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(conv1(hypercolumn(x))), computed tap by tap: (B, 3, H, W) → (B, embed_dim, H, W).

        hypercolumn(x) = [x, up(relu1_1), …, up(relu5_1)] with ``up`` bilinear (align_corners=False) to H×W;
        conv1 is applied to each part at its own resolution and resized afterwards (exact: both are linear).
        """
        size = x.shape[-2:]
        x = x.contiguous(memory_format=torch.channels_last)  # channels-last throughout: 1x1 convs are linears
        taps = self.vgg(x)
        weight = self.conv1.weight.flatten(1)
        out = linear(x.permute(0, 2, 3, 1), weight[:, :3].contiguous(), self.conv1.bias).permute(0, 3, 1, 2)
        start = 3
        for tap in taps:
            n = tap.shape[1]
            y = linear(tap.permute(0, 2, 3, 1), weight[:, start:start + n].contiguous()).permute(0, 3, 1, 2)
            start += n
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = out + y
        return F.relu(out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw image (B, 3, H, W), H and W even ≥ 32 → (B, embed_dim, H, W)."""
        f = F.relu(self.conv3(F.relu(self.conv2(self.embed(x)))))
        if self.transformer is not None:
            f = self.transformer(f)
        f = F.relu(self.deconv2(F.relu(self.deconv1(f))))
        return self.pyramid(f) if self.pyramid is not None else f


_OFFICIAL_CONVS = ("conv1", "conv2", "conv3", "deconv1", "deconv2")


def checkpoint_filter_fn(state_dict: dict, model: DenseImageModel) -> dict:
    """Official DRNet keys (``icnn``) → ours; our own keys pass unchanged.

    ``convN.conv2d.*``/``deconvN.conv2d.*`` → ``backbone.convN.*``; ``pyramid_module.*`` → ``backbone.pyramid.*``;
    ``deconv3.conv2d.*`` → ``head.conv_last.*``. ``swinir_block.*`` is dropped when the model's self-attention stage
    is off (the released network, where it is dead code); otherwise mapped to ``backbone.transformer.*``
    (``patch_embed.norm`` → ``norm_in``, ``residual_group.`` removed), without the derived buffers
    (``relative_position_index``, ``attn_mask``) and the unused ``conv_last``.
    """
    has_sa = model.backbone.transformer is not None
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("backbone.", "head.")):
            out[k] = v
            continue
        root = k.split(".")[0]
        if root in _OFFICIAL_CONVS:
            out["backbone." + k.replace(".conv2d.", ".", 1)] = v
        elif root == "deconv3":
            out["head.conv_last." + k.split(".")[-1]] = v
        elif root == "pyramid_module":
            out["backbone.pyramid." + k[len("pyramid_module."):]] = v
        elif root == "swinir_block":
            if not has_sa or k.endswith(("relative_position_index", "attn_mask")) or ".conv_last." in k:
                continue
            k = k[len("swinir_block."):].replace("patch_embed.norm.", "norm_in.").replace(".residual_group.", ".")
            out["backbone.transformer." + k] = v
        else:
            out[k] = v
    return out


_BACKBONE_KEYS = ("embed_dim", "mid_dim", "sa_depths", "sa_num_heads", "window_size", "mlp_ratio", "qkv_bias",
                  "drop_path_rate", "pyramid", "pyramid_scales", "pyramid_chans", "vgg_weights")
# the official output layer (deconv3): 1x1 conv, ReLU, no residual
_RRFORMER_HEAD = dict(head="restore", kernel_size=1, residual=False, act="relu")


def _create_rrformer(variant: str, pretrained: bool = False, **kwargs) -> DenseImageModel:
    head_args_given = {"kernel_size", "residual", "act"} & set(kwargs)
    if kwargs.get("head", "restore") in ("restore", "dereflect") and not head_args_given:
        kwargs = {**_RRFORMER_HEAD, **kwargs}
    kwargs.setdefault("rgb_mean", None)
    return build_dense_model(RRFormerBackbone, _BACKBONE_KEYS, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _official_detect(state: dict) -> bool:
    return all(f"{m}.conv2d.weight" in state for m in ("conv1", "conv3", "deconv1", "deconv3"))


def _official_build(state: dict, config: dict) -> DenseImageModel:
    """Infer F, the middle width, the pyramid and (paper-style only) the Swin stage from shapes.

    ``config``: the official ``DRNet`` kwargs (``pyramid`` is read from the keys; ``in_channels`` must be 1475,
    the hypercolumn) plus ours: ``vgg_weights`` (the hypercolumn's VGG-19; official checkpoints do not hold it) and
    ``self_attention`` (``"off"``: the released network, default; ``"paper"``: keep the ``swinir_block`` weights).
    """
    embed_dim, in_ch = state["conv1.conv2d.weight"].shape[:2]
    if in_ch != 1475 or int(config.get("in_channels", 1475)) != 1475:
        raise CheckpointError(f"RRFormer checkpoint: conv1 takes {in_ch} channels, expected the 1475-channel "
                              f"hypercolumn (image + VGG-19 relu1_1 … relu5_1)")
    if int(config.get("out_channels", 3)) != state["deconv3.conv2d.weight"].shape[0]:
        raise CheckpointError("RRFormer checkpoint: deconv3 does not produce out_channels channels")
    args: dict = dict(embed_dim=embed_dim, mid_dim=state["conv3.conv2d.weight"].shape[0],
                      vgg_weights=config.get("vgg_weights"))
    n_stages = len({k.split(".")[2] for k in state if k.startswith("pyramid_module.stages.")})
    args["pyramid"] = n_stages > 0
    if n_stages:
        if n_stages != 4:
            raise CheckpointError(f"RRFormer checkpoint: {n_stages} pyramid stages, the official module has 4")
        args["pyramid_chans"] = state["pyramid_module.stages.0.1.weight"].shape[0]
    mode = config.get("self_attention", "off")
    if mode not in ("off", "paper"):
        raise ValueError(f"self_attention must be 'off' (released) or 'paper', got '{mode}'")
    if mode == "paper":
        prefix = "swinir_block.layers."
        layers = sorted({int(k.split(".")[2]) for k in state if k.startswith(prefix)})
        if not layers:
            raise CheckpointError("self_attention='paper' but the checkpoint has no swinir_block groups")
        block0 = f"{prefix}0.residual_group.blocks.0."
        table = state[block0 + "attn.relative_position_bias_table"].shape[0]
        args.update(
            sa_depths=[1 + max(int(k.split(".")[5]) for k in state
                               if k.startswith(f"{prefix}{i}.residual_group.blocks.")) for i in layers],
            sa_num_heads=[state[f"{prefix}{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1]
                          for i in layers],
            window_size=(int(round(table ** 0.5)) + 1) // 2,
            mlp_ratio=state[block0 + "mlp.fc1.weight"].shape[0] / args["mid_dim"],
            qkv_bias=block0 + "attn.qkv.bias" in state)
    model = _create_rrformer("rrformer", **args)
    return load_weights(model, state, checkpoint_filter_fn)


register_family("rrformer", _official_detect, _official_build, wrapper="icnn")


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 256, 256), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "license": "none",
            "paper_ids": "arXiv:2308.00265", **kwargs}


default_cfgs = {
    "rrformer": _cfg(notes="released network (self-attention stage off); no official weights are released"),
    "rrformer_paper": _cfg(notes="paper-style self-attention stage; unverifiable against official code"),
    "rrformer_small": _cfg(file="rrformer_small_dereflect.safetensors",
                           notes="trained by `pixelforge train configs/dereflect/rrformer_small.yaml` on synthetic "
                                 "pairs from T91 + BSDS200-train"),
}


@register_model
def rrformer(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """RRFormer as released: F 256, self-attention stage off (PEM → MSFEM), pyramid pooling, 1x1 + ReLU output."""
    return _create_rrformer("rrformer", pretrained, **kwargs)


@register_model
def rrformer_small(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """The CPU-sized RRFormer of ``configs/dereflect/rrformer_small.yaml`` (F 32, half-resolution width 64, residual
    3x3 restoration head): the dereflection model ``pixelforge dereflect`` runs by default."""
    args = dict(embed_dim=32, mid_dim=64, head="restore", residual=True, kernel_size=3)
    return _create_rrformer("rrformer_small", pretrained, **{**args, **kwargs})


@register_model
def rrformer_paper(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """RRFormer as the paper describes it: five RSTBs of six Swin blocks (6 heads, window 8) at 240 channels."""
    return _create_rrformer("rrformer_paper", pretrained, **{"sa_depths": (6,) * 5, "sa_num_heads": (6,) * 5,
                                                             **kwargs})

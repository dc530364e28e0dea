"""HAT: Hybrid Attention Transformer for image super-resolution (Chen et al., CVPR 2023, arXiv 2205.04437).

A SwinIR-style residual transformer. Every hybrid attention block (HAB) adds a 0.01-weighted convolutional
channel-attention branch (CAB) beside (shifted) window self-attention; every group ends with an overlapping
cross-attention block (OCAB) whose M×M query windows attend to E×E key/value windows (E = M + int(r·M)).

Faithful to the official code (XPixelGroup/HAT @ 1638a9a), including its quirks:
- the shift mask uses −100, not −inf (``mask_value``; it is built in the compute dtype, so pure fp16/bf16 works);
- OCAB key/value windows are zero-padded at the image border and the zero keys are **not** masked;
- the OCA relative-position index is the official (wrapping) layout, see
  :func:`~pixelforge.layers.window.overlap_relative_position_index`;
- inference pads the input bottom/right with ``reflect`` to a multiple of the window only where needed, and crops
  the output back (``HATModel.pre_process``/``post_process``): ``model(x)`` takes any size.

All attention runs through :func:`pixelforge.kernels.attention` (windows → W, relative bias → ``bias``, shift mask
→ ``mask``). Not supported: ``ape`` (absolute position embedding, False in every release), attention/MLP dropout
(0 in every release).

Tiled inference (:func:`pixelforge.infer.tiling.run_tiled`, tiles kept on the 16-px window grid): HAT-S x4 needs
``HATBackbone.tile_overlap`` = 80 input pixels (the default of ``run_tiled`` and of the CLIs' ``--tile-overlap``) of overlap for tiled output to stay within 1/255 of whole-image output. Measured
on real LR crops (128x128 for tile 64, 192x192 for tiles 96/112), fp32, output clamped to [0, 1] (no trained HAT
weights are available here):
- random weights, official init: 16 px already suffice (tile 64: max 0.65/255; 32 px: 0.21/255; 48 px: 0.03/255);
- random weights with every parameter perturbed (a deliberately sensitive network, output spread like an image):
  tile 64/overlap 16: 40/255, tile 64/32: 23/255, tile 64/48: 5.3/255, tile 96/64: 1.5/255, tile 112/80: 0.55/255.
The official tile mode (``tile_pad`` 32, no blending) is known to cost about 0.15 dB (HAT issue #16).
"""
from __future__ import annotations

import math

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import attention
from ..layers.channel_attention import ChannelAttention
from ..layers.init import init_transformer_weights
from ..layers.linear import linear, linear_add, mlp_residual
from ..layers.precision import full_precision
from ..layers.window import (WindowLayout, gather_relative_position_bias, merge_heads,
                             overlap_relative_position_index, overlapping_windows, pad_to_multiple,
                             relative_position_index, split_heads, window_layout, window_partition, window_reverse)
from ..zoo import CheckpointError, load_weights, register_family, register_model
from .dense import DenseBackbone, DenseImageModel, build_dense_model

__all__ = ["HATBackbone", "checkpoint_filter_fn"]


class CAB(nn.Module):
    """Channel-attention block: conv3x3 (C → C/compress) → GELU → conv3x3 (→ C) → channel attention.

    Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, dim: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        hidden = dim // compress_ratio
        self.cab = nn.Sequential(nn.Conv2d(dim, hidden, 3, 1, 1), nn.GELU(), nn.Conv2d(hidden, dim, 3, 1, 1),
                                 ChannelAttention(dim, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return self.cab(x)


class WindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention with a learned relative-position bias table.

    Args:
        dim: C. num_heads: h. window_size: M. qkv_bias: bias of the qkv projection. qk_scale: overrides d^−0.5.
    Shapes: forward (B, H, W, C) → (B, H, W, C); H, W multiples of M.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 qk_scale: float | None = None):
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rpi: torch.Tensor, layout: WindowLayout,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, H, W, C); rpi (M², M²) index into the table; layout: the (shifted) window partition, whose masked
        windows (last) get the shift mask; residual (B, H, W, C) added to the output (fused into the projection).
        Returns (B, H, W, C)."""
        b, h, w, c = x.shape
        nw, n, free = layout.num_windows, layout.window_tokens, layout.num_unmasked
        qkv = linear(layout.partition(x), self.qkv.weight, self.qkv.bias).view(b, nw, n, 3, self.num_heads,
                                                                               c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # (B, nW, h, M², d) each
        bias = gather_relative_position_bias(self.relative_position_bias_table, rpi)
        if layout.mask is None:
            out = attention(q, k, v, bias=bias, scale=self.scale)
        else:  # the windows inside one shift region skip the (zero) mask
            out = attention(q[:, free:], k[:, free:], v[:, free:], bias=bias, mask=layout.mask, scale=self.scale)
            if free:
                out = torch.cat([attention(q[:, :free], k[:, :free], v[:, :free], bias=bias, scale=self.scale),
                                 out], dim=1)
        # back to the map before the (token-wise) projection, so that the residual add fuses into it
        out = layout.reverse(merge_heads(out), h, w)
        return self.proj(out) if residual is None else linear_add(out, self.proj.weight, self.proj.bias, residual)


class HAB(nn.Module):
    """Hybrid attention block: x + (S)W-MSA(LN x) + conv_scale·CAB(LN x), then x + MLP(LN x).

    Shapes: (B, H, W, C) → (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 drop_path: float = 0.0):
        super().__init__()
        self.shift_size, self.conv_scale = shift_size, conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, qk_scale)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rpi: torch.Tensor, layouts: tuple[WindowLayout, WindowLayout]) -> torch.Tensor:
        """x (B, H, W, C); rpi (M², M²); layouts: (unshifted, shifted-by-M/2 with its mask) window layouts."""
        u = self.norm1(x)
        conv_x = self.conv_block(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        layout = layouts[1] if self.shift_size else layouts[0]
        if self.training and not isinstance(self.drop_path, nn.Identity):
            x = x + self.drop_path(self.attn(u, rpi, layout)) + conv_x * self.conv_scale
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = self.attn(u, rpi, layout, residual=torch.add(x, conv_x, alpha=self.conv_scale))
        return mlp_residual(self.mlp, self.norm2(x), x)


class OCAB(nn.Module):
    """Overlapping cross-attention block: M×M query windows attend to zero-padded E×E key/value windows.

    Args:
        dim: C. num_heads: h. window_size: M. overlap_ratio: r, E = M + int(r·M) (E − M must be even).
    Shapes: (B, H, W, C) → (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, overlap_ratio: float, mlp_ratio: float,
                 qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        span = window_size + self.overlap_win_size - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(span * span, num_heads))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rpi: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C); rpi (M², E²) wrapped OCA index. Returns (B, H, W, C)."""
        b, h, w, c = x.shape
        m, e, nh = self.window_size, self.overlap_win_size, self.num_heads
        qkv = linear(self.norm1(x), self.qkv.weight, self.qkv.bias)  # (B, H, W, 3C)
        q = split_heads(window_partition(qkv[..., :c], m), nh)  # (B, nW, h, M², d)
        kv = overlapping_windows(qkv[..., c:], m, e)  # (B, nW, E², 2C), zero keys/values at the border
        kv = kv.view(b, kv.shape[1], e * e, 2, nh, c // nh).permute(3, 0, 1, 4, 2, 5)
        bias = gather_relative_position_bias(self.relative_position_bias_table, rpi)
        out = attention(q, kv[0], kv[1], bias=bias, scale=self.scale)
        x = linear_add(window_reverse(merge_heads(out), m, h, w), self.proj.weight, self.proj.bias, x)
        return mlp_residual(self.mlp, self.norm2(x), x)


class RHAG(nn.Module):
    """Residual hybrid attention group: x + conv3x3(OCAB(HAB_{depth−1}(… HAB_0(x)))).

    Blocks alternate unshifted / shifted by M/2 (unless ``shift`` is False). Shapes: (B, H, W, C) → (B, H, W, C).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, overlap_ratio: float, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None, drop_path: list[float], resi_connection: str, shift: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(
            HAB(dim, num_heads, window_size, window_size // 2 if (i % 2 and shift) else 0, compress_ratio,
                squeeze_factor, conv_scale, mlp_ratio, qkv_bias, qk_scale, drop_path[i]) for i in range(depth))
        self.overlap_attn = OCAB(dim, num_heads, window_size, overlap_ratio, mlp_ratio, qkv_bias, qk_scale)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, rpi_sa: torch.Tensor, rpi_oca: torch.Tensor,
                layouts: tuple[WindowLayout, WindowLayout]) -> torch.Tensor:
        """x (B, H, W, C) → (B, H, W, C); layouts: (unshifted, shifted) window layouts of the map."""
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        y = x
        for blk in self.blocks:
            y = checkpoint(blk, y, rpi_sa, layouts, use_reentrant=False) if ckpt else blk(y, rpi_sa, layouts)
        y = checkpoint(self.overlap_attn, y, rpi_oca, use_reentrant=False) if ckpt else self.overlap_attn(y, rpi_oca)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


class HATBackbone(DenseBackbone):
    """HAT body: conv_first → LayerNorm → RHAG groups → LayerNorm → conv_after_body, plus the shallow residual.

    Args (official names and meaning):
        in_chans: image channels. embed_dim: C. depths: HABs per group. num_heads: heads per group.
        window_size: M (inputs are padded to a multiple of M). compress_ratio / squeeze_factor: CAB widths
        C/compress and C/squeeze. conv_scale: weight of the CAB branch. overlap_ratio: r of the OCAB key window
        E = M + int(r·M). mlp_ratio: MLP hidden width ratio. qkv_bias, qk_scale: attention projections/scale.
        drop_path_rate: stochastic depth, linear over all HABs (training only). patch_norm: LayerNorm after
        conv_first. resi_connection: ``"1conv"`` or ``"identity"`` (group and body convs). img_size: the official
        nominal size; only ``min(img_size) == window_size`` matters (it disables the shifted windows, as
        officially). mask_value: the shift-mask value (official −100).
    Shapes: forward_features (B, in_chans, H, W) → (B, embed_dim, H, W) with H, W multiples of M.
    """

    tile_overlap = 80  # tiled HAT-S x4 output within 1/255 of whole-image output (module docstring)

    def __init__(self, in_chans: int = 3, embed_dim: int = 180, depths: tuple[int, ...] = (6,) * 6,
                 num_heads: int | tuple[int, ...] = 6, window_size: int = 16, compress_ratio: int = 3,
                 squeeze_factor: int = 30, conv_scale: float = 0.01, overlap_ratio: float = 0.5,
                 mlp_ratio: float = 2.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_path_rate: float = 0.1, patch_norm: bool = True, resi_connection: str = "1conv",
                 img_size: int | tuple[int, int] = 64, mask_value: float = -100.0):
        super().__init__()
        depths = tuple(depths)
        num_heads = (num_heads,) * len(depths) if isinstance(num_heads, int) else tuple(num_heads)
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads {num_heads} and depths {depths} must have the same length")
        if any(embed_dim % h for h in num_heads):
            raise ValueError(f"embed_dim {embed_dim} is not divisible by every num_heads {num_heads}")
        if resi_connection not in ("1conv", "identity"):
            raise ValueError(f"resi_connection must be '1conv' or 'identity', not '{resi_connection}'")
        overlap = int(window_size * overlap_ratio)
        if overlap % 2:
            raise ValueError(f"int(overlap_ratio·window_size) = {overlap} must be even (symmetric OCAB windows)")
        min_size = min(img_size) if isinstance(img_size, (tuple, list)) else img_size
        if min_size < window_size:
            raise ValueError(f"img_size {img_size} smaller than window_size {window_size} is not supported")
        self.in_chans, self.num_features, self.window_size = in_chans, embed_dim, window_size
        self.spatial_multiple = window_size
        self.mask_value = mask_value
        self.shift = min_size > window_size  # official: windows are not shifted when img_size <= window_size
        self.register_buffer("rpi_sa", relative_position_index(window_size), persistent=False)
        self.register_buffer("rpi_oca", overlap_relative_position_index(window_size, window_size + overlap),
                             persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.norm_embed = nn.LayerNorm(embed_dim) if patch_norm else nn.Identity()
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            RHAG(embed_dim, d, h, window_size, compress_ratio, squeeze_factor, conv_scale, overlap_ratio, mlp_ratio,
                 qkv_bias, qk_scale, dpr[sum(depths[:i]):sum(depths[:i + 1])], resi_connection, self.shift)
            for i, (d, h) in enumerate(zip(depths, num_heads)))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" \
            else nn.Identity()
        self.apply(_init_weights)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad bottom/right to a multiple of M, only where needed (official ``HATModel.pre_process``)."""
        return pad_to_multiple(x, self.window_size, mode="reflect")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, in_chans, H, W), H and W multiples of M → (B, embed_dim, H, W)."""
        x = full_precision(self.conv_first, x)  # the long residual stays float32 under autocast
        h, w, m = x.shape[-2], x.shape[-1], self.window_size
        layouts = (window_layout(h, w, m, device=x.device),
                   window_layout(h, w, m, m // 2, self.mask_value, dtype=x.dtype, device=x.device))
        t = self.norm_embed(x.permute(0, 2, 3, 1).contiguous())
        for layer in self.layers:
            t = layer(t, self.rpi_sa, self.rpi_oca, layouts)
        t = self.norm(t)
        return self.conv_after_body(t.permute(0, 3, 1, 2)) + x


def _init_weights(m: nn.Module) -> None:
    """Official init: truncated normal (std 0.02) Linear weights and bias tables, zero biases, unit LayerNorms."""
    init_transformer_weights(m)
    if isinstance(m, (WindowAttention, OCAB)):
        trunc_normal_(m.relative_position_bias_table, std=0.02)


_HEAD_PREFIXES = ("conv_before_upsample.", "upsample.", "conv_last.", "conv_up1.", "conv_up2.", "conv_hr.")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official HAT keys → ours; our own keys pass unchanged.

    ``layers.i.residual_group.X`` → ``backbone.layers.i.X``, ``patch_embed.norm`` → ``backbone.norm_embed``,
    reconstruction modules → ``head.*``, the rest → ``backbone.*``. The index buffers
    (``relative_position_index_SA/OCA``, fixed by the window sizes, i.e. by the table shapes) and any stored
    ``attn_mask`` are computed by the model and dropped.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("backbone.", "head.")):
            out[k] = v
        elif k in ("relative_position_index_SA", "relative_position_index_OCA") or k.endswith("attn_mask"):
            continue
        else:
            k = k.replace(".residual_group.", ".").replace("patch_embed.norm.", "norm_embed.")
            out[("head." if k.startswith(_HEAD_PREFIXES) else "backbone.") + k] = v
    return out


_BACKBONE_ARGS = ("in_chans", "embed_dim", "depths", "num_heads", "window_size", "compress_ratio", "squeeze_factor",
                  "conv_scale", "overlap_ratio", "mlp_ratio", "qkv_bias", "qk_scale", "drop_path_rate", "patch_norm",
                  "resi_connection", "img_size", "mask_value")


def _create_hat(variant: str, pretrained: bool = False, **kwargs) -> DenseImageModel:
    """Official HAT configuration, overridden by ``kwargs`` (backbone args above; head, upscale, upsampler,
    img_range, num_feat and timm/zoo arguments)."""
    defaults = dict(embed_dim=180, depths=(6,) * 6, num_heads=6, window_size=16, compress_ratio=3, squeeze_factor=30,
                    conv_scale=0.01, overlap_ratio=0.5, mlp_ratio=2.0, upscale=4, upsampler="pixelshuffle")
    return build_dense_model(HATBackbone, _BACKBONE_ARGS, variant, pretrained, checkpoint_filter_fn,
                             **{**defaults, **kwargs})


def _official_detect(state: dict) -> bool:
    return "conv_first.weight" in state and "layers.0.residual_group.overlap_attn.qkv.weight" in state


def _official_head(state: dict, in_chans: int) -> dict:
    """Upsampler, scale and width from the reconstruction keys."""
    if "conv_before_upsample.0.weight" in state:
        num_feat = state["conv_before_upsample.0.weight"].shape[0]
        if "conv_up1.weight" in state:
            return dict(upsampler="nearest+conv", num_feat=num_feat, upscale=4 if "conv_up2.weight" in state else 2)
        convs = sorted(int(k.split(".")[1]) for k in state if k.startswith("upsample.") and k.endswith(".weight"))
        out = state[f"upsample.{convs[0]}.weight"].shape[0]
        upscale = 3 if out == 9 * num_feat else 2 ** len(convs)
        return dict(upsampler="pixelshuffle", num_feat=num_feat, upscale=upscale)
    if "upsample.0.weight" in state:
        upscale = int(round(math.sqrt(state["upsample.0.weight"].shape[0] / in_chans)))
        return dict(upsampler="pixelshuffledirect", upscale=upscale)
    raise CheckpointError("HAT checkpoint without reconstruction modules (upsampler '' returns its input); "
                          "nothing to build")


def _ratio(total: int, part: int, given, name: str) -> int:
    """The official integer ratio r with total // r == part, preferring the configured one."""
    if given is not None and total // int(given) == part:
        return int(given)
    if total % part:
        raise CheckpointError(f"cannot infer {name} from widths {total} and {part}; pass it in config")
    return total // part


def _official_build(state: dict, config: dict) -> DenseImageModel:
    """Infer C, depths, heads, M, r, CAB widths, MLP ratio, qkv bias, norms, residual convs and the head from the
    shapes; conv_scale, qk_scale, img_range, img_size and drop_path_rate come from ``config``."""
    embed_dim, in_chans = state["conv_first.weight"].shape[:2]
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    depths, heads = [], []
    for i in range(n_layers):
        pre = f"layers.{i}.residual_group.blocks."
        depths.append(1 + max(int(k[len(pre):].split(".")[0]) for k in state if k.startswith(pre)))
        heads.append(state[f"{pre}0.attn.relative_position_bias_table"].shape[1])
    blk = "layers.0.residual_group.blocks.0."
    if "relative_position_index_SA" in state:
        window = int(round(math.sqrt(state["relative_position_index_SA"].shape[0])))
    else:
        window = (int(round(math.sqrt(state[blk + "attn.relative_position_bias_table"].shape[0]))) + 1) // 2
    if "relative_position_index_OCA" in state:
        ext = int(round(math.sqrt(state["relative_position_index_OCA"].shape[1])))
    else:
        span = int(round(math.sqrt(state["layers.0.residual_group.overlap_attn.relative_position_bias_table"]
                                   .shape[0])))
        ext = span - window + 1
    hidden_mlp = state[blk + "mlp.fc1.weight"].shape[0]
    mlp_ratio = config.get("mlp_ratio", 4.0)
    if int(embed_dim * mlp_ratio) != hidden_mlp:
        mlp_ratio = hidden_mlp / embed_dim
    bb = dict(
        in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window,
        overlap_ratio=(ext - window) / window, mlp_ratio=mlp_ratio,
        compress_ratio=_ratio(embed_dim, state[blk + "conv_block.cab.0.weight"].shape[0],
                              config.get("compress_ratio"), "compress_ratio"),
        squeeze_factor=_ratio(embed_dim, state[blk + "conv_block.cab.3.attention.1.weight"].shape[0],
                              config.get("squeeze_factor"), "squeeze_factor"),
        qkv_bias=blk + "attn.qkv.bias" in state, patch_norm="patch_embed.norm.weight" in state,
        resi_connection="1conv" if "conv_after_body.weight" in state else "identity",
        conv_scale=float(config.get("conv_scale", 0.01)), qk_scale=config.get("qk_scale"),
        drop_path_rate=float(config.get("drop_path_rate", 0.1)), img_size=config.get("img_size", 64))
    model = DenseImageModel(HATBackbone(**bb), out_chans=in_chans, img_range=float(config.get("img_range", 1.0)),
                            **_official_head(state, in_chans))
    return load_weights(model, state, checkpoint_filter_fn)


register_family("hat", _official_detect, _official_build, wrapper="params_ema")


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "license": "apache-2.0",
            "paper_ids": "arXiv:2205.04437", "notes": "official release (not bundled): put the file in "
            "$PIXELFORGE_HOME/weights for pretrained=True", **kwargs}


default_cfgs = {
    **{f"hat_x{s}": _cfg(file=f"HAT_SRx{s}.pth") for s in (2, 3, 4)},
    **{f"hat_s_x{s}": _cfg(file=f"HAT-S_SRx{s}.pth") for s in (2, 3, 4)},
    **{f"hat_l_x{s}": _cfg(file=f"HAT-L_SRx{s}_ImageNet-pretrain.pth") for s in (2, 3, 4)},
}

_HAT_S = dict(embed_dim=144, compress_ratio=24, squeeze_factor=24)
_HAT_L = dict(depths=(6,) * 12, num_heads=6)


@register_model
def hat_x2(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT x2: C 180, 6 groups x 6 HABs, 6 heads, window 16, overlap 0.5, CAB 3/30 (20.6 M params)."""
    return _create_hat("hat_x2", pretrained, **{"upscale": 2, **kwargs})


@register_model
def hat_x3(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT x3."""
    return _create_hat("hat_x3", pretrained, **{"upscale": 3, **kwargs})


@register_model
def hat_x4(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT x4 (also the network of Real_HAT_GAN_SRx4)."""
    return _create_hat("hat_x4", pretrained, **{"upscale": 4, **kwargs})


@register_model
def hat_s_x2(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT-S x2: C 144, CAB compress 24 / squeeze 24 (9.5 M params)."""
    return _create_hat("hat_s_x2", pretrained, **{**_HAT_S, "upscale": 2, **kwargs})


@register_model
def hat_s_x3(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT-S x3."""
    return _create_hat("hat_s_x3", pretrained, **{**_HAT_S, "upscale": 3, **kwargs})


@register_model
def hat_s_x4(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT-S x4."""
    return _create_hat("hat_s_x4", pretrained, **{**_HAT_S, "upscale": 4, **kwargs})


@register_model
def hat_l_x2(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT-L x2: 12 groups x 6 HABs (40.7 M params)."""
    return _create_hat("hat_l_x2", pretrained, **{**_HAT_L, "upscale": 2, **kwargs})


@register_model
def hat_l_x3(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT-L x3."""
    return _create_hat("hat_l_x3", pretrained, **{**_HAT_L, "upscale": 3, **kwargs})


@register_model
def hat_l_x4(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """HAT-L x4."""
    return _create_hat("hat_l_x4", pretrained, **{**_HAT_L, "upscale": 4, **kwargs})

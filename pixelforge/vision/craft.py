"""CRAFT: Cross-Refinement Adaptive Fusion Transformer for lightweight SR (Li et al., ICCV 2023).

Every cross-refinement fusion block (CRFB) combines, per step k:
- two shift-rectangle-window attention blocks (SRWAB; unshifted then shifted) on the tokens — half of the channels
  in a×b windows (H-Rwin), half in b×a windows (V-Rwin), plus a depthwise-conv locality term (LCM) on v;
- a high-frequency enhancement residual block (HFERB) on **the same input** (conv branch + max-pool branch);
- a hybrid fusion block (HFB): Restormer-style channel ("transposed") attention whose queries come from the
  high-frequency branch and keys/values from the attention branch, then a gated depthwise FFN.

Faithful to the official code (AVC2-UESTC/CRAFT-SR @ 10370eb), including its quirks:
- shifted rectangle windows wrap around the border **without** an attention mask;
- the dynamic position bias (an MLP over relative offsets, width p = ((C/2)//4)//4) is computed in full. At the
  official width C = 48, p = 1 and its LayerNorm makes it a per-head constant, i.e. inert; from C = 64 on it varies
  with position;
- inference pads as ``inference/inference_CRAFT.py`` does (``pad_mode="script"``, the default and the protocol of
  the published numbers): **always** 1…16 rows/columns, even when the size already is a multiple of 16, by appending
  the mirrored image (edge repeated). ``pad_mode="reflect"`` is the BasicSR validation protocol (``CRAFT_Model.test``:
  reflect, only where needed). The HFB attention is global, so the two give different outputs.

All attention runs through :func:`pixelforge.kernels.attention`: the window attention with W = windows and the
dynamic bias as ``bias``; the HFB channel attention as global attention (W = 1) whose tokens are channels and whose
feature dimension is H·W, with the per-head temperature folded into the L2-normalised queries (scale 1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import attention
from ..layers.init import init_transformer_weights
from ..layers.linear import conv1x1, linear, linear_add, mlp_residual
from ..layers.precision import full_precision
from ..layers.window import (WindowLayout, gather_relative_position_bias, merge_heads, pad_to_multiple,
                             relative_coordinates, relative_position_index, window_layout)
from ..zoo import CheckpointError, load_weights, register_family, register_model
from .dense import DenseBackbone, DenseImageModel, build_dense_model

__all__ = ["CRAFTBackbone", "checkpoint_filter_fn"]

PAD_MODES = ("script", "reflect")


class DynamicPosBias(nn.Module):
    """Relative-position bias MLP: Linear(2 → p), then 3 × [LayerNorm(p) → ReLU → Linear] (last one → heads).

    Shapes: offsets (T, 2) float → (T, heads).
    """

    def __init__(self, pos_dim: int, num_heads: int):
        super().__init__()
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(inplace=True), nn.Linear(pos_dim, pos_dim))
        self.pos2 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(inplace=True), nn.Linear(pos_dim, pos_dim))
        self.pos3 = nn.Sequential(nn.LayerNorm(pos_dim), nn.ReLU(inplace=True), nn.Linear(pos_dim, num_heads))

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        """(T, 2) → (T, heads)."""
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


class RectWindowAttention(nn.Module):
    """Self-attention in wh×ww rectangle windows with a dynamic relative-position bias (one SRWAB branch).

    Args:
        dim: channels of the branch (C/2). num_heads: heads of the branch. window: (wh, ww).
        qk_scale: overrides (dim/heads)^−0.5.
    Shapes: forward qkv (B, H, W, 3, dim) → (B, H, W, dim).
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], qk_scale: float | None = None):
        super().__init__()
        pos_dim = (dim // 4) // 4
        if pos_dim < 1:
            raise ValueError(f"CRAFT needs embed_dim >= 32 (its position-bias MLP has width ((C/2)//4)//4, "
                             f"which is 0 for a branch of {dim} channels)")
        self.num_heads, self.window = num_heads, window
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.pos = DynamicPosBias(pos_dim, num_heads)

    def forward(self, qkv: torch.Tensor, offsets: torch.Tensor, rpi: torch.Tensor,
                layout: WindowLayout) -> torch.Tensor:
        """qkv (B, H, W, 3, dim); offsets (T, 2) relative offsets; rpi (N, N) index into them; layout: the window
        partition of this branch (cyclically shifted or not, never masked). Returns (B, H, W, dim)."""
        b, h, w, _, c = qkv.shape
        win = layout.partition(qkv)  # (B, nW, N, 3, dim)
        nw, n = layout.num_windows, layout.window_tokens
        q, k, v = win.view(b, nw, n, 3, self.num_heads, c // self.num_heads).permute(3, 0, 1, 4, 2, 5)
        bias = gather_relative_position_bias(self.pos(offsets), rpi)
        return layout.reverse(merge_heads(attention(q, k, v, bias=bias, scale=self.scale)), h, w)


class SRWAB(nn.Module):
    """Shift rectangle-window attention block: x + proj([H-Rwin ‖ V-Rwin](LN x) + LCM(v)), then x + MLP(LN x).

    Args:
        dim: C. num_heads: h (each branch gets h // 2 on C/2 channels). split_size: (a, b); the H branch uses a×b
        windows, the V branch b×a. shift: shift by (a/2, b/2) (H branch) and (b/2, a/2) (V branch), no mask.
    Shapes: (B, H, W, C) → (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, split_size: tuple[int, int], shift: bool, mlp_ratio: float,
                 qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__()
        a, b = split_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.get_v = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.attns = nn.ModuleList([RectWindowAttention(dim // 2, num_heads // 2, (a, b), qk_scale),
                                    RectWindowAttention(dim // 2, num_heads // 2, (b, a), qk_scale)])
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: dict) -> torch.Tensor:
        """x (B, H, W, C); pos: ``offsets_h/v`` (T, 2), ``rpi_h/v`` (N, N) and the window layouts ``layout_h/v``
        (unshifted, shifted) of the two branches. Returns (B, H, W, C)."""
        b, h, w, c = x.shape
        qkv = linear(self.norm1(x), self.qkv.weight, self.qkv.bias).view(b, h, w, 3, c)
        lcm = self.get_v(qkv[..., 2, :].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # on the unshifted v
        x1 = self.attns[0](qkv[..., : c // 2], pos["offsets_h"], pos["rpi_h"], pos["layout_h"][self.shift])
        x2 = self.attns[1](qkv[..., c // 2:], pos["offsets_v"], pos["rpi_v"], pos["layout_v"][self.shift])
        x = linear_add(torch.cat([x1, x2], dim=-1) + lcm, self.proj.weight, self.proj.bias, x)
        return mlp_residual(self.mlp, self.norm2(x), x)


class HFERB(nn.Module):
    """High-frequency enhancement residual block: x + conv1x1([GELU(conv3x3(x₁)) ‖ GELU(conv1x1(maxpool3(x₂)))]).

    x₁, x₂ are the two channel halves. Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.mid_dim = dim // 2
        self.conv = nn.Conv2d(self.mid_dim, self.mid_dim, 3, 1, 1)
        self.max_pool = nn.MaxPool2d(3, 1, 1)
        self.fc = nn.Conv2d(self.mid_dim, self.mid_dim, 1)
        self.act = nn.GELU()
        self.last_fc = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        x = x.contiguous(memory_format=torch.channels_last)  # max-pooling channels-last is several times faster
        lfe = self.act(self.conv(x[:, : self.mid_dim]))
        hfe = conv1x1(self.max_pool(x[:, self.mid_dim:]), self.fc, "gelu")
        cat = torch.cat([lfe, hfe], dim=1).permute(0, 2, 3, 1)
        return linear_add(cat, self.last_fc.weight.flatten(1), self.last_fc.bias, x.permute(0, 2, 3, 1)
                          ).permute(0, 3, 1, 2)


def _conv1x1_add(x: torch.Tensor, conv: nn.Conv2d, residual: torch.Tensor | None) -> torch.Tensor:
    """conv(x) (+ residual) for a 1x1 conv, the add fused into the product: (B, C, H, W) → channels-last."""
    if residual is None:
        return conv1x1(x, conv)
    residual = residual.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    return linear_add(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias, residual).permute(0, 3, 1, 2)


class ChannelCrossAttention(nn.Module):
    """HFB attention: per head, softmax over channels of (q̂·k̂ᵀ)·temperature, times v (Restormer's MDTA).

    q = dw3x3(conv1x1(high)), (k, v) = split(dw3x3(conv1x1(low))), q̂/k̂ L2-normalised over H·W; no conv biases.
    Global over the image: padding content influences every output. Shapes: low, high (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, 1, 1, groups=dim * 2, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, low: torch.Tensor, high: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """low (normalised attention-branch features), high (B, C, H, W) → (B, C, H, W); ``residual`` (B, C, H, W),
        if given, is added to the output (fused into project_out)."""
        b, c, h, w = low.shape
        q = self.q_dwconv(conv1x1(high, self.q)).reshape(b, 1, self.num_heads, c // self.num_heads, h * w)
        k, v = self.kv_dwconv(conv1x1(low, self.kv)).reshape(b, 2, 1, self.num_heads, c // self.num_heads,
                                                             h * w).unbind(1)
        q = F.normalize(q, dim=-1) * self.temperature.to(q.dtype)
        out = attention(q, F.normalize(k, dim=-1), v, scale=1.0)  # tokens = channels, features = pixels
        return _conv1x1_add(out.reshape(b, c, h, w), self.project_out, residual)


class GatedDwFFN(nn.Module):
    """Restormer's gated depthwise FFN: project_out(GELU(x₁) · x₂), (x₁, x₂) = split(dw3x3(conv1x1(x))).

    Hidden width int(C · expansion); no biases. Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, dim: int, expansion: float):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W), plus ``residual`` if given (fused into project_out)."""
        x1, x2 = self.dwconv(conv1x1(x, self.project_in)).chunk(2, dim=1)
        return _conv1x1_add(F.gelu(x1) * x2, self.project_out, residual)


class HFB(nn.Module):
    """Hybrid fusion block: x = low + Attn(LN low, high); x + FFN(LN x). Channel LayerNorms (eps 1e-5).

    Shapes: low, high (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-5)
        self.attn = ChannelCrossAttention(dim, num_heads)
        self.norm2 = LayerNorm2d(dim, eps=1e-5)
        self.ffn = GatedDwFFN(dim, ffn_expansion_factor)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """low, high (B, C, H, W) → (B, C, H, W)."""
        x = self.attn(self.norm1(low), high, residual=low)
        return self.ffn(self.norm2(x), residual=x)


class RCRFG(nn.Module):
    """Residual cross-refinement fusion group: x + conv3x3(CRFB(x)), CRFB = ``depth`` fusion steps.

    Step k: low = SRWAB_{2k+1}(SRWAB_{2k}(x)); high = HFERB_k(x); x = HFB_k(low, high).
    Shapes: (B, C, H, W) → (B, C, H, W), H and W multiples of a and b.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, split_size: tuple[int, int], mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, ffn_expansion_factor: float, resi_connection: str):
        super().__init__()
        self.srwa_blocks = nn.ModuleList(SRWAB(dim, num_heads, split_size, i % 2 == 1, mlp_ratio, qkv_bias, qk_scale)
                                         for i in range(2 * depth))
        self.hfer_blocks = nn.ModuleList(HFERB(dim) for _ in range(depth))
        self.hf_blocks = nn.ModuleList(HFB(dim, num_heads, ffn_expansion_factor) for _ in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if resi_connection == "1conv" else nn.Identity()
        self.grad_checkpointing = False

    def _step(self, x: torch.Tensor, i: int, pos: dict[str, torch.Tensor]) -> torch.Tensor:
        low = x.permute(0, 2, 3, 1)
        low = self.srwa_blocks[2 * i + 1](self.srwa_blocks[2 * i](low, pos), pos).permute(0, 3, 1, 2)
        return self.hf_blocks[i](low, self.hfer_blocks[i](x))

    def forward(self, x: torch.Tensor, pos: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        y = x
        for i in range(len(self.hf_blocks)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                y = checkpoint(self._step, y, i, pos, use_reentrant=False)
            else:
                y = self._step(y, i, pos)
        return self.conv(y) + x


class CRAFTBackbone(DenseBackbone):
    """CRAFT body: conv_first → RCRFG groups → channel LayerNorm → conv_after_body, plus the shallow residual.

    Args (official names):
        in_chans: image channels. embed_dim: C (≥ 32). depths: fusion steps per group (2·depth SRWABs).
        num_heads: heads per group (HFB; each SRWAB branch gets half). split_size_0, split_size_1: a, b of the
        a×b / b×a rectangle windows. mlp_ratio: SRWAB MLP ratio. qkv_bias, qk_scale: SRWAB projections/scale.
        resi_connection: ``"1conv"`` or ``"identity"``. ffn_expansion_factor: HFB FFN ratio (official 2.66).
        window_size: padding multiple of the official inference script (16); the padding multiple is
        lcm(window_size, a, b). pad_mode: ``"script"`` (always pad 1…m rows/columns by edge-repeating mirror,
        inference_CRAFT.py) or ``"reflect"`` (reflect, only where needed, CRAFT_Model.test).
    Shapes: forward_features (B, in_chans, H, W) → (B, embed_dim, H, W), H and W multiples of lcm(a, b).
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 48, depths: tuple[int, ...] = (2, 2, 2, 2),
                 num_heads: int | tuple[int, ...] = 6, split_size_0: int = 4, split_size_1: int = 16,
                 mlp_ratio: float = 2.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 resi_connection: str = "1conv", ffn_expansion_factor: float = 2.66, window_size: int = 16,
                 pad_mode: str = "script"):
        super().__init__()
        depths = tuple(depths)
        num_heads = (num_heads,) * len(depths) if isinstance(num_heads, int) else tuple(num_heads)
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads {num_heads} and depths {depths} must have the same length")
        if any(h < 2 or embed_dim % h or (embed_dim // 2) % (h // 2) for h in num_heads):
            raise ValueError(f"every num_heads {num_heads} must be >= 2, divide embed_dim {embed_dim}, and its half "
                             f"divide embed_dim / 2")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"unknown pad_mode '{pad_mode}'; choose from {PAD_MODES}")
        if resi_connection not in ("1conv", "identity"):
            raise ValueError(f"resi_connection must be '1conv' or 'identity', not '{resi_connection}'")
        a, b = split_size_0, split_size_1
        self.in_chans, self.num_features, self.split_size = in_chans, embed_dim, (a, b)
        self.spatial_multiple = math.lcm(window_size, a, b)
        self.pad_mode = pad_mode
        self.register_buffer("offsets_h", relative_coordinates((a, b)), persistent=False)
        self.register_buffer("offsets_v", relative_coordinates((b, a)), persistent=False)
        self.register_buffer("rpi_h", relative_position_index((a, b)), persistent=False)
        self.register_buffer("rpi_v", relative_position_index((b, a)), persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.layers = nn.ModuleList(
            RCRFG(embed_dim, d, h, (a, b), mlp_ratio, qkv_bias, qk_scale, ffn_expansion_factor, resi_connection)
            for d, h in zip(depths, num_heads))
        self.norm = LayerNorm2d(embed_dim, eps=1e-5)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == "1conv" \
            else nn.Identity()
        self.apply(init_transformer_weights)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """``script``: mirror-pad (edge repeated) bottom/right to the *next* multiple, always (1…m px);
        ``reflect``: reflect-pad only where needed."""
        if self.pad_mode == "script":
            return pad_to_multiple(x, self.spatial_multiple, mode="symmetric", always=True)
        return pad_to_multiple(x, self.spatial_multiple, mode="reflect")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, in_chans, H, W), H and W multiples of lcm(a, b) → (B, embed_dim, H, W)."""
        (a, b), (h, w), dev = self.split_size, x.shape[-2:], x.device
        pos = {"offsets_h": self.offsets_h.to(x.dtype), "offsets_v": self.offsets_v.to(x.dtype),
               "rpi_h": self.rpi_h, "rpi_v": self.rpi_v,
               "layout_h": (window_layout(h, w, (a, b), device=dev),
                            window_layout(h, w, (a, b), (a // 2, b // 2), device=dev)),
               "layout_v": (window_layout(h, w, (b, a), device=dev),
                            window_layout(h, w, (b, a), (b // 2, a // 2), device=dev))}
        # the long residual stays float32 under autocast; channels-last, so the token-major blocks read it in place
        x = full_precision(self.conv_first, x).contiguous(memory_format=torch.channels_last)
        y = x
        for layer in self.layers:
            y = layer(y, pos)
        return self.conv_after_body(self.norm(y)) + x


_BUFFERS = ("relative_position_index_h", "relative_position_index_v", "biases_h", "biases_v")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official CRAFT keys → ours; our own keys pass unchanged.

    ``layers.i.residual_group.X`` → ``backbone.layers.i.X``, channel LayerNorms lose their ``.body`` level,
    ``upsample.*`` goes to ``head.``, the rest to ``backbone.``.
    The coordinate/index buffers (``biases_h/v``, ``relative_position_index_h/v``) are computed by the model and
    dropped; a ``biases_h`` table of another window than the model's (e.g. 16x4 vs 4x16: same shapes, so the load
    would otherwise succeed) is an error.
    """
    backbone = model.backbone if hasattr(model, "backbone") else model
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("backbone.", "head.")):
            out[k] = v
        elif k in _BUFFERS:
            split = _split_from_biases(v) if k == "biases_h" else None
            if split is not None and split != backbone.split_size:
                raise CheckpointError(f"the checkpoint's windows {split} differ from the model's "
                                      f"{backbone.split_size} (split_size_0, split_size_1)")
        else:
            k = k.replace(".residual_group.", ".").replace(".body.", ".")
            out[("head." if k.startswith("upsample.") else "backbone.") + k] = v
    return out


def _split_from_biases(biases_h: torch.Tensor) -> tuple[int, int] | None:
    """(a, b) from the official coordinate table (a = max Δy + 1, b = max Δx + 1), or None when the tensor is not
    such a table (e.g. a placeholder)."""
    if biases_h.ndim != 2 or biases_h.shape[1] != 2 or not biases_h.is_floating_point():
        return None
    split = int(biases_h[:, 0].max()) + 1, int(biases_h[:, 1].max()) + 1
    if min(split) < 1:
        return None
    table = relative_coordinates(split)
    valid = biases_h.shape == table.shape and torch.equal(biases_h.float().cpu(), table)
    return split if valid else None


_BACKBONE_ARGS = ("in_chans", "embed_dim", "depths", "num_heads", "split_size_0", "split_size_1", "mlp_ratio",
                  "qkv_bias", "qk_scale", "resi_connection", "ffn_expansion_factor", "window_size", "pad_mode")


def _create_craft(variant: str, pretrained: bool = False, **kwargs) -> DenseImageModel:
    """Official CRAFT configuration overridden by ``kwargs`` (backbone args above; head, upscale, upsampler,
    img_range and timm/zoo arguments). The official reconstruction is one conv + PixelShuffle."""
    defaults = dict(embed_dim=48, depths=(2, 2, 2, 2), num_heads=6, split_size_0=4, split_size_1=16, mlp_ratio=2.0,
                    upscale=4, upsampler="pixelshuffledirect")
    return build_dense_model(CRAFTBackbone, _BACKBONE_ARGS, variant, pretrained, checkpoint_filter_fn,
                             **{**defaults, **kwargs})


def _official_detect(state: dict) -> bool:
    return "conv_first.weight" in state and "layers.0.residual_group.srwa_blocks.0.qkv.weight" in state


def _official_build(state: dict, config: dict) -> DenseImageModel:
    """Infer C, depths, heads, (a, b) (from the values of ``biases_h``), MLP/FFN widths, qkv bias, residual convs
    and the scale from the checkpoint; img_range, window_size (padding multiple) and pad_mode from ``config``."""
    embed_dim, in_chans = state["conv_first.weight"].shape[:2]
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    depths, heads = [], []
    for i in range(n_layers):
        pre = f"layers.{i}.residual_group.hf_blocks."
        depths.append(1 + max(int(k[len(pre):].split(".")[0]) for k in state if k.startswith(pre)))
        heads.append(state[f"{pre}0.attn.temperature"].shape[0])
    split = _split_from_biases(state["biases_h"]) if "biases_h" in state else None
    a, b = split or (int(config.get("split_size_0", 4)), int(config.get("split_size_1", 16)))
    blk = "layers.0.residual_group."
    hidden_mlp = state[blk + "srwa_blocks.0.mlp.fc1.weight"].shape[0]
    mlp_ratio = config.get("mlp_ratio", 2.0)
    if int(embed_dim * mlp_ratio) != hidden_mlp:
        mlp_ratio = hidden_mlp / embed_dim
    hidden_ffn = state[blk + "hf_blocks.0.ffn.project_out.weight"].shape[1]
    ffn = 2.66 if int(embed_dim * 2.66) == hidden_ffn else hidden_ffn / embed_dim
    upscale = int(round(math.sqrt(state["upsample.0.weight"].shape[0] / in_chans)))
    bb = dict(in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=heads, split_size_0=a,
              split_size_1=b, mlp_ratio=mlp_ratio, qkv_bias=blk + "srwa_blocks.0.qkv.bias" in state,
              qk_scale=config.get("qk_scale"), ffn_expansion_factor=ffn,
              resi_connection="1conv" if "conv_after_body.weight" in state else "identity",
              window_size=int(config.get("window_size", 16)), pad_mode=config.get("pad_mode", "script"))
    model = DenseImageModel(CRAFTBackbone(**bb), out_chans=in_chans, img_range=float(config.get("img_range", 1.0)),
                            upscale=upscale, upsampler="pixelshuffledirect")
    return load_weights(model, state, checkpoint_filter_fn)


register_family("craft", _official_detect, _official_build, wrapper="params_ema")


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "license": "apache-2.0",
            "paper_ids": "ICCV 2023 (Li et al., Feature Modulation Transformer)", "notes": "official release (not "
            "bundled): put the file in $PIXELFORGE_HOME/weights for pretrained=True", **kwargs}


default_cfgs = {f"craft_x{s}": _cfg(file=f"CRAFT_MODEL_X{s}.pth") for s in (2, 3, 4)}


@register_model
def craft_x2(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CRAFT x2: C 48, 4 groups x depth 2, 6 heads, windows 4x16 / 16x4 (0.74 M params)."""
    return _create_craft("craft_x2", pretrained, **{"upscale": 2, **kwargs})


@register_model
def craft_x3(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CRAFT x3."""
    return _create_craft("craft_x3", pretrained, **{"upscale": 3, **kwargs})


@register_model
def craft_x4(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CRAFT x4."""
    return _create_craft("craft_x4", pretrained, **{"upscale": 4, **kwargs})

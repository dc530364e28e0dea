"""Vim: Vision Mamba (Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State
Space Model", ICML 2024, arXiv 2401.09417) — the released design: bidirectional Mamba ("bimamba v2") mixers, a
middle class token, RMSNorm, a float32 residual stream ("Add → Norm → Mixer") and forward + backward outputs
averaged before the output projection.

Both scan directions go through the shared :func:`pixelforge.kernels.selective_scan`; the backward direction uses
``reverse=True`` with an anti-causal depthwise conv instead of flipped copies of the sequence. Pure PyTorch: no
CUDA extension, causal-conv1d or Triton RMSNorm is needed, and the CPU path is the shared op's fast path.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, RmsNorm, lecun_normal_, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import selective_scan
from ..layers.linear import linear
from ..layers.pos_embed import resample_grid_pos_embed
from ..zoo import CheckpointError, build_model, load_weights, register_family, register_model

__all__ = ["Vim", "BiMambaMixer", "checkpoint_filter_fn"]


class MambaDirection(nn.Module):
    """One scan direction of the bidirectional mixer: depthwise conv → SiLU → x_proj (dt | B | C) → dt_proj → scan.

    The forward direction has a causal conv (position t sees x[t-K+1..t]) and scans left to right; the backward
    direction (``reverse=True``) an anti-causal conv (x[t..t+K-1], kernel taps mirrored) and scans right to left —
    exactly the reference's flip → causal branch → flip back.

    Shapes: x, z (B, d_inner, L) → (B, d_inner, L) = (scan + D·x_c) · SiLU(z).
    """

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, d_conv: int, reverse: bool,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.reverse, self.dt_rank, self.d_state = reverse, dt_rank, d_state
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        std = dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise conv as K shifted multiply-adds (no padded copy, no flipped kernel), in x's memory layout:
        causal y[t] = bias + Σ_k w[k]·x[t-K+1+k]; reverse: anti-causal y[t] = bias + Σ_k w[k]·x[t+K-1-k].
        x (B, d_inner, L) → (B, d_inner, L)."""
        w = self.conv1d.weight.flatten(1)  # (d_inner, K)
        K, L = w.shape[1], x.shape[-1]
        y = torch.addcmul(self.conv1d.bias[:, None], x, w[:, K - 1:K])
        for k in range(K - 1):
            s = K - 1 - k  # the tap's distance from t
            if s >= L:
                continue
            if self.reverse:
                y[..., :L - s].addcmul_(x[..., s:], w[:, k:k + 1])
            else:
                y[..., s:].addcmul_(x[..., :L - s], w[:, k:k + 1])
        return y

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z (B, d_inner, L) → (B, d_inner, L). Works in the memory layout of the inputs: with x a transposed
        view of token-major (B, L, d_inner) memory, as the mixer passes it, no step copies."""
        xc = F.silu(self.conv(x), inplace=True)
        x_dbl = linear(xc.transpose(1, 2), self.x_proj.weight)  # (B, L, dt_rank + 2N)
        dt, b, c = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); bias applied in the scan
        return selective_scan(xc, delta, -torch.exp(self.A_log.float()), b.transpose(1, 2), c.transpose(1, 2),
                              self.D.float(), z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                              reverse=self.reverse)


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer: out_proj((fwd(x, z) + bwd(x, z)) / 2) with [x | z] = in_proj(h).

    ``in_proj``, ``out_proj`` and the gate z are shared by the directions; conv, x_proj, dt_proj, A and D are not.

    Shapes: (B, L, dim) → (B, L, dim).
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: float = 2, dt_rank: int | None = None):
        super().__init__()
        d_inner = int(expand * dim)
        dt_rank = dt_rank or math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.fwd = MambaDirection(d_inner, d_state, dt_rank, d_conv, reverse=False)
        self.bwd = MambaDirection(d_inner, d_state, dt_rank, d_conv, reverse=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) → (B, L, dim)."""
        x, z = linear(h, self.in_proj.weight).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) views: x, then z
        y = self.fwd(x, z) + self.bwd(x, z)
        return linear(y.transpose(1, 2) / 2, self.out_proj.weight)


class VimLayer(nn.Module):
    """Add → RMSNorm → mixer on a float32 residual stream.

    ``residual = h (first layer) or residual + DropPath(h)``, then ``h = mixer(norm(residual))``.
    Shapes: h (B, L, dim), residual (B, L, dim) float32 or None → (h, residual).
    """

    def __init__(self, dim: int, d_state: int, d_conv: int, expand: float, dt_rank: int | None,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm = RmsNorm(dim, eps=1e-5)
        self.mixer = BiMambaMixer(dim, d_state, d_conv, expand, dt_rank)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, residual) → (mixer output, updated float32 residual)."""
        residual = h.float() if residual is None else residual + self.drop_path(h)
        return self.mixer(self.norm(residual)), residual


class Vim(nn.Module):
    """Vision Mamba classifier with a middle class token.

    Args:
        img_size: square input side (inputs must have exactly this size: the positional embedding fixes it).
        patch_size, stride: patch conv kernel and stride (stride 8 gives the overlapping "+" variants).
        in_chans, num_classes: input channels and classes (0: no classifier).
        embed_dim, depth: width D and layers.
        d_state, d_conv, expand, dt_rank: Mamba mixer settings (dt_rank None: ⌈D / 16⌉).
        drop_rate: dropout after the positional embedding.
        drop_path_rate: stochastic depth; layer i drops its incoming mixer output with ([0] + linspace(0, rate,
            depth))[i], the final add with ``rate``.

    The class token sits at index M // 2 of the M + 1 tokens (M patches), before the positional embedding is added;
    the head reads that token after the final RMSNorm.

    Shapes: (B, in_chans, img_size, img_size) → (B, num_classes).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, stride: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 192, depth: int = 24, d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, dt_rank: int | None = None, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1):
        super().__init__()
        self.img_size, self.num_classes = img_size, num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        g = (img_size - patch_size) // stride + 1
        self.grid_size = (g, g)
        self.num_patches = g * g
        self.cls_index = self.num_patches // 2
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList(VimLayer(embed_dim, d_state, d_conv, expand, dt_rank, dpr[i])
                                    for i in range(depth))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RmsNorm(embed_dim, eps=1e-5)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=stride, module=f"layers.{i}") for i in range(depth)]
        self.grad_checkpointing = False
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        lecun_normal_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for layer in self.layers:  # GPT-2 style rescale of the residual output projections
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(depth)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay (``param_groups_layer_decay``): embeddings, then each Mamba
        layer, then the final norm; the classifier is last."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (the middle class token is the only pooling)."""
        if global_pool not in (None, "token"):
            raise ValueError(f"Vim classifies its middle class token; global_pool={global_pool!r} is not supported")
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"input size {tuple(x.shape[-2:])} does not match the model's "
                             f"{self.img_size}x{self.img_size} (pass img_size= to build it for another size)")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        p = self.cls_index
        x = torch.cat([x[:, :p], self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x[:, p:]], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def _layer(self, layer: VimLayer, h: torch.Tensor, residual: torch.Tensor | None):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, h, residual, use_reentrant=False)
        return layer(h, residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → normalised sequence (B, M + 1, D), class token at :attr:`cls_index`."""
        h, residual = self._embed(x), None
        for layer in self.layers:
            h, residual = self._layer(layer, h, residual)
        return self.norm_f(residual + self.drop_path(h))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Sequence (B, M + 1, D) → class-token feature (B, D), or logits (B, num_classes)."""
        x = x[:, self.cls_index]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Residual stream after each wanted layer (residual + mixer output), class token removed.

        Args:
            indices: last n layers (int), the listed layers, or all (None).
            norm: apply the final RMSNorm to each intermediate.
            output_fmt: ``"NCHW"`` (B, D, g, g) or ``"NLC"`` (B, g·g, D).
        Returns:
            the list, or (final normalised sequence, list) unless ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        layers = self.layers[:max_index + 1] if stop_early else self.layers
        b, p = x.shape[0], self.cls_index
        h, residual = self._embed(x), None
        out = []
        for i, layer in enumerate(layers):
            h, residual = self._layer(layer, h, residual)
            if i in take:
                y = residual + h
                y = self.norm_f(y) if norm else y
                y = torch.cat([y[:, :p], y[:, p + 1:]], dim=1)
                out.append(y.transpose(1, 2).reshape(b, -1, *self.grid_size) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return out
        return self.norm_f(residual + self.drop_path(h)), out

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the layers after the last wanted one (and norm / head); returns the absolute indices."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


_DIRECTION_KEYS = {"A_log": "fwd.A_log", "D": "fwd.D", "conv1d": "fwd.conv1d", "x_proj": "fwd.x_proj",
                   "dt_proj": "fwd.dt_proj", "A_b_log": "bwd.A_log", "D_b": "bwd.D", "conv1d_b": "bwd.conv1d",
                   "x_proj_b": "bwd.x_proj", "dt_proj_b": "bwd.dt_proj"}


def checkpoint_filter_fn(state_dict: dict, model: Vim) -> dict:
    """Official Vim keys → ours: per-direction mixer parameters (``A_b_log``, ``conv1d_b`` …) move under
    ``mixer.fwd`` / ``mixer.bwd``; ``patch_embed.proj`` → ``patch_embed``.

    A positional embedding of another length (another resolution or stride) is resized correctly for the middle
    class token: its row is taken out, the grid is interpolated bicubically, and it is put back at the new M // 2.
    Our own keys pass unchanged.
    """
    out = {}
    for k, v in state_dict.items():
        parts = k.split(".")
        if len(parts) > 3 and parts[0] == "layers" and parts[2] == "mixer" and parts[3] in _DIRECTION_KEYS:
            k = ".".join(parts[:3] + [_DIRECTION_KEYS[parts[3]]] + parts[4:])
        elif k.startswith("patch_embed.proj."):
            k = "patch_embed." + k[len("patch_embed.proj."):]
        out[k] = v
    pe = out.get("pos_embed")
    if pe is not None and pe.shape != model.pos_embed.shape:
        m = pe.shape[1] - 1
        out["pos_embed"] = resample_grid_pos_embed(pe, model.grid_size, m // 2, model.cls_index, mode="bicubic")
    return out


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    return build_model(Vim, variant, pretrained, _ARCHS[variant], filter_fn=checkpoint_filter_fn, **kwargs)


def _official_detect(state: dict) -> bool:
    return "layers.0.mixer.A_b_log" in state and "norm_f.weight" in state


# the released design; other settings of the reference class are not implemented (fused_add_norm and
# residual_in_fp32 do not change the float32 computation: the residual is always kept in float32 here)
_RELEASED = dict(rms_norm=True, if_abs_pos_embed=True, if_rope=False, if_rope_residual=False, bimamba_type="v2",
                 if_cls_token=True, if_divide_out=True, use_middle_cls_token=True, if_bidirectional=False,
                 use_double_cls_token=False, if_bimamba=False)


def _official_build(state: dict, config: dict) -> Vim:
    """Width, depth, patch, Mamba sizes and classes from shapes; stride and image size from the official kwargs
    (defaults: stride = patch, image size = the one the positional embedding was made for)."""
    for key, value in _RELEASED.items():
        if key in config and config[key] != value:
            raise CheckpointError(f"Vim with {key}={config[key]!r} is not supported (only the released design: "
                                  f"{key}={value!r})")
    if config.get("init_layer_scale") is not None:
        raise CheckpointError("Vim with init_layer_scale (layer scale) is not supported")
    proj = state["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    stride = config.get("stride", patch)
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    in_proj = state["layers.0.mixer.in_proj.weight"]
    args = dict(
        img_size=config.get("img_size", (grid - 1) * stride + patch), patch_size=patch, stride=stride,
        in_chans=in_chans, num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        embed_dim=embed_dim, depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers.")),
        d_state=state["layers.0.mixer.A_log"].shape[1], d_conv=state["layers.0.mixer.conv1d.weight"].shape[-1],
        expand=in_proj.shape[0] / 2 / embed_dim, dt_rank=state["layers.0.mixer.dt_proj.weight"].shape[1],
        drop_rate=config.get("drop_rate", 0.0), drop_path_rate=config.get("drop_path_rate", 0.1))
    return load_weights(Vim(**args), state, checkpoint_filter_fn)


register_family("vim", _official_detect, _official_build, wrapper="model")

_TINY = dict(embed_dim=192, depth=24)
_SMALL = dict(embed_dim=384, depth=24)
_BASE = dict(embed_dim=768, depth=24)
_OFFICIAL_SUFFIX = "bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
_ARCHS = {
    "vim_tiny_patch16_224": {**_TINY, "stride": 16},
    "vim_tiny_patch16_stride8_224": {**_TINY, "stride": 8},
    "vim_small_patch16_224": {**_SMALL, "stride": 16},
    "vim_small_patch16_stride8_224": {**_SMALL, "stride": 8},
    "vim_base_patch16_224": {**_BASE, "stride": 16},
}
_OFFICIAL_NAMES = {
    f"vim_tiny_patch16_224_{_OFFICIAL_SUFFIX}": "vim_tiny_patch16_224",
    f"vim_tiny_patch16_stride8_224_{_OFFICIAL_SUFFIX}": "vim_tiny_patch16_stride8_224",
    f"vim_small_patch16_224_{_OFFICIAL_SUFFIX}": "vim_small_patch16_224",
    f"vim_small_patch16_stride8_224_{_OFFICIAL_SUFFIX}": "vim_small_patch16_stride8_224",
    "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2": "vim_base_patch16_224",
}
_ARCHS.update({long: _ARCHS[short] for long, short in _OFFICIAL_NAMES.items()})


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 224, 224), "num_classes": 1000, "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "interpolation": "bicubic", "first_conv": "patch_embed",
            "classifier": "head", "license": "apache-2.0", "paper_ids": "arXiv:2401.09417", **kwargs}


default_cfgs = {name: _cfg() for name in _ARCHS}


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-tiny: D 192, 24 layers, patch 16 stride 16 (196 + 1 tokens)."""
    return _create_vim("vim_tiny_patch16_224", pretrained, **kwargs)


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-tiny+ : patch 16 with stride 8 (729 + 1 tokens)."""
    return _create_vim("vim_tiny_patch16_stride8_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-small: D 384, 24 layers."""
    return _create_vim("vim_small_patch16_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-small+ : stride 8."""
    return _create_vim("vim_small_patch16_stride8_224", pretrained, **kwargs)


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-base: D 768, 24 layers."""
    return _create_vim("vim_base_patch16_224", pretrained, **kwargs)


@register_model
def vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained=False, **kwargs):
    """Official name of :func:`vim_tiny_patch16_224`."""
    return _create_vim("vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained=False,
                                                                                             **kwargs):
    """Official name of :func:`vim_tiny_patch16_stride8_224`."""
    return _create_vim("vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained=False, **kwargs):
    """Official name of :func:`vim_small_patch16_224`."""
    return _create_vim("vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained=False,
                                                                                              **kwargs):
    """Official name of :func:`vim_small_patch16_stride8_224`."""
    return _create_vim("vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                       pretrained, **kwargs)


@register_model
def vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2(pretrained=False,
                                                                                            **kwargs):
    """Official name of :func:`vim_base_patch16_224`."""
    return _create_vim("vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
                       pretrained, **kwargs)

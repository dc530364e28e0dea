"""CCT, CVT and ViT-Lite: compact transformers (Hassani et al., "Escaping the Big Data Paradigm with Compact
Transformers", arXiv 2104.05704).

One transformer serves the three families; they differ in the tokenizer and the pooling:

- **CCT**: a convolutional tokenizer ([conv (no bias) → ReLU → max-pool] × n) and *sequence pooling* (a learned
  softmax weighting of the tokens), no class token;
- **CVT**: a patchify conv (kernel = stride, with bias) and sequence pooling;
- **ViT-Lite**: a patchify conv and a class token at index 0.

The encoder layer is not a conventional pre-norm block: after the attention residual the stream itself is replaced
by its LayerNorm, which is both the MLP input and the base of the MLP residual (``norm2`` below).

The official ``*_sine`` factories silently build a learnable, randomly initialised embedding (the
``positional_embedding`` argument is swallowed); the ``*_sine`` models registered here build the real sinusoid table
(as the released sine checkpoints were trained with), stored as a buffer and loaded from checkpoints as stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import attention
from ..layers.init import init_transformer_weights
from ..layers.linear import linear, linear_add, mlp_residual
from ..layers.pos_embed import resample_grid_pos_embed, sinusoidal_table
from ..zoo import build_model, load_weights, register_family, register_model

__all__ = ["CCT", "Tokenizer", "checkpoint_filter_fn"]

_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Tokenizer(nn.Module):
    """Image → token grid.

    ``kind="conv"`` (CCT): ``n_conv_layers`` × [Conv2d(k, s, p, no bias) → ReLU → MaxPool2d(pool)], channels
    in_chans → planes → … → embed_dim. ``kind="patch"`` (CVT, ViT-Lite): one Conv2d(k, stride k, with bias).

    Shapes: (B, in_chans, H, W) → (B, embed_dim, h, w); :meth:`grid_size` gives (h, w).
    """

    def __init__(self, in_chans: int, embed_dim: int, kind: str = "conv", n_conv_layers: int = 1,
                 kernel_size: int = 7, stride: int = 2, padding: int = 3, pool: tuple[int, int, int] = (3, 2, 1),
                 planes: int = 64):
        super().__init__()
        if kind not in ("conv", "patch"):
            raise ValueError(f"tokenizer kind must be 'conv' or 'patch', got {kind!r}")
        if kind == "patch":
            n_conv_layers, stride, padding = 1, kernel_size, 0
        chans = [in_chans] + [planes] * (n_conv_layers - 1) + [embed_dim]
        self.kind, self.kernel_size, self.stride, self.padding = kind, kernel_size, stride, padding
        self.pool_args = tuple(pool) if kind == "conv" else None
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size, stride, padding, bias=kind == "patch")
            for i in range(n_conv_layers))
        self.act = nn.ReLU() if kind == "conv" else nn.Identity()
        self.pool = nn.MaxPool2d(*pool) if kind == "conv" else nn.Identity()
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight)

    def grid_size(self, img_size: int) -> tuple[int, int]:
        """Token grid (h, w) for a square image of side ``img_size``."""
        n = img_size
        for _ in self.convs:
            n = (n + 2 * self.padding - self.kernel_size) // self.stride + 1
            if self.pool_args is not None:
                k, s, p = self.pool_args
                n = (n + 2 * p - k) // s + 1
        return n, n

    def reduction(self) -> int:
        """Total stride of the tokenizer (input pixels per token along one side)."""
        r = 1
        for _ in self.convs:
            r *= self.stride * (self.pool_args[1] if self.pool_args is not None else 1)
        return r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, embed_dim, h, w), channels-last in memory (faster conv/pool on CPU, and
        the token layout (B, h·w, C) is then a free view)."""
        x = x.contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            x = self.pool(self.act(conv(x)))
        return x


class CCTAttention(nn.Module):
    """Global multi-head self-attention: qkv Linear **without bias**, proj with bias, through the shared op.

    Shapes: (B, N, C) → (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Attention before the output projection: (B, N, C) → heads concatenated (B, N, C)."""
        b, n, c = x.shape
        qkv = linear(x, self.qkv.weight).reshape(b, 1, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(3, 0, 1, 4, 2, 5)
        y = attention(qkv[0], qkv[1], qkv[2], dropout_p=self.attn_drop if self.training else 0.0)  # (B, 1, H, N, D)
        return y.permute(0, 1, 3, 2, 4).reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) → (B, N, C)."""
        return self.proj_drop(linear(self.mix(x), self.proj.weight, self.proj.bias))


class CCTBlock(nn.Module):
    """The compact-transformer encoder layer (note the stream normalisation ``norm2``)::

        x = x + DropPath(Attn(norm1(x)))
        x = norm2(x)
        x = x + DropPath(MLP(x))

    Shapes: (B, N, C) → (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CCTAttention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) → (B, N, C)."""
        if self.training:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            x = self.norm2(x)
            return x + self.drop_path(self.mlp(x))
        # inference: residual adds fused into the output projections (oneDNN path, see layers.linear)
        x = linear_add(self.attn.mix(self.norm1(x)), self.attn.proj.weight, self.attn.proj.bias, x)
        x = self.norm2(x)
        return mlp_residual(self.mlp, x, x)


class CCT(nn.Module):
    """Compact transformer classifier (CCT / CVT / ViT-Lite).

    Args:
        img_size: square input side the positional embedding is built for.
        in_chans, num_classes: input channels and classes (0: no classifier, ``forward`` gives the pooled feature).
        embed_dim, depth, num_heads, mlp_ratio: transformer width, layers, heads, MLP ratio (hidden =
            ``int(embed_dim * mlp_ratio)``).
        tokenizer: ``"conv"`` (CCT) or ``"patch"`` (CVT / ViT-Lite); ``n_conv_layers``, ``kernel_size``, ``stride``,
            ``padding``, ``pool`` (max-pool kernel, stride, padding) and ``conv_planes`` configure it.
        global_pool: ``"seq"`` (sequence pooling, CCT/CVT) or ``"token"`` (class token at index 0, ViT-Lite).
        pos_embed: ``"learnable"`` (init trunc-normal std 0.2), ``"sine"`` (fixed sinusoid buffer) or ``"none"``.
        drop_rate: dropout after the embedding, on the attention projection and in the MLP.
        attn_drop_rate: attention-probability dropout in training (official ``attention_dropout``, 0.1).
        drop_path_rate: stochastic depth, ``linspace(0, rate, depth)``.

    Shapes: (B, in_chans, img_size, img_size) → (B, num_classes).
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768,
                 depth: int = 14, num_heads: int = 6, mlp_ratio: float = 4.0, tokenizer: str = "conv",
                 n_conv_layers: int = 1, kernel_size: int = 7, stride: int = 2, padding: int = 3,
                 pool: tuple[int, int, int] = (3, 2, 1), conv_planes: int = 64, global_pool: str = "seq",
                 pos_embed: str = "learnable", drop_rate: float = 0.0, attn_drop_rate: float = 0.1,
                 drop_path_rate: float = 0.1):
        super().__init__()
        if global_pool not in ("seq", "token"):
            raise ValueError(f"global_pool must be 'seq' or 'token', got {global_pool!r}")
        if pos_embed not in ("learnable", "sine", "none"):
            raise ValueError(f"pos_embed must be 'learnable', 'sine' or 'none', got {pos_embed!r}")
        if tokenizer == "patch" and img_size % kernel_size:
            raise ValueError(f"image size {img_size} is not divisible by the patch size {kernel_size}")
        self.img_size, self.num_classes, self.global_pool = img_size, num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.pos_embed_type = pos_embed
        self.tokenizer = Tokenizer(in_chans, embed_dim, tokenizer, n_conv_layers, kernel_size, stride, padding,
                                   pool, conv_planes)
        self.grid_size = self.tokenizer.grid_size(img_size)
        self.num_prefix_tokens = 1 if global_pool == "token" else 0
        num_tokens = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if global_pool == "token" else None
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        elif pos_embed == "sine":
            self.register_buffer("pos_embed", sinusoidal_table(num_tokens, embed_dim))
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(CCTBlock(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, dpr[i])
                                    for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.attn_pool = nn.Linear(embed_dim, 1) if global_pool == "seq" else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        r = self.tokenizer.reduction()
        self.feature_info = [dict(num_chs=embed_dim, reduction=r, module=f"blocks.{i}") for i in range(depth)]
        self.grad_checkpointing = False
        self.apply(init_transformer_weights)
        if pos_embed == "learnable":
            trunc_normal_(self.pos_embed, std=0.2)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay (``param_groups_layer_decay``): tokenizer and embeddings, then
        each block, then the final norm and pooling; the classifier is last."""
        return dict(stem=r"^cls_token|^pos_embed|^tokenizer",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^attn_pool", (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh Linear(embed_dim, num_classes) (Identity for 0)."""
        if global_pool is not None and global_pool != self.global_pool:
            raise ValueError(f"this model pools with {self.global_pool!r}; it cannot switch to {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.tokenizer(x)
        grid = x.shape[-2:]
        x = x.permute(0, 2, 3, 1).flatten(1, 2)  # (B, h·w, C), row-major tokens
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            if x.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(f"input gives {x.shape[1]} tokens but the positional embedding has "
                                 f"{self.pos_embed.shape[1]}: the model is built for {self.img_size}x{self.img_size}"
                                 f" images (pass img_size= to build it for another size)")
            x = x + self.pos_embed
        return self.pos_drop(x), grid

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → normalised tokens (B, N (+1 class token), embed_dim)."""
        x, _ = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) → sequence-pooled / class-token feature (B, C), or logits (B, num_classes)."""
        if self.global_pool == "seq":
            w = F.softmax(self.attn_pool(x), dim=1)  # (B, N, 1)
            x = torch.matmul(w.transpose(-1, -2), x).squeeze(-2)
        else:
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Block outputs as feature maps.

        Args:
            indices: last n blocks (int), the listed blocks, or all (None).
            norm: apply the final LayerNorm to each intermediate.
            output_fmt: ``"NCHW"`` (B, C, h, w) grids or ``"NLC"`` (B, h·w, C); the class token is dropped.
        Returns:
            the list of intermediates, or (final normalised tokens, list) unless ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        b = x.shape[0]
        x, (h, w) = self._embed(x)
        out = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens:]
                out.append(y.reshape(b, h, w, -1).permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return out
        return self.norm(x), out

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last wanted one (and the norm / head); returns the absolute indices."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.attn_pool = None
            self.reset_classifier(0)
        return take


_OFFICIAL_TOP_NAMES = {"positional_emb": "pos_embed", "class_emb": "cls_token", "attention_pool": "attn_pool",
                       "fc": "head"}
_OFFICIAL_BLOCK_NAMES = {"pre_norm": "norm1", "self_attn": "attn", "norm1": "norm2", "linear1": "mlp.fc1",
                         "linear2": "mlp.fc2"}


def checkpoint_filter_fn(state_dict: dict, model: CCT) -> dict:
    """Official CCT/CVT/ViT-Lite keys (``tokenizer.conv_layers.*``, ``classifier.*``) → ours.

    A learnable positional embedding of another length is resized bilinearly on its square grid, keeping the class
    row (the official ``pe_check``); a sinusoidal one of another length is replaced by the model's own table.
    Our own keys pass unchanged.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("tokenizer.conv_layers."):
            _, _, i, _, name = k.split(".")  # tokenizer.conv_layers.{i}.0.{weight,bias}
            k = f"tokenizer.convs.{i}.{name}"
        elif k.startswith("classifier."):
            parts = k.split(".")[1:]
            if parts[0] == "blocks":
                parts[2] = _OFFICIAL_BLOCK_NAMES.get(parts[2], parts[2])
            else:
                parts[0] = _OFFICIAL_TOP_NAMES.get(parts[0], parts[0])
            k = ".".join(parts)
        out[k] = v
    pe = out.get("pos_embed")
    if pe is not None and model.pos_embed is not None and pe.shape != model.pos_embed.shape:
        if model.pos_embed_type == "sine":
            out["pos_embed"] = model.pos_embed.detach().clone()
        else:
            cls_index = 0 if model.num_prefix_tokens else None
            out["pos_embed"] = resample_grid_pos_embed(pe, model.grid_size, cls_index, mode="bilinear")
    return out


def _create_cct(variant: str, pretrained: bool = False, **kwargs) -> CCT:
    return build_model(CCT, variant, pretrained, _ARCHS[variant], filter_fn=checkpoint_filter_fn, **kwargs)


def _official_detect(state: dict) -> bool:
    return "tokenizer.conv_layers.0.0.weight" in state and "classifier.norm.weight" in state


def _official_build(state: dict, config: dict) -> CCT:
    """Width, depth, MLP ratio, tokenizer layers/kernel/kind, pooling and classes from shapes; the rest (heads,
    image size, stride/padding of the conv tokenizer, PE kind, dropouts) from the official kwargs."""
    conv0 = state["tokenizer.conv_layers.0.0.weight"]
    n_conv = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("tokenizer.conv_layers."))
    embed_dim = state["classifier.norm.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("classifier.blocks."))
    patch = "tokenizer.conv_layers.0.0.bias" in state
    pe = config.get("positional_embedding", "learnable")
    if "classifier.positional_emb" not in state:
        pe = "none"
    elif pe not in ("learnable", "sine", "none"):
        pe = "sine"  # the official classifier turns any other string into 'sine'
    kernel = conv0.shape[-1]
    args = dict(
        img_size=config.get("img_size", 224), in_chans=conv0.shape[1],
        num_classes=state["classifier.fc.weight"].shape[0], embed_dim=embed_dim, depth=depth,
        num_heads=config.get("num_heads", 6),
        mlp_ratio=state["classifier.blocks.0.linear1.weight"].shape[0] / embed_dim,
        tokenizer="patch" if patch else "conv", n_conv_layers=n_conv, kernel_size=kernel,
        stride=config.get("stride", 2), padding=config.get("padding", 3),
        pool=(config.get("pooling_kernel_size", 3), config.get("pooling_stride", 2),
              config.get("pooling_padding", 1)),
        conv_planes=conv0.shape[0] if n_conv > 1 else 64,
        global_pool="token" if "classifier.class_emb" in state else "seq", pos_embed=pe,
        drop_rate=config.get("dropout", 0.0), attn_drop_rate=config.get("attention_dropout", 0.1),
        drop_path_rate=config.get("stochastic_depth", 0.1))
    return load_weights(CCT(**args), state, checkpoint_filter_fn)


register_family("cct", _official_detect, _official_build)


def _cct_arch(depth: int, kernel: int, n_conv: int, img: int, num_classes: int = 10, sine: bool = False) -> dict:
    width = {2: (2, 1, 128), 4: (2, 1, 128), 6: (4, 2, 256), 7: (4, 2, 256), 14: (6, 3, 384)}[depth]
    return dict(depth=depth, num_heads=width[0], mlp_ratio=width[1], embed_dim=width[2], img_size=img,
                num_classes=num_classes, tokenizer="conv", n_conv_layers=n_conv, kernel_size=kernel,
                stride=max(1, kernel // 2 - 1), padding=max(1, kernel // 2),
                pos_embed="sine" if sine else "learnable", global_pool="seq")


def _patch_arch(depth: int, global_pool: str, sine: bool = False) -> dict:
    width = {2: (2, 1, 128), 4: (2, 1, 128), 6: (4, 2, 256), 7: (4, 2, 256)}[depth]
    return dict(depth=depth, num_heads=width[0], mlp_ratio=width[1], embed_dim=width[2], img_size=32,
                num_classes=10, tokenizer="patch", kernel_size=4, pos_embed="sine" if sine else "learnable",
                global_pool=global_pool)


_ARCHS = {
    "cct_2_3x2_32": _cct_arch(2, 3, 2, 32), "cct_2_3x2_32_sine": _cct_arch(2, 3, 2, 32, sine=True),
    "cct_4_3x2_32": _cct_arch(4, 3, 2, 32), "cct_4_3x2_32_sine": _cct_arch(4, 3, 2, 32, sine=True),
    "cct_6_3x1_32": _cct_arch(6, 3, 1, 32), "cct_6_3x1_32_sine": _cct_arch(6, 3, 1, 32, sine=True),
    "cct_6_3x2_32": _cct_arch(6, 3, 2, 32), "cct_6_3x2_32_sine": _cct_arch(6, 3, 2, 32, sine=True),
    "cct_7_3x1_32": _cct_arch(7, 3, 1, 32), "cct_7_3x1_32_sine": _cct_arch(7, 3, 1, 32, sine=True),
    "cct_7_3x1_32_c100": _cct_arch(7, 3, 1, 32, 100),
    "cct_7_3x1_32_sine_c100": _cct_arch(7, 3, 1, 32, 100, sine=True),
    "cct_7_3x2_32": _cct_arch(7, 3, 2, 32), "cct_7_3x2_32_sine": _cct_arch(7, 3, 2, 32, sine=True),
    "cct_7_7x2_224": _cct_arch(7, 7, 2, 224, 102), "cct_7_7x2_224_sine": _cct_arch(7, 7, 2, 224, 102, sine=True),
    "cct_14_7x2_224": _cct_arch(14, 7, 2, 224, 1000), "cct_14_7x2_384": _cct_arch(14, 7, 2, 384, 1000),
    "cct_14_7x2_384_fl": _cct_arch(14, 7, 2, 384, 102),
    **{f"cvt_{d}_4_32{s}": _patch_arch(d, "seq", bool(s)) for d in (2, 4, 6, 7) for s in ("", "_sine")},
    **{f"vit_{d}_4_32{s}": _patch_arch(d, "token", bool(s)) for d in (2, 4, 6, 7) for s in ("", "_sine")},
}


def _cfg(variant: str, **kwargs) -> dict:
    arch = _ARCHS[variant]
    small = arch["img_size"] == 32
    return {"input_size": (3, arch["img_size"], arch["img_size"]), "num_classes": arch["num_classes"],
            "mean": _CIFAR_MEAN if small else _IMAGENET_MEAN, "std": _CIFAR_STD if small else _IMAGENET_STD,
            "crop_pct": 1.0 if small else 0.9, "interpolation": "bicubic", "first_conv": "tokenizer.convs.0",
            "classifier": "head", "license": "apache-2.0", "paper_ids": "arXiv:2104.05704", **kwargs}


# weights trained by pixelforge (package data; see pixelforge/zoo/weights/README.md)
_BUNDLED = {"cct_2_3x2_32": dict(file="cct_2_3x2_32_cifar10.safetensors",
                                 notes="trained by pixelforge on CIFAR-10 (configs/cls/cct_2_3x2_32_cifar10.yaml)")}
default_cfgs = {name: _cfg(name, **_BUNDLED.get(name, {})) for name in _ARCHS}


@register_model
def cct_2_3x2_32(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-2/3x2 at 32 (2 layers, 2 heads, d 128, two 3x3 conv tokenizer layers, 64 tokens), 10 classes."""
    return _create_cct("cct_2_3x2_32", pretrained, **kwargs)


@register_model
def cct_2_3x2_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-2/3x2 at 32 with a sinusoidal positional embedding."""
    return _create_cct("cct_2_3x2_32_sine", pretrained, **kwargs)


@register_model
def cct_4_3x2_32(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-4/3x2 at 32 (4 layers, 2 heads, d 128)."""
    return _create_cct("cct_4_3x2_32", pretrained, **kwargs)


@register_model
def cct_4_3x2_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-4/3x2 at 32, sinusoidal PE."""
    return _create_cct("cct_4_3x2_32_sine", pretrained, **kwargs)


@register_model
def cct_6_3x1_32(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-6/3x1 at 32 (6 layers, 4 heads, d 256, one 3x3 conv layer, 256 tokens)."""
    return _create_cct("cct_6_3x1_32", pretrained, **kwargs)


@register_model
def cct_6_3x1_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-6/3x1 at 32, sinusoidal PE."""
    return _create_cct("cct_6_3x1_32_sine", pretrained, **kwargs)


@register_model
def cct_6_3x2_32(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-6/3x2 at 32."""
    return _create_cct("cct_6_3x2_32", pretrained, **kwargs)


@register_model
def cct_6_3x2_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-6/3x2 at 32, sinusoidal PE."""
    return _create_cct("cct_6_3x2_32_sine", pretrained, **kwargs)


@register_model
def cct_7_3x1_32(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x1 at 32 (7 layers, 4 heads, d 256, 256 tokens): the released CIFAR-10 300-epoch model."""
    return _create_cct("cct_7_3x1_32", pretrained, **kwargs)


@register_model
def cct_7_3x1_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x1 at 32 with a real sinusoidal PE (the released 5000-epoch CIFAR-10 model's layout)."""
    return _create_cct("cct_7_3x1_32_sine", pretrained, **kwargs)


@register_model
def cct_7_3x1_32_c100(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x1 at 32, 100 classes (CIFAR-100)."""
    return _create_cct("cct_7_3x1_32_c100", pretrained, **kwargs)


@register_model
def cct_7_3x1_32_sine_c100(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x1 at 32, sinusoidal PE, 100 classes."""
    return _create_cct("cct_7_3x1_32_sine_c100", pretrained, **kwargs)


@register_model
def cct_7_3x2_32(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x2 at 32."""
    return _create_cct("cct_7_3x2_32", pretrained, **kwargs)


@register_model
def cct_7_3x2_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x2 at 32, sinusoidal PE."""
    return _create_cct("cct_7_3x2_32_sine", pretrained, **kwargs)


@register_model
def cct_7_7x2_224(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/7x2 at 224 (two 7x7 stride-2 conv layers, 196 tokens), 102 classes (Flowers-102)."""
    return _create_cct("cct_7_7x2_224", pretrained, **kwargs)


@register_model
def cct_7_7x2_224_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/7x2 at 224, sinusoidal PE, 102 classes (the released Flowers-102 model)."""
    return _create_cct("cct_7_7x2_224_sine", pretrained, **kwargs)


@register_model
def cct_14_7x2_224(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-14/7x2 at 224 (14 layers, 6 heads, d 384), ImageNet-1k."""
    return _create_cct("cct_14_7x2_224", pretrained, **kwargs)


@register_model
def cct_14_7x2_384(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-14/7x2 at 384 (576 tokens), ImageNet-1k."""
    return _create_cct("cct_14_7x2_384", pretrained, **kwargs)


@register_model
def cct_14_7x2_384_fl(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-14/7x2 at 384, 102 classes (Flowers-102 fine-tune)."""
    return _create_cct("cct_14_7x2_384_fl", pretrained, **kwargs)


@register_model
def cvt_2_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-2/4 at 32: 4x4 patchify tokenizer, sequence pooling, 2 layers, d 128."""
    return _create_cct("cvt_2_4_32", pretrained, **kwargs)


@register_model
def cvt_2_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-2/4 at 32, sinusoidal PE."""
    return _create_cct("cvt_2_4_32_sine", pretrained, **kwargs)


@register_model
def cvt_4_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-4/4 at 32."""
    return _create_cct("cvt_4_4_32", pretrained, **kwargs)


@register_model
def cvt_4_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-4/4 at 32, sinusoidal PE."""
    return _create_cct("cvt_4_4_32_sine", pretrained, **kwargs)


@register_model
def cvt_6_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-6/4 at 32 (6 layers, 4 heads, d 256)."""
    return _create_cct("cvt_6_4_32", pretrained, **kwargs)


@register_model
def cvt_6_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-6/4 at 32, sinusoidal PE."""
    return _create_cct("cvt_6_4_32_sine", pretrained, **kwargs)


@register_model
def cvt_7_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-7/4 at 32."""
    return _create_cct("cvt_7_4_32", pretrained, **kwargs)


@register_model
def cvt_7_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """CVT-7/4 at 32, sinusoidal PE."""
    return _create_cct("cvt_7_4_32_sine", pretrained, **kwargs)


@register_model
def vit_2_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-2/4 at 32: 4x4 patchify tokenizer, class token at index 0 (65 tokens), 2 layers, d 128."""
    return _create_cct("vit_2_4_32", pretrained, **kwargs)


@register_model
def vit_2_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-2/4 at 32, sinusoidal PE."""
    return _create_cct("vit_2_4_32_sine", pretrained, **kwargs)


@register_model
def vit_4_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-4/4 at 32."""
    return _create_cct("vit_4_4_32", pretrained, **kwargs)


@register_model
def vit_4_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-4/4 at 32, sinusoidal PE."""
    return _create_cct("vit_4_4_32_sine", pretrained, **kwargs)


@register_model
def vit_6_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-6/4 at 32 (6 layers, 4 heads, d 256)."""
    return _create_cct("vit_6_4_32", pretrained, **kwargs)


@register_model
def vit_6_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-6/4 at 32, sinusoidal PE."""
    return _create_cct("vit_6_4_32_sine", pretrained, **kwargs)


@register_model
def vit_7_4_32(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-7/4 at 32."""
    return _create_cct("vit_7_4_32", pretrained, **kwargs)


@register_model
def vit_7_4_32_sine(pretrained: bool = False, **kwargs) -> CCT:
    """ViT-Lite-7/4 at 32, sinusoidal PE."""
    return _create_cct("vit_7_4_32_sine", pretrained, **kwargs)

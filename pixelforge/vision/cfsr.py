"""CFSR: ConvFormer-based lightweight super-resolution (Wu et al., TIP 2024).

Attention-free MetaFormer blocks: a convolutional-modulation token mixer (1x1 conv, GELU, large depthwise conv gating
a 1x1 value) and an edge-preserving FFN whose depthwise 3x3 conv carries learnable Sobel-x / Sobel-y / Laplacian
branches. Two forms: the training form keeps the re-parameterised branches separate; :meth:`CFSRBackbone.merge`
folds them into single kernels, the form of the released checkpoints (``deploy=True``, the default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers.linear import conv1x1, linear_add
from ..zoo import register_family, register_model
from .dense import DenseBackbone, DenseImageModel, build_dense_model

__all__ = ["CFSRBackbone", "checkpoint_filter_fn"]

# The official masks, rows top to bottom. Sobel-x and the Laplacian deliberately differ from the textbook kernels.
_EDGE_MASKS = {
    "sobel_x": ((0, 1, -1), (2, 0, -2), (1, 0, -1)),
    "sobel_y": ((1, 2, 1), (0, 0, 0), (-1, -2, -1)),
    "laplacian": ((1, 0, 0), (1, -4, 1), (0, 1, 0)),
}


class EdgeBranches(nn.Module):
    """Learnable scaled fixed-pattern 3x3 depthwise branches (Sobel-x, Sobel-y, Laplacian) over ``channels``.

    They are linear in the same input as the 3x3 conv they sit beside, so they fold into its kernel exactly:
    W += Σ scale_k ⊙ mask_k, b += Σ bias_k.
    """

    def __init__(self, channels: int):
        super().__init__()
        for name in _EDGE_MASKS:
            setattr(self, f"scale_{name}", nn.Parameter(torch.randn(channels, 1, 1, 1) * 1e-3))
            setattr(self, f"bias_{name}", nn.Parameter(torch.randn(channels) * 1e-3))
        masks = torch.tensor(list(_EDGE_MASKS.values()), dtype=torch.float32).unsqueeze(1)  # (3, 1, 3, 3)
        self.register_buffer("masks", masks, persistent=False)

    def kernel_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded branches: kernel (channels, 1, 3, 3) and bias (channels,)."""
        kernel = sum(getattr(self, f"scale_{n}") * self.masks[i] for i, n in enumerate(_EDGE_MASKS))
        bias = sum(getattr(self, f"bias_{n}") for n in _EDGE_MASKS)
        return kernel, bias


class EdgeDepthwiseConv(nn.Module):
    """Depthwise 3x3 conv ``pos`` with edge branches (training form); after :meth:`merge` a plain conv."""

    def __init__(self, channels: int, deploy: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.edges = None if deploy else EdgeBranches(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        if self.edges is None:
            return self.conv(x)
        k, b = self.edges.kernel_and_bias()
        return F.conv2d(x, self.conv.weight + k, self.conv.bias + b, padding=1, groups=x.shape[1])

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the edge branches into ``conv`` (exact) and drop them."""
        if self.edges is not None:
            k, b = self.edges.kernel_and_bias()
            self.conv.weight += k
            self.conv.bias += b
            self.edges = None


class LargeKernelConv(nn.Module):
    """Depthwise KxK conv; training form = KxK + centred 3x3 with edge branches, merged into ``lkb_reparam``."""

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        if deploy:
            self.lkb_reparam = nn.Conv2d(channels, channels, kernel_size, 1, kernel_size // 2, groups=channels)
        else:
            self.lkb_origin = nn.Conv2d(channels, channels, kernel_size, 1, kernel_size // 2, groups=channels)
            self.small_conv = EdgeDepthwiseConv(channels)

    def _fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        k_small, b_small = self.small_conv.edges.kernel_and_bias()
        k_small = k_small + self.small_conv.conv.weight
        p = (self.kernel_size - 3) // 2
        weight = self.lkb_origin.weight + F.pad(k_small, (p, p, p, p))
        return weight, self.lkb_origin.bias + self.small_conv.conv.bias + b_small

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        if hasattr(self, "lkb_reparam"):
            return self.lkb_reparam(x)
        weight, bias = self._fused()
        return F.conv2d(x, weight, bias, padding=self.kernel_size // 2, groups=x.shape[1])

    @torch.no_grad()
    def merge(self) -> None:
        """W = W_origin + pad_K(W_small + Σ scale⊙mask), b = b_origin + b_small + Σ bias; then drop the parts."""
        if hasattr(self, "lkb_reparam"):
            return
        weight, bias = self._fused()
        channels = weight.shape[0]
        self.lkb_reparam = nn.Conv2d(channels, channels, self.kernel_size, 1, self.kernel_size // 2,
                                     groups=channels).to(weight)
        self.lkb_reparam.weight.copy_(weight)
        self.lkb_reparam.bias.copy_(bias)
        del self.lkb_origin, self.small_conv


def _scaled_conv1x1_add(x: torch.Tensor, conv: nn.Conv2d, scale: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + scale ⊙ conv(x) for a 1x1 ``conv``, the per-channel scale folded into its weight and bias and the
    add fused into the product. x, residual (B, C, H, W) (channels-last memory reads in place) → channels-last."""
    w, b = conv.weight.flatten(1) * scale[:, None], conv.bias * scale
    return linear_add(x.permute(0, 2, 3, 1), w, b, residual.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvMod(nn.Module):
    """Convolutional modulation: proj(DW_K(GELU(conv1x1(LN x))) ⊙ v(LN x)); :meth:`mix` is all but ``proj``."""

    def __init__(self, dim: int, kernel_size: int, deploy: bool):
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.a = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), LargeKernelConv(dim, kernel_size, deploy))
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → DW_K(GELU(conv1x1(LN x))) ⊙ v(LN x), (B, C, H, W) channels-last."""
        x = self.norm(x)
        return self.a[2](conv1x1(x, self.a[0], "gelu")) * conv1x1(x, self.v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return conv1x1(self.mix(x), self.proj)


class EdgeFFN(nn.Module):
    """Edge-preserving FFN: u = GELU(fc1(LN x)); u = u + GELU(pos(u)); fc2(u); :meth:`hidden` is all but fc2."""

    def __init__(self, dim: int, mlp_ratio: int, deploy: bool):
        super().__init__()
        hidden = dim * mlp_ratio
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.pos = EdgeDepthwiseConv(hidden, deploy)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → u (B, hidden, H, W) channels-last."""
        u = conv1x1(self.norm(x), self.fc1, "gelu")
        return u + self.act(self.pos(u))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return conv1x1(self.hidden(x), self.fc2)


class CFSRBlock(nn.Module):
    """x + γ₁⊙ConvMod(x), then + γ₂⊙EFN(x) (channels-last inside: every 1x1 conv is a linear over channels)."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: int, deploy: bool, layer_scale_init: float = 1e-6):
        super().__init__()
        self.attn = ConvMod(dim, kernel_size, deploy)
        self.mlp = EdgeFFN(dim, mlp_ratio, deploy)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        # the layer scales fold into the last 1x1 convs, the residual adds into their products
        x = _scaled_conv1x1_add(self.attn.mix(x), self.attn.proj, self.layer_scale_1, x)
        return _scaled_conv1x1_add(self.mlp.hidden(x), self.mlp.fc2, self.layer_scale_2, x)


class CFSRLayer(nn.Module):
    """A group of blocks, then a 1x1 conv with a residual around it: y = blocks(x); y + conv(y).

    The residual is taken after the blocks, not from the layer input (as in the official code).
    """

    def __init__(self, dim: int, depth: int, kernel_size: int, mlp_ratio: int, deploy: bool):
        super().__init__()
        self.blocks = nn.Sequential(*[CFSRBlock(dim, kernel_size, mlp_ratio, deploy) for _ in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 1)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            y = checkpoint(self.blocks, x, use_reentrant=False)
        else:
            y = self.blocks(x)
        return linear_add(y.permute(0, 2, 3, 1), self.conv.weight.flatten(1), self.conv.bias,
                          y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CFSRBackbone(DenseBackbone):
    """CFSR body: conv_first → layers → LayerNorm → conv_after_body, plus the shallow-feature residual.

    Args:
        in_chans: image channels. embed_dim: C. depths: blocks per layer. dw_size: large depthwise kernel K.
        mlp_ratio: EFN expansion (an int). deploy: merged (inference/released) form when True.
    Shapes: (B, in_chans, H, W) → (B, embed_dim, H, W); any H, W.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 48, depths: tuple[int, ...] = (6, 6), dw_size: int = 9,
                 mlp_ratio: int = 2, deploy: bool = True):
        super().__init__()
        if int(mlp_ratio) != mlp_ratio:
            raise ValueError(f"CFSR mlp_ratio must be an integer, got {mlp_ratio}")
        self.in_chans, self.num_features = in_chans, embed_dim
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.layers = nn.ModuleList(CFSRLayer(embed_dim, d, dw_size, int(mlp_ratio), deploy) for d in depths)
        self.norm = LayerNorm2d(embed_dim, eps=1e-6)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, in_chans, H, W) → (B, embed_dim, H, W)."""
        x = self.conv_first(x).contiguous(memory_format=torch.channels_last)
        y = x
        for layer in self.layers:
            y = layer(y)
        return self.conv_after_body(self.norm(y)) + x

    @torch.no_grad()
    def merge(self) -> CFSRBackbone:
        """Fold every re-parameterised branch into single kernels (training form → released form), in place."""
        for m in list(self.modules()):
            if isinstance(m, (EdgeDepthwiseConv, LargeKernelConv)):
                m.merge()
        return self


def checkpoint_filter_fn(state_dict: dict, model: DenseImageModel) -> dict:
    """Official CFSR keys (``conv_first.*``, ``layers.*``, ``upsample.0.*``, ``conv_last.*``) → ours.

    ``mlp.pos.*`` / ``small_conv.*`` sit one level down in our modules (``pos.conv``). Our own keys pass unchanged.
    """
    out = {}
    for k, v in state_dict.items():
        if not k.startswith(("backbone.", "head.")):
            k = k.replace(".mlp.pos.", ".mlp.pos.conv.")
            k = ("head." + k) if k.startswith(("upsample.", "conv_last.")) else ("backbone." + k)
        out[k] = v
    return out


def _create_cfsr(variant: str, pretrained: bool = False, **kwargs) -> DenseImageModel:
    defaults = dict(embed_dim=48, depths=(6, 6), dw_size=9, mlp_ratio=2, upscale=4, upsampler="pixelshuffledirect")
    backbone_keys = ("in_chans", "embed_dim", "depths", "dw_size", "mlp_ratio", "deploy")
    return build_dense_model(CFSRBackbone, backbone_keys, variant, pretrained, checkpoint_filter_fn,
                             **{**defaults, **kwargs})


def _official_detect(state: dict) -> bool:
    return "layers.0.blocks.0.attn.a.0.weight" in state and "conv_first.weight" in state


def _official_build(state: dict, config: dict) -> DenseImageModel:
    """Infer C, depths, K, r and the scale from shapes; the rest (img_range, upsampler) from ``config``."""
    embed_dim, in_chans = state["conv_first.weight"].shape[:2]
    n_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    depths = [1 + max(int(k.split(".")[3]) for k in state if k.startswith(f"layers.{i}.blocks."))
              for i in range(n_layers)]
    dw_size = state["layers.0.blocks.0.attn.a.2.lkb_reparam.weight"].shape[-1]
    mlp_ratio = state["layers.0.blocks.0.mlp.fc1.weight"].shape[0] // embed_dim
    if "upsample.0.weight" in state:
        upscale = int(round((state["upsample.0.weight"].shape[0] / in_chans) ** 0.5))
        head = dict(head="upsample", upscale=upscale, upsampler="pixelshuffledirect")
    else:
        head = dict(head="restore")
    model = DenseImageModel(CFSRBackbone(in_chans, embed_dim, depths, dw_size, mlp_ratio, deploy=True),
                            out_chans=in_chans, img_range=float(config.get("img_range", 1.0)), **head)
    from ..zoo import load_weights

    return load_weights(model, state, checkpoint_filter_fn)


register_family("cfsr", _official_detect, _official_build, wrapper="params")


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "license": "mit",
            "paper_ids": "arXiv:2401.05633", **kwargs}


default_cfgs = {
    "cfsr_x2": _cfg(file="cfsr_x2.safetensors", notes="trained by pixelforge on T91 + BSDS400"),
    "cfsr_x3": _cfg(),
    "cfsr_x4": _cfg(file="cfsr_x4.safetensors", notes="trained by pixelforge on T91 + BSDS400"),
}


@register_model
def cfsr_x2(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CFSR x2 (C 48, depths 6/6, K 9, r 2, pixelshuffle-direct), merged form unless ``deploy=False``."""
    return _create_cfsr("cfsr_x2", pretrained, upscale=2, **kwargs)


@register_model
def cfsr_x3(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CFSR x3."""
    return _create_cfsr("cfsr_x3", pretrained, upscale=3, **kwargs)


@register_model
def cfsr_x4(pretrained: bool = False, **kwargs) -> DenseImageModel:
    """CFSR x4."""
    return _create_cfsr("cfsr_x4", pretrained, upscale=4, **kwargs)

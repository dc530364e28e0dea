"""VAR tokenizer: a VQ-VAE with a multi-scale residual quantiser (Tian et al., NeurIPS 2024, FoundationVision/VAR).

The encoder/decoder are the LDM ``vq-f16`` convnets (GroupNorm-32, SiLU, ResNet blocks, single-head self-attention at
the lowest resolution). Images are RGB in [-1, 1]; the latent is (B, Cvae, H/2^(n-1), W/2^(n-1)) for n = len(ch_mult),
and its side must equal the last entry of ``patch_nums`` to be quantised.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import attention
from ...zoo import CheckpointError, build_model, load_weights, register_family, register_model
from .quantizer import MultiScaleQuantizer

__all__ = ["VQVAE", "checkpoint_filter_fn", "official_state_dict"]

RELEASED_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv3x3 twice with a residual (1x1 ``nin_shortcut`` when the width changes).

    (B, in_ch, H, W) → (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))
        return h.add_(self.nin_shortcut(x))  # in place: h is this block's own fresh tensor


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions: ``x + proj_out(softmax(q·kᵀ/√C)·v)``.

    q, k, v come from one 1x1 conv (C → 3C, ordered q, k, v) of the GroupNorm'd input. (B, C, H, W) → same.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # 3 x (B, HW, C)
        out = attention(q.view(b, 1, 1, h * w, c), k.view(b, 1, 1, h * w, c), v.view(b, 1, 1, h * w, c),
                        scale=c ** -0.5)
        return x + self.proj_out(out.view(b, h * w, c).transpose(1, 2).reshape(b, c, h, w))


class Downsample2x(nn.Module):
    """Zero-pad right/bottom by one pixel, then a stride-2 3x3 conv. (B, C, H, W) → (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv. (B, C, H, W) → (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention after each, optional resampling at the end."""

    def __init__(self, widths: Sequence[tuple[int, int]], dropout: float, with_attn: bool, resample: type | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, dropout) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in widths) if with_attn else nn.ModuleList()
        if resample is not None:
            setattr(self, "downsample" if resample is Downsample2x else "upsample", resample(widths[-1][1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        elif hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, with_attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if with_attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B, in_chans, H, W) → latent (B, z_channels, H/2^(n-1), W/2^(n-1)), n = len(ch_mult).

    Level i has ``num_res_blocks`` ResNet blocks of width ch·ch_mult[i] (attention after each at the last level when
    ``using_sa``) and ends with a Downsample2x except at the last level; then mid (ResNet, attention, ResNet),
    GroupNorm, SiLU and a 3x3 conv.
    """

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_chans: int = 3, z_channels: int = 32, using_sa: bool = True,
                 using_mid_sa: bool = True):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(in_chans, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        width = ch
        for i, mult in enumerate(ch_mult):
            out = ch * mult
            widths = [(width if j == 0 else out, out) for j in range(num_res_blocks)]
            self.down.append(_Level(widths, dropout, using_sa and i == n - 1, Downsample2x if i != n - 1 else None))
            width = out
        self.mid = _Mid(width, dropout, using_mid_sa)
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x)), inplace=True))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) → image (B, out_chans, h·2^(n-1), w·2^(n-1)).

    conv_in to ch·ch_mult[-1], mid, then levels n-1 … 0 (stored as ``up.{i}`` by level index) with
    ``num_res_blocks + 1`` ResNet blocks each (attention after each at the top level when ``using_sa``) and an
    Upsample2x except at level 0; GroupNorm, SiLU and a 3x3 conv.
    """

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, out_chans: int = 3, z_channels: int = 32, using_sa: bool = True,
                 using_mid_sa: bool = True):
        super().__init__()
        n = len(ch_mult)
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, 1, 1)
        self.mid = _Mid(width, dropout, using_mid_sa)
        levels = []
        for i in reversed(range(n)):
            out = ch * ch_mult[i]
            widths = [(width if j == 0 else out, out) for j in range(num_res_blocks + 1)]
            levels.append(_Level(widths, dropout, using_sa and i == n - 1, Upsample2x if i != 0 else None))
            width = out
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, out_chans, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=True))


class VQVAE(nn.Module):
    """Multi-scale residual VQ-VAE (the VAR tokenizer).

    Args:
        vocab_size: codebook size V. z_channels: latent channels Cvae. ch, ch_mult, num_res_blocks, dropout,
            using_sa, using_mid_sa: encoder/decoder layout (released: ch 160, ch_mult (1,1,2,2,4), 2 blocks).
        beta: commitment weight. using_znorm: cosine nearest-code search. quant_conv_ks: kernel of quant_conv and
            post_quant_conv. quant_resi, share_quant_resi, default_qresi_counts: Phi convs
            (see :class:`MultiScaleQuantizer`). patch_nums: token map sides, coarse to fine.
        in_chans: image channels.
    Images are (B, in_chans, H, W) in [-1, 1] with H = W = patch_nums[-1]·downsample.
    """

    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, dropout: float = 0.0,
                 beta: float = 0.25, using_znorm: bool = False, quant_conv_ks: int = 3, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0,
                 patch_nums: Sequence[int] = RELEASED_PATCH_NUMS, using_sa: bool = True, using_mid_sa: bool = True,
                 in_chans: int = 3):
        super().__init__()
        self.vocab_size, self.Cvae = vocab_size, z_channels
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.patch_nums = tuple(patch_nums)
        dd = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, dropout=dropout,
                  z_channels=z_channels, using_sa=using_sa, using_mid_sa=using_mid_sa)
        self.encoder = Encoder(in_chans=in_chans, **dd)
        self.decoder = Decoder(out_chans=in_chans, **dd)
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, patch_nums, using_znorm, beta, quant_resi,
                                            share_quant_resi, default_qresi_counts)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)

    @property
    def image_size(self) -> int:
        """Side of the images whose latent has the size of the last scale."""
        return self.patch_nums[-1] * self.downsample

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) → continuous latent f (B, Cvae, H/ds, W/ds) (``quant_conv`` included)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) → image (B, 3, h·ds, w·ds), unclamped (training output).

        The convolutions run channels-last (about 1.3x faster on CPU at the 256² levels); the image is returned
        contiguous."""
        return self.decoder(self.post_quant_conv(f_hat.contiguous(memory_format=torch.channels_last))).contiguous()

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) → image in [-1, 1] (clamped, as every official decode path)."""
        return self.decode(f_hat).clamp(-1, 1)

    @torch.no_grad()
    def img_to_idx(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image (B, 3, H, W) in [-1, 1] → token maps, one (B, p_k²) int64 per scale."""
        return self.quantize.f_to_idx(self.encode(x))

    def idx_to_img(self, idx_list: Sequence[torch.Tensor], progressive: bool = False
                   ) -> torch.Tensor | list[torch.Tensor]:
        """Token maps → image (B, 3, H, W) in [-1, 1]; with ``progressive`` one image per prefix of scales."""
        if progressive:
            return [self.fhat_to_img(f) for f in self.quantize.idx_to_fhat(idx_list, cumulative=True)]
        return self.fhat_to_img(self.quantize.idx_to_fhat(idx_list))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Image → quantise over all scales → image in [-1, 1] (B, 3, H, W)."""
        return self.fhat_to_img(self.quantize.f_to_idx(self.encode(x), to_fhat=True)[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass. Image (B, 3, H, W) → (reconstruction (B, 3, H, W) unclamped, VQ loss, token maps)."""
        f_hat, vq_loss, idx_list = self.quantize(self.encode(x))
        return self.decode(f_hat), vq_loss, idx_list


def checkpoint_filter_fn(state_dict: dict, model: VQVAE) -> dict:
    """Official VQVAE keys → ours.

    The Phi convs (``quantize.quant_resi.qresi_ls.{j}`` / ``.qresi`` / ``.{j}``) become ``quantize.phis.{j}``. The
    usage statistic ``quantize.ema_vocab_hit_SV`` is kept; when its number of scales differs from the model's it is
    replaced by zeros (as the official ``load_state_dict`` does). Our own keys pass unchanged.
    """
    out = {}
    for k, v in state_dict.items():
        if k == "quantize.ema_vocab_hit_SV" and tuple(v.shape) != tuple(model.quantize.ema_vocab_hit_SV.shape):
            if v.ndim != 2 or v.shape[1] != model.vocab_size:
                raise CheckpointError(f"quantize.ema_vocab_hit_SV has shape {tuple(v.shape)}, expected "
                                      f"(scales, {model.vocab_size})")
            v = torch.zeros_like(model.quantize.ema_vocab_hit_SV)
        if k.startswith("quantize.quant_resi."):
            rest = k[len("quantize.quant_resi."):]
            if rest.startswith("qresi_ls."):
                rest = rest[len("qresi_ls."):]
            elif rest.startswith("qresi."):
                rest = "0." + rest[len("qresi."):]
            k = "quantize.phis." + rest
        out[k] = v
    return out


def official_state_dict(model: VQVAE) -> dict[str, torch.Tensor]:
    """Our weights in the official layout (Phi key pattern by the model's ``share_quant_resi``), loadable strictly
    by the official ``VQVAE``."""
    share_quant_resi = model.quantize.share_quant_resi
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("quantize.phis."):
            j, rest = k[len("quantize.phis."):].split(".", 1)
            prefix = {0: f"{j}.", 1: "qresi."}.get(share_quant_resi, f"qresi_ls.{j}.")
            k = "quantize.quant_resi." + prefix + rest
        state[k] = v
    return state


def _create_vqvae(variant: str, pretrained: bool = False, **kwargs) -> VQVAE:
    return build_model(VQVAE, variant, pretrained, {}, filter_fn=checkpoint_filter_fn, **kwargs)


def _count(state: dict, prefix: str) -> int:
    """Number of consecutive integer children ``prefix{i}.`` present in the state dict."""
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _official_detect(state: dict) -> bool:
    return "quantize.embedding.weight" in state and "encoder.conv_in.weight" in state


def _official_build(state: dict, config: dict) -> VQVAE:
    """Infer V, Cvae, ch, ch_mult, blocks, attention, Phi sharing and quant_conv_ks from shapes; quant_resi, beta,
    using_znorm and patch_nums (``v_patch_nums``) from the official kwargs."""
    vocab_size, z_channels = state["quantize.embedding.weight"].shape
    ch = state["encoder.conv_in.weight"].shape[0]
    n_levels = _count(state, "encoder.down.")
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(n_levels))
    num_res_blocks = _count(state, "encoder.down.0.block.")
    using_sa = f"encoder.down.{n_levels - 1}.attn.0.qkv.weight" in state
    using_mid_sa = "encoder.mid.attn_1.qkv.weight" in state
    if any(k.startswith("quantize.quant_resi.qresi_ls.") for k in state):
        share = _count(state, "quantize.quant_resi.qresi_ls.")
        counts = 0
    elif "quantize.quant_resi.qresi.weight" in state:
        share, counts = 1, 0
    else:
        share, counts = 0, _count(state, "quantize.quant_resi.")
    quant_resi = float(config.get("quant_resi", 0.5))
    if share == 0 and counts == 0:  # no Phi parameters at all: Phi is the identity
        quant_resi, counts = 0.0, 1
    kwargs = dict(
        vocab_size=vocab_size, z_channels=z_channels, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
        dropout=float(config.get("dropout", 0.0)), beta=float(config.get("beta", 0.25)),
        using_znorm=bool(config.get("using_znorm", False)), quant_conv_ks=state["quant_conv.weight"].shape[-1],
        quant_resi=quant_resi, share_quant_resi=share, default_qresi_counts=counts,
        patch_nums=tuple(config.get("v_patch_nums", config.get("patch_nums", RELEASED_PATCH_NUMS))),
        using_sa=using_sa, using_mid_sa=using_mid_sa, in_chans=state["encoder.conv_in.weight"].shape[1])
    with torch.device(next(iter(state.values())).device):
        model = VQVAE(**kwargs)
    return load_weights(model, state, checkpoint_filter_fn)


register_family("var_vqvae", _official_detect, _official_build)


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 256, 256), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "license": "mit",
            "paper_ids": "arXiv:2404.02905", **kwargs}


default_cfgs = {
    "var_vqvae_f16": _cfg(file="vae_ch160v4096z32.pth", notes="official FoundationVision/var release"),
    "var_vqvae_f4_32": _cfg(input_size=(3, 32, 32), file="var_vqvae_f4_32_cifar10.safetensors",
                            notes="small 32x32 config (CIFAR-10), trained by `pixelforge train "
                                  "configs/var/vqvae_cifar10.yaml`"),
    "var_vqvae_f4_64": _cfg(input_size=(3, 64, 64), notes="small 64x64 config"),
}


@register_model
def var_vqvae_f16(pretrained: bool = False, **kwargs) -> VQVAE:
    """Released VAR tokenizer (vae_ch160v4096z32): 256² → 16x16x32, V 4096, 10 scales, 4 shared Phis."""
    return _create_vqvae("var_vqvae_f16", pretrained, **kwargs)


@register_model
def var_vqvae_f4_32(pretrained: bool = False, **kwargs) -> VQVAE:
    """Small CPU tokenizer: 32² → 8x8x16, ch 64, ch_mult (1,1,2), V 512, scales (1,2,3,4,6,8) (L = 130)."""
    args = dict(vocab_size=512, z_channels=16, ch=64, ch_mult=(1, 1, 2), num_res_blocks=1,
                patch_nums=(1, 2, 3, 4, 6, 8))
    return _create_vqvae("var_vqvae_f4_32", pretrained, **{**args, **kwargs})


@register_model
def var_vqvae_f4_64(pretrained: bool = False, **kwargs) -> VQVAE:
    """Small CPU tokenizer: 64² → 16x16x16, ch 64, ch_mult (1,1,2), V 1024, the released 10 scales (L = 680)."""
    args = dict(vocab_size=1024, z_channels=16, ch=64, ch_mult=(1, 1, 2), num_res_blocks=1)
    return _create_vqvae("var_vqvae_f4_64", pretrained, **{**args, **kwargs})

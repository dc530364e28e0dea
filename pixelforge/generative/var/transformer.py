"""VAR transformer: class-conditional next-scale prediction (Tian et al., NeurIPS 2024, FoundationVision/VAR).

A GPT-style decoder over the L = Σ p_k² tokens of all scales. The class embedding is both the start token and the
AdaLN condition of every block; each token gets a level (scale) and a learned absolute position embedding; attention
L2-normalises q and k and multiplies by a learned per-head scale; the block-causal mask lets a token see every token of
its own and coarser scales. Attention goes through :func:`pixelforge.kernels.attention`; sampling with a KV cache is in
:mod:`.sampling`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...kernels import attention
from ...layers.linear import linear
from ...zoo import CheckpointError, build_model, load_weights, register_family, register_model

__all__ = ["VAR", "KVCache", "checkpoint_filter_fn", "official_state_dict", "block_causal_mask", "PATCH_NUMS",
           "PAIRED_TOKENIZER"]

# The --pn aliases of the official training script.
PATCH_NUMS = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}
# ln(100) rounded to float32, the clamp of the learned attention scale (official: torch.log(torch.tensor(100))).
_MAX_SCALE_MUL = float(torch.tensor(100.0).log())


def block_causal_mask(patch_nums: Sequence[int]) -> torch.Tensor:
    """Additive mask (1, L, L): 0 where level(key) <= level(query), -inf elsewhere."""
    lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)])
    return torch.where(lvl[:, None] >= lvl[None, :], 0.0, -torch.inf).unsqueeze(0)


class KVCache:
    """Keys and values of one attention layer for the tokens seen so far, preallocated to ``max_len`` tokens.

    Appending the n keys of a new scale and attending over the whole cache is exactly the block-causal mask.
    """

    def __init__(self, max_len: int):
        self.max_len, self.length = max_len, 0
        self.k = self.v = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H, n, D) → all cached keys and values (B, H, length + n, D)."""
        b, h, n, d = k.shape
        if self.k is None:
            self.k = k.new_empty(b, h, self.max_len, d)
            self.v = v.new_empty(b, h, self.max_len, d)
        if self.length + n > self.max_len:
            raise RuntimeError(f"KV cache overflow: {self.length} + {n} tokens > {self.max_len}")
        self.k[:, :, self.length:self.length + n] = k
        self.v[:, :, self.length:self.length + n] = v
        self.length += n
        return self.k[:, :, :self.length], self.v[:, :, :self.length]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a separate q/v bias (the k bias is zero) and optional L2-normalised q, k.

    With ``attn_l2_norm``: q ← normalize(q)·exp(min(s_h, ln 100)), k ← normalize(k), softmax scale 1 (logits bounded by
    ±100). Without: softmax scale 0.25/√d (the official, non-standard value). (B, N, C) → (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, attn_l2_norm: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None
                ) -> torch.Tensor:
        """x (B, N, C); mask (1, N, Nk) additive; cache: earlier scales' keys/values (then Nk = cached + N)."""
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, D) each
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(_MAX_SCALE_MUL).exp())
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.append(k, v)
        out = attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), mask=mask, scale=self.scale)
        return linear(out.squeeze(1).transpose(1, 2).reshape(b, n, c), self.proj.weight, self.proj.bias)


class AdaLNSelfAttnBlock(nn.Module):
    """Pre-norm transformer block modulated by the class condition (AdaLN, no affine LayerNorm).

    ``(γ1, γ2, s1, s2, b1, b2) = Linear(SiLU(cond))`` in that order (or ``ada_gss + shared`` with shared AdaLN),
    :meth:`modulation`, then ``x += γ1·Attn(LN(x)(1+s1)+b1)`` and ``x += γ2·FFN(LN(x)(1+s2)+b2)``;
    FFN = fc2(GELU_tanh(fc1)). x (B, N, C); cond (B, C), or the shared modulation (B, 1, 6, C).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 shared_aln: bool = False, attn_l2_norm: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.dim, self.shared_aln = dim, shared_aln
        self.attn = SelfAttention(dim, num_heads, attn_l2_norm)
        self.ffn = Mlp(dim, round(dim * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh"))
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """The block's AdaLN parameters (γ1, γ2, s1, s2, b1, b2) stacked: cond (B, C) or shared (B, 1, 6, C) →
        (B, 1, 6, C). Constant over a sample: the sampler computes it once, not at every scale."""
        return self.ada_gss + cond if self.shared_aln else self.ada_lin(cond).view(-1, 1, 6, self.dim)

    def forward(self, x: torch.Tensor, mods: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """x (B, N, C), mods (B, 1, 6, C) from :meth:`modulation`, mask (1, N, Nk) → (B, N, C)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods.unbind(2)
        h = self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1)
        if self.training:
            x = x + self.drop_path(self.attn(h, mask, cache).mul_(gamma1))
            h = self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)
            return x + self.drop_path(self.ffn(h).mul(gamma2))
        x = torch.addcmul(x, self.attn(h, mask, cache), gamma1)
        h = self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)
        ffn = self.ffn
        h = F.gelu(linear(h, ffn.fc1.weight, ffn.fc1.bias), approximate="tanh")
        return torch.addcmul(x, linear(h, ffn.fc2.weight, ffn.fc2.bias), gamma2)


class AdaLNBeforeHead(nn.Module):
    """``LN(x)·(1 + scale) + shift`` with ``(scale, shift) = Linear(SiLU(cond))``. x (B, N, C), cond (B, C)."""

    def __init__(self, dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


class VAR(nn.Module):
    """Class-conditional next-scale-prediction transformer.

    Args:
        vocab_size: tokenizer codebook size V. Cvae: tokenizer latent channels. num_classes: classes (the null class
            used for guidance is row ``num_classes`` of ``class_emb``). depth, embed_dim, num_heads, mlp_ratio:
            transformer size. drop_path_rate: stochastic depth, linear from 0 over the blocks. norm_eps: LayerNorm eps.
        shared_aln: one AdaLN projection for all blocks plus a learned per-block offset (d36).
        cond_drop_rate: probability of replacing a label by the null class in training (classifier-free guidance).
        attn_l2_norm: L2-normalised attention with a learned scale (every released model).
        patch_nums: token map sides, coarse to fine; must equal the tokenizer's.
        init_adaln, init_adaln_gamma, init_head, init_std: initialisation for training from scratch
            (:meth:`init_weights`; ``init_std < 0`` means √(1/(3C))).
    Shapes: labels (B,) int64; teacher-forcing input (B, L - p_1², Cvae); logits (B, L, V) float32.
    """

    def __init__(self, vocab_size: int = 4096, Cvae: int = 32, num_classes: int = 1000, depth: int = 16,
                 embed_dim: int = 1024, num_heads: int = 16, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-6, shared_aln: bool = False, cond_drop_rate: float = 0.1,
                 attn_l2_norm: bool = True, patch_nums: Sequence[int] = PATCH_NUMS[256], init_adaln: float = 0.5,
                 init_adaln_gamma: float = 1e-5, init_head: float = 0.02, init_std: float = -1.0):
        super().__init__()
        self.vocab_size, self.Cvae, self.num_classes = vocab_size, Cvae, num_classes
        self.depth, self.embed_dim, self.num_heads = depth, embed_dim, num_heads
        self.cond_drop_rate, self.shared_aln = cond_drop_rate, shared_aln
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.L = sum(p * p for p in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends = []
        cur = 0
        for p in self.patch_nums:
            self.begin_ends.append((cur, cur + p * p))
            cur += p * p
        self.grad_checkpointing = False

        self.word_embed = nn.Linear(Cvae, embed_dim)
        self.class_emb = nn.Embedding(num_classes + 1, embed_dim)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, embed_dim))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, embed_dim))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), embed_dim)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 6 * embed_dim)) if shared_aln else None
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            AdaLNSelfAttnBlock(embed_dim, num_heads, mlp_ratio, norm_eps, shared_aln, attn_l2_norm, dpr[i])
            for i in range(depth))
        self.head_nm = AdaLNBeforeHead(embed_dim, norm_eps)
        self.head = nn.Linear(embed_dim, vocab_size)

        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(self.patch_nums)]).view(1, self.L)
        self.register_buffer("lvl_1L", lvl, persistent=False)
        self.register_buffer("attn_mask", block_causal_mask(self.patch_nums), persistent=False)
        self.init_weights(init_adaln, init_adaln_gamma, init_head, init_std)

    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = -1.0) -> None:
        """The official initialisation: truncated normal (std √(1/(3C)) when ``init_std < 0``) for linear and
        embedding weights and the position embeddings, zero biases; head ×init_head; AdaLN scale/shift rows
        ×init_adaln and gamma rows ×init_adaln_gamma; attn.proj and fc2 weights /√(2·depth)."""
        std = init_std if init_std >= 0 else math.sqrt(1 / self.embed_dim / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        c = self.embed_dim
        for blk in self.blocks:
            blk.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            blk.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            if blk.shared_aln:
                blk.ada_gss[:, :, 2:].mul_(init_adaln)
                blk.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                blk.ada_lin[-1].weight[2 * c:].mul_(init_adaln)
                blk.ada_lin[-1].weight[:2 * c].mul_(init_adaln_gamma)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay besides 1-D ones (as the official trainer)."""
        return {"pos_start", "pos_1LC", "lvl_embed.weight"}

    def level_pos(self) -> torch.Tensor:
        """Level plus position embedding of every token: (1, L, C)."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def first_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """Start tokens of the first scale for sampling: cond (B, C) → (B, p_1², C)."""
        b = cond.shape[0]
        return (cond.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)
                + self.level_pos()[:, :self.first_l])

    def scale_tokens(self, si: int, x: torch.Tensor) -> torch.Tensor:
        """Inputs of scale ``si`` >= 1 for sampling: the area-downsampled f_hat (B, p², Cvae) → (B, p², C)."""
        begin, end = self.begin_ends[si]
        return self.word_embed(x) + self.level_pos()[:, begin:end]

    def block_modulations(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """Every block's AdaLN parameters for condition cond (B, C): one (B, 1, 6, C) per block."""
        shared = self.shared_ada_lin(cond).view(-1, 1, 6, self.embed_dim) if self.shared_aln else cond
        return [blk.modulation(shared) for blk in self.blocks]

    def forward_blocks(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None = None,
                       caches: Sequence[KVCache] | None = None, mods: Sequence[torch.Tensor] | None = None
                       ) -> torch.Tensor:
        """Run the blocks: x (B, N, C), cond (B, C), mask (1, N, Nk) → (B, N, C). ``mods``: the
        :meth:`block_modulations` of ``cond`` when already computed (sampling reuses them at every scale)."""
        mods = self.block_modulations(cond) if mods is None else mods
        for i, blk in enumerate(self.blocks):
            if caches is not None:
                x = blk(x, mods[i], mask, caches[i])
            elif self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, mods[i], mask, use_reentrant=False)
            else:
                x = blk(x, mods[i], mask)
        return x

    def get_logits(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, N, C) and cond (B, C) → logits (B, N, V) float32."""
        return linear(self.head_nm(h.float(), cond).float(), self.head.weight, self.head.bias).float()

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each label by the null class with probability ``cond_drop_rate`` (training only)."""
        if not self.training or self.cond_drop_rate <= 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device, generator=generator) < self.cond_drop_rate
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Teacher forcing on all scales.

        Args:
            labels: (B,) int64 classes (``num_classes`` = unconditional). In training mode each is dropped to the
                null class with probability ``cond_drop_rate`` (drawn from ``generator``).
            x_BLCv_wo_first_l: (B, L - p_1², Cvae), the tokenizer's ``idx_to_var_input``.
        Returns:
            logits (B, L, V) float32.
        """
        b = labels.shape[0]
        labels = self.drop_labels(labels, generator)
        with torch.autocast(x_BLCv_wo_first_l.device.type, enabled=False):
            cond = self.class_emb(labels)
            sos = cond.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)
            x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
            x = x + (self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC)
        h = self.forward_blocks(x, cond, self.attn_mask)
        return self.get_logits(h, cond)

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (labels (B,), teacher-forcing input (B, L - p_1², Cvae)) for smoke tests and benchmarks."""
        length = sum(p * p for p in self.patch_nums) - self.first_l
        return torch.randint(0, self.num_classes, (batch_size,)), torch.randn(batch_size, length, self.Cvae)


_BUFFERS = ("lvl_1L", "attn_bias_for_masking")


def checkpoint_filter_fn(state_dict: dict, model: VAR) -> dict:
    """Official VAR keys → ours: same parameter names; the buffers ``lvl_1L``, ``attn_bias_for_masking`` and
    ``blocks.{i}.attn.zero_k_bias`` are checked against the model (level ids, block-causal pattern, zeros) and
    dropped, since the model recomputes them. Our own keys pass unchanged."""
    out = {}
    for k, v in state_dict.items():
        if k in _BUFFERS or k.endswith(".attn.zero_k_bias"):
            _check_buffer(k, v, model)
            continue
        out[k] = v
    return out


def _check_buffer(name: str, value: torch.Tensor, model: VAR) -> None:
    if name == "lvl_1L":
        expected = model.lvl_1L
    elif name == "attn_bias_for_masking":
        expected = model.attn_mask.unsqueeze(0)
    else:
        expected = torch.zeros(model.embed_dim)
    if tuple(value.shape) != tuple(expected.shape):
        raise CheckpointError(f"{name} has shape {tuple(value.shape)}, expected {tuple(expected.shape)} for "
                              f"patch_nums {model.patch_nums}")
    if value.is_meta or expected.is_meta:
        return
    if not torch.equal(value.to(expected.dtype).cpu(), expected.cpu()):
        raise CheckpointError(f"{name} in the checkpoint does not match the model's (patch_nums {model.patch_nums})")


def official_state_dict(model: VAR) -> dict[str, torch.Tensor]:
    """Our weights in the official layout, with the buffers the official VAR saves re-emitted."""
    state = dict(model.state_dict())
    state["lvl_1L"] = model.lvl_1L.clone()
    state["attn_bias_for_masking"] = model.attn_mask.unsqueeze(0).clone()
    for i in range(model.depth):
        state[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(model.embed_dim, device=model.lvl_1L.device)
    return state


def _create_var(variant: str, pretrained: bool = False, **kwargs) -> VAR:
    return build_model(VAR, variant, pretrained, {}, filter_fn=checkpoint_filter_fn, **kwargs)


def _infer_patch_nums(state: dict, config: dict) -> tuple[int, ...]:
    """patch_nums from the kwargs, else from the ``lvl_1L`` buffer, else the known set with the checkpoint's L, K."""
    length, levels = state["pos_1LC"].shape[1], state["lvl_embed.weight"].shape[0]
    if "patch_nums" in config:
        patch_nums = tuple(config["patch_nums"])
    elif "lvl_1L" in state and not state["lvl_1L"].is_meta:
        counts = torch.bincount(state["lvl_1L"].flatten().long()).tolist()
        patch_nums = tuple(math.isqrt(c) for c in counts)
    else:
        known = [p for p in PATCH_NUMS.values() if len(p) == levels and sum(x * x for x in p) == length]
        if not known:
            raise CheckpointError(f"cannot infer patch_nums for L={length} and {levels} levels; pass patch_nums")
        patch_nums = known[0]
    if len(patch_nums) != levels or sum(p * p for p in patch_nums) != length:
        raise CheckpointError(f"patch_nums {patch_nums} do not fit the checkpoint (L={length}, {levels} levels)")
    return patch_nums


def _official_detect(state: dict) -> bool:
    return "class_emb.weight" in state and "lvl_embed.weight" in state and "pos_1LC" in state


def _official_build(state: dict, config: dict) -> VAR:
    """Infer V, Cvae, classes, depth, width, heads, MLP ratio, shared AdaLN, L2 attention and patch_nums from shapes;
    norm_eps, cond_drop_rate and drop_path_rate from the official kwargs."""
    embed_dim = state["class_emb.weight"].shape[1]
    attn_l2_norm = "blocks.0.attn.scale_mul_1H11" in state
    num_heads = state["blocks.0.attn.scale_mul_1H11"].shape[1] if attn_l2_norm else int(config.get("num_heads", 16))
    kwargs = dict(
        vocab_size=state["head.weight"].shape[0], Cvae=state["word_embed.weight"].shape[1],
        num_classes=state["class_emb.weight"].shape[0] - 1,
        depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=state["blocks.0.ffn.fc1.weight"].shape[0] / embed_dim,
        drop_path_rate=float(config.get("drop_path_rate", 0.0)), norm_eps=float(config.get("norm_eps", 1e-6)),
        shared_aln="shared_ada_lin.1.weight" in state, cond_drop_rate=float(config.get("cond_drop_rate", 0.1)),
        attn_l2_norm=attn_l2_norm, patch_nums=_infer_patch_nums(state, config))
    with torch.device(state["pos_1LC"].device):
        model = VAR(**kwargs)
    return load_weights(model, state, checkpoint_filter_fn)


register_family("var", _official_detect, _official_build)


def _cfg(**kwargs) -> dict:
    return {"input_size": (3, 256, 256), "num_classes": 1000, "license": "mit", "paper_ids": "arXiv:2404.02905",
            **kwargs}


default_cfgs = {
    "var_d12": _cfg(file="var_d12.pth", notes="official FoundationVision/var release"),
    "var_d16": _cfg(file="var_d16.pth", notes="official FoundationVision/var release"),
    "var_d20": _cfg(file="var_d20.pth", notes="official FoundationVision/var release"),
    "var_d24": _cfg(file="var_d24.pth", notes="official FoundationVision/var release"),
    "var_d30": _cfg(file="var_d30.pth", notes="official FoundationVision/var release"),
    "var_d36": _cfg(file="var_d36.pth", input_size=(3, 512, 512), notes="official release (d36-s, 512²)"),
    "var_d6_32": _cfg(input_size=(3, 32, 32), num_classes=10, file="var_d6_32_cifar10.safetensors",
                      notes="small CPU config (CIFAR-10), trained by `pixelforge train "
                            "configs/var/var_d6_cifar10.yaml`"),
    "var_d8_64": _cfg(input_size=(3, 64, 64), num_classes=10, notes="small CPU config (64²)"),
}

# The tokenizer each registered VAR is trained with (pixelforge model name), used by `pixelforge generate`.
PAIRED_TOKENIZER = {"var_d12": "var_vqvae_f16", "var_d16": "var_vqvae_f16", "var_d20": "var_vqvae_f16",
                    "var_d24": "var_vqvae_f16", "var_d30": "var_vqvae_f16", "var_d36": "var_vqvae_f16",
                    "var_d6_32": "var_vqvae_f4_32", "var_d8_64": "var_vqvae_f4_64"}


def _released(depth: int, **kwargs) -> dict:
    """build_vae_var's rule: C = 64·depth, heads = depth, drop path 0.1·depth/24, L2 attention."""
    return dict(depth=depth, embed_dim=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24, **kwargs)


@register_model
def var_d12(pretrained: bool = False, **kwargs) -> VAR:
    """VAR-d12 (133M), 256²."""
    return _create_var("var_d12", pretrained, **{**_released(12), **kwargs})


@register_model
def var_d16(pretrained: bool = False, **kwargs) -> VAR:
    """VAR-d16 (310M), 256², README FID 3.55."""
    return _create_var("var_d16", pretrained, **{**_released(16), **kwargs})


@register_model
def var_d20(pretrained: bool = False, **kwargs) -> VAR:
    """VAR-d20 (600M), 256²."""
    return _create_var("var_d20", pretrained, **{**_released(20), **kwargs})


@register_model
def var_d24(pretrained: bool = False, **kwargs) -> VAR:
    """VAR-d24 (1.0B), 256²."""
    return _create_var("var_d24", pretrained, **{**_released(24), **kwargs})


@register_model
def var_d30(pretrained: bool = False, **kwargs) -> VAR:
    """VAR-d30 (2.0B), 256²."""
    return _create_var("var_d30", pretrained, **{**_released(30), **kwargs})


@register_model
def var_d36(pretrained: bool = False, **kwargs) -> VAR:
    """VAR-d36-s (2.3B), 512², shared AdaLN."""
    args = _released(36, shared_aln=True, patch_nums=PATCH_NUMS[512])
    return _create_var("var_d36", pretrained, **{**args, **kwargs})


@register_model
def var_d6_32(pretrained: bool = False, **kwargs) -> VAR:
    """Small VAR for 32² images with ``var_vqvae_f4_32``: depth 6, C 256, 4 heads, 10 classes, L 130."""
    args = dict(vocab_size=512, Cvae=16, num_classes=10, depth=6, embed_dim=256, num_heads=4, drop_path_rate=0.0,
                patch_nums=(1, 2, 3, 4, 6, 8), init_adaln_gamma=1e-3)
    return _create_var("var_d6_32", pretrained, **{**args, **kwargs})


@register_model
def var_d8_64(pretrained: bool = False, **kwargs) -> VAR:
    """Small VAR for 64² images with ``var_vqvae_f4_64``: depth 8, C 384, 6 heads, 10 classes, L 680."""
    args = dict(vocab_size=1024, Cvae=16, num_classes=10, depth=8, embed_dim=384, num_heads=6, drop_path_rate=0.0,
                init_adaln_gamma=1e-3)
    return _create_var("var_d8_64", pretrained, **{**args, **kwargs})

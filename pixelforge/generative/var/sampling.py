"""Next-scale autoregressive sampling of VAR with classifier-free guidance, top-k/top-p and a KV cache.

The random stream follows the official ``autoregressive_infer_cfg`` exactly: one generator; optionally the labels
first (``multinomial`` over a uniform distribution); then per scale one ``multinomial`` of the filtered
probabilities (B·p² rows) and, with ``more_smooth``, one exponential fill for the Gumbel noise. With the same seed,
device and torch version the tokens are those of the official code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .transformer import VAR, KVCache
from .vqvae import VQVAE

__all__ = ["filter_logits_", "sample", "VARSample", "check_pair"]


def filter_logits_(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) masking to -inf along the last dim, in place; returns ``logits``.

    top-k keeps every value >= the k-th largest (ties kept; k >= V keeps everything). top-p sorts ascending and
    removes the positions whose cumulative probability is <= 1 - p, never the largest one.
    """
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return logits


@dataclass
class VARSample:
    """What :func:`sample` returns.

    Attributes:
        images: (B, 3, H, W) in [0, 1]. labels: (B,) int64 (drawn ones when none were given).
        tokens: one (B, p_k²) int64 token map per scale. f_hat: (B, Cvae, p_K, p_K) accumulated latent.
        logits_raw / logits_cfg / logits_filtered / gumbel_soft: per scale, only with ``keep_logits``: the head output
            of the 2B batch (conditional rows, then unconditional), the guided logits (B, p², V), the same after
            top-k/top-p, and the Gumbel-softmax code weights (``more_smooth`` only).
    """

    images: torch.Tensor
    labels: torch.Tensor
    tokens: list[torch.Tensor]
    f_hat: torch.Tensor
    logits_raw: list[torch.Tensor] = field(default_factory=list)
    logits_cfg: list[torch.Tensor] = field(default_factory=list)
    logits_filtered: list[torch.Tensor] = field(default_factory=list)
    gumbel_soft: list[torch.Tensor] = field(default_factory=list)


def check_pair(var: VAR, vqvae: VQVAE) -> None:
    """Raise ValueError when the transformer and the tokenizer do not belong together."""
    mismatch = [f"{name} {a} vs {b}" for name, a, b in (
        ("vocab_size", var.vocab_size, vqvae.vocab_size), ("Cvae", var.Cvae, vqvae.Cvae),
        ("patch_nums", var.patch_nums, vqvae.patch_nums)) if a != b]
    if mismatch:
        raise ValueError("VAR transformer and tokenizer do not match: " + "; ".join(mismatch))


def _labels(var: VAR, batch_size: int, labels, generator, device) -> torch.Tensor:
    if labels is None:
        uniform = torch.full((1, var.num_classes), 1.0 / var.num_classes, dtype=torch.float32, device=device)
        return torch.multinomial(uniform, batch_size, replacement=True, generator=generator).reshape(batch_size)
    if isinstance(labels, int):
        labels = torch.full((batch_size,), var.num_classes if labels < 0 else labels, device=device)
    labels = torch.as_tensor(labels, device=device).long()
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() > var.num_classes:
        raise ValueError(f"labels must be in [0, {var.num_classes}] ({var.num_classes} = unconditional)")
    return labels


@torch.no_grad()
def sample(var: VAR, vqvae: VQVAE, batch_size: int, labels: torch.Tensor | int | None = None, *,
           cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
           generator: torch.Generator | None = None, use_cache: bool = True, keep_logits: bool = False) -> VARSample:
    """Generate images scale by scale (the official ``autoregressive_infer_cfg``); call with both models in eval mode.

    Args:
        var, vqvae: a matching transformer and tokenizer (same vocabulary, Cvae and patch_nums).
        batch_size: B.
        labels: (B,) classes, one int for the whole batch (negative = unconditional), or None to draw B uniformly
            from ``generator`` (the first draw).
        cfg: guidance ramp: at scale k, t = cfg·k/(K-1) and logits = (1+t)·cond - t·uncond.
        top_k, top_p: filtering of the guided logits (0 = off).
        more_smooth: Gumbel-softmax code mixture instead of the sampled codes (visualisation only, not for FID).
        generator: the only source of randomness (the global RNG when None); it must be on the models' device.
        use_cache: KV cache (each scale attends to cached keys); False recomputes the whole prefix with the
            block-causal mask at every scale (same result, for comparison and benchmarks).
        keep_logits: also return the per-scale logits (see :class:`VARSample`).
    """
    check_pair(var, vqvae)
    device = var.pos_1LC.device
    labels = _labels(var, batch_size, labels, generator, device)
    b, num_scales, vocab = batch_size, len(var.patch_nums), var.vocab_size
    cond = var.class_emb(torch.cat((labels, torch.full_like(labels, var.num_classes))))
    x = var.first_tokens(cond)
    size = var.patch_nums[-1]
    f_hat = cond.new_zeros(b, var.Cvae, size, size)
    caches = [KVCache(var.L) for _ in var.blocks] if use_cache else None
    mods = var.block_modulations(cond)
    inputs = []
    out = VARSample(images=None, labels=labels, tokens=[], f_hat=f_hat)
    for si, pn in enumerate(var.patch_nums):
        ratio = si / max(num_scales - 1, 1)
        if use_cache:
            h = var.forward_blocks(x, cond, caches=caches, mods=mods)
        else:
            inputs.append(x)
            end = var.begin_ends[si][1]
            h = var.forward_blocks(torch.cat(inputs, dim=1), cond, mask=var.attn_mask[:, :end, :end],
                                   mods=mods)[:, -pn * pn:]
        logits = var.get_logits(h, cond)
        t = cfg * ratio
        guided = (1 + t) * logits[:b] - t * logits[b:]
        if keep_logits:
            out.logits_raw.append(logits)
            out.logits_cfg.append(guided.clone())
        filtered = filter_logits_(guided, top_k, top_p)
        idx = torch.multinomial(filtered.softmax(dim=-1).view(-1, vocab), 1, replacement=True,
                                generator=generator).view(b, pn * pn)
        out.tokens.append(idx)
        codebook = vqvae.quantize.embedding.weight
        if more_smooth:
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            gumbel = -torch.empty_like(filtered).exponential_(generator=generator).log()
            soft = ((filtered.mul(1 + ratio) + gumbel) / tau).softmax(dim=-1)
            codes = soft @ codebook.unsqueeze(0)
            if keep_logits:
                out.gumbel_soft.append(soft)
        else:
            codes = codebook[idx]
        if keep_logits:
            out.logits_filtered.append(filtered)
        f_hat, next_map = vqvae.quantize.next_ar_input(si, f_hat, codes.transpose(1, 2).reshape(b, var.Cvae, pn, pn))
        if si != num_scales - 1:
            x = var.scale_tokens(si + 1, next_map.view(b, var.Cvae, -1).transpose(1, 2)).repeat(2, 1, 1)
    out.f_hat = f_hat
    out.images = vqvae.fhat_to_img(f_hat).add(1).mul(0.5)
    return out

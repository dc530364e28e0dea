"""The DiT training loss: ε-prediction MSE of a DDPM schedule, plus the variational bound term for the σ channels
when the model learns σ (Improved DDPM, as the official DiT trains)."""
from __future__ import annotations

import math

import torch

__all__ = ["diffusion_loss"]


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_loglik(x, mean, log_scale):
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian discretised to bins of width 2/255 (Improved DDPM)."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))

    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv_std * (centred + 1 / 255)), cdf(inv_std * (centred - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(
        x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    return log_probs


def diffusion_loss(model_out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, scheduler) -> tuple[torch.Tensor, dict]:
    """DiT's training loss: MSE(ε̂, ε), plus — when ``model_out`` has 2C channels (learned σ) — the variational bound
    term (bits/dim) with the mean frozen, σ² = exp(v·log β_t + (1−v)·log β̃_t), v = (out+1)/2 (Improved DDPM).

    model_out: (B, C or 2C, H, W); x0, xt, noise: (B, C, H, W); t: (B,) int64; scheduler: a DDPMScheduler.
    Returns (loss, {"mse", "vb"}).
    """
    c = x0.shape[1]
    eps = model_out[:, :c].float()
    mse = (eps - noise.float()).square().mean()
    if model_out.shape[1] == c:
        return mse, {"mse": mse.item()}
    ac = scheduler.alphas_cumprod.to(x0.device, torch.float64)
    betas = scheduler.betas.to(x0.device, torch.float64)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1, coef2 = betas * ac_prev.sqrt() / (1 - ac), (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)

    def at(v):
        return v[t].float().view(-1, 1, 1, 1)

    x0f, xtf = x0.float(), xt.float()
    true_mean = at(coef1) * x0f + at(coef2) * xtf
    frac = (model_out[:, c:].float() + 1) / 2
    model_logvar = frac * at(torch.log(betas)) + (1 - frac) * at(post_logvar)
    pred_x0 = at(1 / ac.sqrt()) * xtf - at((1 / ac - 1).sqrt()) * eps.detach()
    model_mean = at(coef1) * pred_x0 + at(coef2) * xtf
    kl = _normal_kl(true_mean, at(post_logvar), model_mean, model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -_discretized_gaussian_loglik(x0f, model_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl).mean()
    return mse + vb, {"mse": mse.item(), "vb": vb.item()}

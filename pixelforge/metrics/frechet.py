"""Fréchet distance between two sets of image features, and the feature extractors it is computed with.

``FD = |μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½)`` over features of generated and real images. The name says which
features were used, because the number only compares with numbers from the same extractor:

- ``FD-<model>``: the pre-logit features of a classifier the project trained (e.g. on CIFAR-10). It is *not* FID.
- ``FID``: the 2048-d pool features of the TF-ported Inception-v3 (pytorch-fid's ``pt_inception-2015-12-05``
  weights, 1008 classes), images resized to 299 bilinearly and mapped to [-1, 1] as pytorch-fid does. The user
  supplies the weights file by path; nothing is downloaded.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["frechet_distance", "FeatureStats", "FeatureExtractor", "classifier_extractor", "inception_extractor"]


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); means (D,), covariances (D, D).

    Computed in float64 with ``tr((Σ1 Σ2)^½) = Σ √λ(√Σ1 Σ2 √Σ1)`` (symmetric eigendecompositions, eigenvalues
    below zero from round-off clipped), which is exact for positive semi-definite inputs.
    """
    mu1, mu2, s1, s2 = (t.detach().double().cpu() for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"mismatched statistics: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; covariances "
                         f"{tuple(s1.shape)}, {tuple(s2.shape)}")
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


class FeatureStats:
    """Running mean and covariance (unbiased, float64) of feature vectors, fed batch by batch."""

    def __init__(self):
        self.n, self._sum, self._outer = 0, None, None

    def update(self, features: torch.Tensor) -> FeatureStats:
        """Add a batch of features (B, D)."""
        f = features.detach().double().cpu().flatten(1)
        if self._sum is None:
            self._sum, self._outer = torch.zeros(f.shape[1], dtype=torch.float64), torch.zeros(
                f.shape[1], f.shape[1], dtype=torch.float64)
        self.n += f.shape[0]
        self._sum += f.sum(0)
        self._outer += f.T @ f
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self._sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mu = self.mean
        return (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)

    def frechet(self, other: FeatureStats) -> float:
        """Fréchet distance between these statistics and ``other``'s."""
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)


class FeatureExtractor(nn.Module):
    """Images (B, 3, H, W) in [0, 1] → features (B, D) float32, with ``name`` the metric's name (``FD-x``, ``FID``).

    Args:
        net: the network; ``features(net, x)`` maps the prepared batch to (B, D).
        size: images are resized (bilinear, align_corners=False) to size x size first.
        mean, std: per-channel normalisation applied after resizing.
    """

    def __init__(self, name: str, net: nn.Module, features, size: int, mean, std):
        super().__init__()
        self.name, self.net, self._features, self.size = name, net.eval(), features, size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device, torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self._features(self.net, (x - self.mean) / self.std).float().flatten(1)


def _pre_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.forward_head(net.forward_features(x), pre_logits=True)


def classifier_extractor(model: str | nn.Module, weights=None, name: str | None = None, size: int | None = None,
                         model_args: dict | None = None) -> FeatureExtractor:
    """The pre-logit features of a classifier (any timm-style model with ``forward_features`` and
    ``forward_head(x, pre_logits=True)``), as ``FD-<name>``.

    Args:
        model: a registered model name (pixelforge or timm) or a module. weights: its weights file (for a name;
            default: the model's bundled pretrained weights, e.g. ``cct_2_3x2_32`` trained here on CIFAR-10).
        name: the metric's suffix (default: the model name). size: input side (default: the model's
            pretrained config ``input_size``). Normalisation comes from the pretrained config (mean/std).
        model_args: hyper-parameters the classifier was built with (for a name).
    """
    if isinstance(model, str):
        from timm.models import get_pretrained_cfg

        from ..zoo import create_model, is_model, load_weights

        if is_model(model):
            net = create_model(model, pretrained=weights is None, weights=weights, **(model_args or {}))
        else:
            import timm

            net = timm.create_model(model, pretrained=False, **(model_args or {}))
            if weights is not None:
                load_weights(net, weights)
        pretrained = get_pretrained_cfg(model)
        cfg = pretrained.to_dict() if pretrained is not None else {}
        name = name or model
    else:
        net, name = model, name or type(model).__name__
        cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
        raise ValueError(f"{name} has no forward_features/forward_head(pre_logits=True); cannot take pre-logits")
    size = size or int(cfg.get("input_size", (3, 224, 224))[-1])
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    return FeatureExtractor(f"FD-{name}", net, _pre_logits, size, mean, std)


def _fid_inception_blocks():
    """torchvision Inception blocks with the TF graph's pooling (pytorch-fid's FIDInceptionA/C/E)."""
    from torchvision.models import inception as tv

    def pool(x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(tv.InceptionA):
        def _forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(pool(x))]

    class FIDInceptionC(tv.InceptionC):
        def _forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            return [self.branch1x1(x), b7, bd, self.branch_pool(pool(x))]

    class FIDInceptionE(tv.InceptionE):
        max_pool = False  # the last block (Mixed_7c) max-pools in the TF graph

        def _forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else pool(x)
            return [self.branch1x1(x), b3, bd, self.branch_pool(pooled)]

    return [tv.BasicConv2d, FIDInceptionA, tv.InceptionB, FIDInceptionC, tv.InceptionD, FIDInceptionE,
            tv.InceptionAux]


_INCEPTION_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool")


def _inception_pool(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for name in _INCEPTION_LAYERS:
        x = getattr(net, name)(x)
    return x


def inception_extractor(weights: str | os.PathLike) -> FeatureExtractor:
    """The FID Inception-v3 from a user-supplied ``pt_inception-2015-12-05`` weights file (pytorch-fid's), as
    ``FID``: 2048-d pool3 features of 299x299 inputs in [-1, 1]."""
    from torchvision.models.inception import Inception3

    from ..zoo import CheckpointError, read_checkpoint, unwrap_state_dict

    state = unwrap_state_dict(read_checkpoint(weights))
    fc = state.get("fc.weight")
    if fc is None or tuple(fc.shape) != (1008, 2048):
        raise CheckpointError(f"{weights} is not the FID Inception (pt_inception-2015-12-05, fc 1008x2048; got "
                              f"{None if fc is None else tuple(fc.shape)}); other Inception weights do not give FID")
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False, inception_blocks=_fid_inception_blocks())
    net.Mixed_7c.max_pool = True
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit the FID Inception: missing {missing[:4]}, unexpected "
                              f"{unexpected[:4]}")
    return FeatureExtractor("FID", net, _inception_pool, 299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

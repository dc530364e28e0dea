"""Fréchet distance and its feature extractors (FD-<classifier>, FID Inception from a user file)."""
import numpy as np
import pytest
import torch
from torch import nn

from pixelforge.metrics.frechet import (FeatureStats, classifier_extractor, frechet_distance,
                                        inception_extractor)
from pixelforge.zoo import CheckpointError


def _reference_fd(mu1, s1, mu2, s2):
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_reference():
    pytest.importorskip("scipy")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(300, 16, generator=gen, dtype=torch.float64) @ torch.randn(16, 16, generator=gen,
                                                                               dtype=torch.float64) * 0.5 + 0.3
    sa, sb = FeatureStats().update(a[:150]).update(a[150:]), FeatureStats().update(b)
    np.testing.assert_allclose(sa.cov.numpy(), np.cov(a.numpy(), rowvar=False), atol=1e-10)
    expected = _reference_fd(a.mean(0).numpy(), np.cov(a.numpy(), rowvar=False), b.mean(0).numpy(),
                             np.cov(b.numpy(), rowvar=False))
    assert sa.frechet(sb) == pytest.approx(expected, rel=1e-6)
    assert sa.frechet(sa) == pytest.approx(0.0, abs=1e-8)
    shift = torch.full((16,), 0.5, dtype=torch.float64)
    assert frechet_distance(sa.mean + shift, sa.cov, sa.mean, sa.cov) == pytest.approx(16 * 0.25, rel=1e-8)


def test_frechet_errors():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStats().update(torch.zeros(1, 3)).cov


class _TinyClassifier(nn.Module):
    pretrained_cfg = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8, 10)
        self.seen = None

    def forward_features(self, x):
        self.seen = x
        return self.conv(x)

    def forward_head(self, x, pre_logits=False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)


def test_classifier_extractor_takes_pre_logits_at_the_model_resolution():
    net = _TinyClassifier()
    extractor = classifier_extractor(net, name="tiny")
    assert extractor.name == "FD-tiny"
    images = torch.rand(4, 3, 32, 32)
    feats = extractor(images)
    assert feats.shape == (4, 8)
    assert net.seen.shape == (4, 3, 16, 16)
    assert net.seen.mean().item() == pytest.approx(((images.mean() - 0.5) / 0.25).item(), abs=0.05)
    with pytest.raises(ValueError, match="pre-logits"):
        classifier_extractor(nn.Linear(2, 2), name="linear")


def test_fid_inception_from_user_weights(tmp_path):
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    state = Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()
    torch.save(state, tmp_path / "pt_inception.pth")
    extractor = inception_extractor(tmp_path / "pt_inception.pth")
    assert extractor.name == "FID" and extractor.net.Mixed_7c.max_pool and not extractor.net.Mixed_7b.max_pool
    feats = extractor(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, tmp_path / "imagenet_inception.pth")
    with pytest.raises(CheckpointError, match="not the FID Inception"):
        inception_extractor(tmp_path / "imagenet_inception.pth")

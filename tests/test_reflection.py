"""Reflection synthesis invariants, the synthetic and real paired datasets, and the dereflection training task."""
import pytest
import torch

from pixelforge.data import write_image
from pixelforge.data.reflection import (PairedReflectionFolder, ReflectionSynthesis, SyntheticReflectionPairs,
                                        gaussian_blur)


def _images(gen_seed=0, n=2, size=(3, 40, 52)):
    g = torch.Generator().manual_seed(gen_seed)
    return [torch.rand(size, generator=g) for _ in range(n)]


@pytest.mark.parametrize("preset", ["zhang2018", "errnet"])
def test_synthesis_ranges_shapes_and_seed(preset):
    synth = ReflectionSynthesis.from_config({"preset": preset})
    t, r = _images()
    blend, target, refl = synth(t, r, torch.Generator().manual_seed(3))
    assert blend.shape == target.shape == refl.shape == t.shape
    assert torch.equal(target, t)  # the ground truth is the original transmission
    for img in (blend, refl):
        assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
    again = synth(t, r, torch.Generator().manual_seed(3))
    other = synth(t, r, torch.Generator().manual_seed(4))
    assert torch.equal(blend, again[0]) and torch.equal(refl, again[2])
    assert not torch.equal(blend, other[0])


def test_synthesis_is_a_blend_of_the_two_layers():
    t, r = _images(1)
    plain = ReflectionSynthesis(gamma=1.0, sigma=(0.0, 0.0), overflow_gain=(0.0, 0.0), vignette=False,
                                transmission_weight=(0.5, 0.5), reflection_weight=(0.25, 0.25))
    blend, _, refl = plain(t, r)
    torch.testing.assert_close(refl, 0.25 * r)
    torch.testing.assert_close(blend, (0.5 * t + 0.25 * r).clamp(0, 1))
    # no reflection, no attenuation: the blend is the transmission (up to the gamma round trip)
    none = ReflectionSynthesis(reflection_weight=(0.0, 0.0), transmission_weight=(1.0, 1.0))
    torch.testing.assert_close(none(t, r)[0], t, atol=1e-5, rtol=0)


def test_overflow_correction_brings_the_blend_back():
    t = torch.full((3, 24, 24), 0.9)
    r = torch.full((3, 24, 24), 0.8)
    synth = ReflectionSynthesis(gamma=1.0, sigma=(1.0, 1.0), vignette=False, overflow_gain=(1.0, 1.0),
                                transmission_weight=(1.0, 1.0))
    blend, _, refl = synth(t, r)
    # every pixel overflowed by 0.7: R is lowered by 0.7 to 0.1, so the blend no longer saturates
    torch.testing.assert_close(refl, torch.full_like(r, 0.1), atol=1e-5, rtol=0)
    torch.testing.assert_close(blend, torch.full_like(t, 1.0), atol=1e-5, rtol=0)


def test_gaussian_blur_preserves_constants_and_mass():
    const = torch.full((3, 9, 11), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)
    impulse = torch.zeros(1, 21, 21)
    impulse[0, 10, 10] = 1
    blurred = gaussian_blur(impulse, 1.5)
    torch.testing.assert_close(blurred.sum(), torch.tensor(1.0))
    assert blurred[0, 10, 10] == blurred.max() and torch.equal(blurred, blurred.flip(-1))


def test_bad_synthesis_config_is_named():
    with pytest.raises(ValueError, match="unknown synthesis parameters \\['sigmaa'\\]"):
        ReflectionSynthesis.from_config({"sigmaa": [1, 2]})
    with pytest.raises(ValueError, match="sigma must be a \\[low, high\\] range"):
        ReflectionSynthesis(sigma=(5.0, 1.0))
    with pytest.raises(ValueError, match="unknown synthesis preset"):
        ReflectionSynthesis.from_config({"preset": "nope"})


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(_images(5, n=4, size=(3, 30, 44))):
        write_image(folder / f"img{i}.png", img)
    write_image(folder / "small.png", torch.rand(1, 20, 24))  # grayscale and smaller than the crop
    return sorted(folder.iterdir())


def test_synthetic_pairs_fixed_seed(image_folder):
    ds = SyntheticReflectionPairs(image_folder, crop_size=32, length=7, seed=11, augment=False)
    assert len(ds) == 7
    blend, target = ds[2]
    assert blend.shape == target.shape == (3, 32, 32)
    assert torch.equal((blend * 255).round(), blend * 255)  # quantised to 8 bits like a file
    same = SyntheticReflectionPairs(image_folder, crop_size=32, length=7, seed=11, augment=False)
    assert all(torch.equal(ds[i][0], same[i][0]) for i in range(7))
    other = SyntheticReflectionPairs(image_folder, crop_size=32, length=7, seed=12, augment=False)
    assert not torch.equal(ds[2][0], other[2][0])
    with pytest.raises(IndexError):
        ds[7]


def test_synthetic_pairs_training_follow_global_rng(image_folder):
    ds = SyntheticReflectionPairs(image_folder, crop_size=16, length=3)
    torch.manual_seed(0)
    a = ds[0]
    torch.manual_seed(0)
    b = ds[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_paired_folder(tmp_path):
    root = tmp_path / "real"
    (root / "blended").mkdir(parents=True)
    (root / "transmission_layer").mkdir()
    for name in ("a", "b"):
        write_image(root / "blended" / f"{name}.png", torch.rand(3, 20, 24))
        write_image(root / "transmission_layer" / f"{name}.jpg", torch.rand(3, 20, 24))
    ds = PairedReflectionFolder(root)
    assert len(ds) == 2 and ds[1][0].shape == (3, 20, 24)
    assert PairedReflectionFolder(root, crop_size=16)[0][1].shape == (3, 16, 16)
    write_image(root / "blended" / "c.png", torch.rand(3, 20, 24))
    with pytest.raises(ValueError, match="1 mixture image\\(s\\) .* have no transmission .*: c.png"):
        PairedReflectionFolder(root)
    with pytest.raises(FileNotFoundError, match="no mixture folder"):
        PairedReflectionFolder(root / "transmission_layer")


def test_dereflect_task_step_and_eval(image_folder, tmp_path, monkeypatch):
    from pixelforge.layers import vgg as vgg_module
    from pixelforge.train import TASKS
    from pixelforge.train.loop import resolve_task

    monkeypatch.setattr(vgg_module, "_RANDOM_WARNED", True)
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path / "home"))
    assert "dereflect" in TASKS
    folder = image_folder[0].parent
    val = tmp_path / "val"
    val.mkdir()
    for i, img in enumerate(_images(9, n=2, size=(3, 40, 40))):
        write_image(val / f"v{i}.png", img)
    cfg = {"task": "dereflect", "model": {"name": "cfsr_dereflect", "args": {"embed_dim": 8, "depths": [1],
                                                                           "deploy": False}},
           "data": {"train_roots": [str(folder)], "crop_size": 16, "val_roots": [str(val)], "val_pairs": 3,
                    "val_crop": 32},
           "loss": {"pixel": "mse", "gradient_weight": 0.4, "adversarial_weight": 0.01}}
    task = resolve_task("dereflect")(cfg)
    assert task.perceptual is None  # no VGG-19 weights anywhere: the perceptual loss is off
    model, train, val_ds = task.setup()
    assert len(val_ds) == 3 and val_ds[0][0].shape == (3, 32, 32)
    batch = torch.utils.data.default_collate([train[0], train[1]])
    loss, logs = task.training_step(model, batch)
    loss.backward()
    assert {"pixel", "gradient", "adversarial", "discriminator"} <= set(logs)
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert model.generator.backbone.conv_first.weight.grad.abs().sum() > 0
    with torch.no_grad():
        metrics = task.evaluate(model.eval(), torch.utils.data.DataLoader(val_ds, batch_size=2))
    assert set(metrics) == {"psnr", "ssim", "input_psnr", "input_ssim"} and 0 < metrics["input_psnr"] < 100
    path = task.export(model, tmp_path / "model.safetensors", {})
    import pixelforge
    pixelforge.create_model("cfsr_dereflect", embed_dim=8, depths=[1], weights=path)  # merged generator only

"""Experiment configs: YAML reading and dotted key=value overrides."""
import pytest

from pixelforge.train.config import apply_overrides, load_config


def test_overrides_parse_yaml_scalars_and_exponent_floats():
    cfg = apply_overrides({"optimizer": {"name": "adamw"}},
                          ["optimizer.lr=3e-4", "optimizer.eps=1E-8", "train.steps=5", "train.name=abc",
                           "train.milestones=[1e3, 2]", "train.ratio=.5", "train.flag=true"])
    assert cfg["optimizer"] == {"name": "adamw", "lr": 3e-4, "eps": 1e-8}
    assert isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["train"] == {"steps": 5, "name": "abc", "milestones": [1000.0, 2], "ratio": 0.5, "flag": True}


def test_config_file_exponent_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: cls\noptimizer: {lr: 1e-3, wd: 5.0e-2}\ntag: 1e3x\n")
    cfg = load_config(path, ["seed=7"])
    assert cfg["optimizer"] == {"lr": 1e-3, "wd": 5e-2} and cfg["tag"] == "1e3x" and cfg["seed"] == 7


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ValueError, match="'a' is not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(bad)

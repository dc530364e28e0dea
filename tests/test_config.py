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


def test_unknown_or_mistyped_keys_name_the_closest_valid_key():
    from pixelforge.train.config import ConfigError, parse_config

    base = {"recipe": "sr", "model": {"name": "cfsr_x2"}, "data": {"scale": 2, "train_roots": ["x"]}}
    with pytest.raises(ConfigError, match=r"unknown config key 'optimiser'; did you mean 'optimizer'\?"):
        parse_config({**base, "optimiser": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'\?"):
        parse_config({**base, "optimizer": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'train.gradient_acumulation_steps'; did you mean "
                                          r"'train.gradient_accumulation_steps'\?"):
        parse_config({**base, "train": {"gradient_acumulation_steps": 2}})
    with pytest.raises(ConfigError, match=r"train.total_steps: 'many' is not int"):
        parse_config({**base, "train": {"total_steps": "many"}})
    with pytest.raises(ConfigError, match=r"scheduler.name: 'cosin' is not one of .* \(did you mean 'cosine'\?\)"):
        parse_config({**base, "scheduler": {"name": "cosin"}})
    with pytest.raises(ConfigError, match=r"missing config key 'data.scale'"):
        parse_config({**base, "data": {"train_roots": ["x"]}})
    with pytest.raises(ValueError, match=r"unknown recipe 'srr' \(did you mean 'sr'\?\)"):
        parse_config({**base, "recipe": "srr"})
    # nested sections of a recipe are checked too (a DiffScaler task's dataset SPEC)
    ds = {"recipe": "diffscaler", "base": "b", "tasks": [{"name": "t", "train": {"dir": "d", "clases": ["a"]}}]}
    with pytest.raises(ConfigError, match=r"unknown config key 'tasks\[0\].train.clases'; did you mean "
                                          r"'tasks\[0\].train.classes'\?"):
        parse_config(ds)


def test_resolved_config_has_every_default_and_reads_the_old_recipe_word():
    import yaml

    from pixelforge.train.config import format_config, parse_config

    old = {"task": "sr", "model": {"name": "cfsr_x2"}, "data": {"scale": 2, "train_roots": ["x"]},
           "train": {"mixed_precision": False}, "optimizer": {"lr": 3e-4}}
    cfg = parse_config(old)
    assert cfg.recipe == "sr" and cfg.train.mixed_precision == "no" and cfg.optimizer.lr == 3e-4
    printed = yaml.safe_load(format_config(old))
    assert printed["recipe"] == "sr" and "task" not in printed
    assert printed["train"]["gradient_accumulation_steps"] == 1 and printed["train"]["log_with"] == "none"
    assert printed["scheduler"] == {"name": "cosine", "warmup_steps": 0, "warmup_lr": 1e-6, "min_lr": 1e-6,
                                    "decay_steps": None, "decay_rate": 0.1, "milestones": [], "cooldown_steps": 0,
                                    "patience": 10, "warmup_prefix": False}
    assert printed["data"] == {"scale": 2, "train_roots": ["x"], "val_holdout": 0, "patch_size": 48, "repeat": 1,
                               "val_center_crop": None}
    assert parse_config(printed) == cfg  # the printed config reads back to the same run


def test_every_shipped_config_resolves():
    from conftest import REPO

    from pixelforge.train.config import parse_config

    for path in sorted((REPO / "configs").glob("*/*.yaml")):
        if path.parent.name != "accelerate":
            assert parse_config(load_config(path)).recipe, path

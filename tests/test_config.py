"""Config schema: presets, overrides, strictness."""

import pytest

from spacil.config import ConfigError, list_presets, load_config


def test_defaults_and_presets_load():
    assert load_config().backbone.name == "tiny-test"
    for name in list_presets():
        load_config(name)


def test_unknown_keys_are_errors_naming_the_key():
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        load_config(None, ["nonsense=1"])


def test_overrides_keep_types():
    cfg = load_config(None, ["train.epochs=3", "train.lr=0.5", "data.class_order=[2, 0, 1]", "data.init_cls=1",
                                "run.plots=false"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.5
    assert cfg.data.class_order == [2, 0, 1]
    assert cfg.run.plots is False


def test_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=-1"])
    assert "train.epochs" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")


def test_yaml_extends(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: cifar100_b0_inc10\ntrain:\n  epochs: 2\n")
    cfg = load_config(f)
    assert cfg.data.dataset == "cifar100" and cfg.train.epochs == 2

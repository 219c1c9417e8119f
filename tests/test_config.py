"""Packaged YAML presets and command-line style overrides."""

import pytest

from oneformore.config import apply_overrides, load_config, preset_names


def test_presets_are_packaged():
    assert {"tiny", "base"} <= set(preset_names())
    assert load_config("tiny")["image_size"] == 128


def test_overrides_are_typed_and_checked(tmp_path):
    cfg = load_config("tiny", ["train.lr=1e-3", "unet.channel_mult=[1,2]", "space=pixel"])
    assert cfg["train"]["lr"] == 1e-3 and cfg["unet"]["channel_mult"] == [1, 2] and cfg["space"] == "pixel"
    with pytest.raises(KeyError, match="no key 'lrr' under train"):
        apply_overrides(cfg, ["train.lrr=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(cfg, ["train.lr"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("huge")
    path = tmp_path / "mine.yaml"
    path.write_text("image_size: 64\n")
    assert load_config(path) == {"image_size": 64}


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_train_sections_are_valid_trainer_configs(preset):
    from oneformore.train import TrainerConfig

    cfg = TrainerConfig.from_dict(load_config(preset)["train"])
    assert cfg.steps > cfg.warmup_steps
    with pytest.raises(ValueError, match="unknown keys"):
        TrainerConfig.from_dict({"stepz": 1})

"""Settings: allowed values declared once (config.RULES), checked when a config is built, errors naming the
setting; old config.json files still load."""

import json
import warnings

import pytest

from chaiderm.config import (
    ModelConfig,
    RemovedSettingWarning,
    RunConfig,
    SettingError,
    TrainConfig,
    check_setting,
    choices,
)
from chaiderm.errors import DataError


@pytest.mark.parametrize(
    ("kind", "setting", "value", "message"),
    [
        (ModelConfig, "vote", "foo", "vote: 'foo' is not one of uniform, distance"),
        (ModelConfig, "views", "flip8", "views: 'flip8' is not one of none, flip, flip4"),
        (ModelConfig, "colour", "grey", "colour: 'grey' is not one of none, shades_of_gray"),
        (ModelConfig, "padding", "circular", "padding: 'circular' is not one of zeros, replicate, reflect"),
        (ModelConfig, "map_stride", 8, "map_stride: 8 is not one of 32, 16"),
        (ModelConfig, "head", "mlp", "head: 'mlp' is not one of conv, none"),
        (TrainConfig, "logic", "tree", "logic: 'tree' is not one of disease, joint"),
        (TrainConfig, "optimizer", "lbfgs", "optimizer: 'lbfgs' is not one of adam, sgd"),
        (TrainConfig, "ema_decay", 1.0, "ema_decay: must be in [0, 1), got 1.0"),
        (TrainConfig, "zoom", 0.5, "zoom: must be in [1, 4], got 0.5"),
        (TrainConfig, "mask_dice_share", 2.0, "mask_dice_share: must be in [0, 1], got 2.0"),
        (TrainConfig, "batch_size", 0, "batch_size: must be at least 1, got 0"),
    ],
)
def test_a_bad_value_is_refused_when_the_config_is_built_naming_the_setting(kind, setting, value, message):
    with pytest.raises(SettingError) as e:
        kind(**{setting: value})
    assert str(e.value).startswith(message) and e.value.setting == setting


def test_the_implementations_offer_exactly_the_declared_values():
    from chaiderm.index.knn import VOTES
    from chaiderm.models.embedding import VIEWS
    from chaiderm.models.registry import MAP_STRIDES, PADDINGS

    assert tuple(VIEWS) == choices("views") and choices("vote") == VOTES
    assert choices("padding") == PADDINGS and choices("map_stride") == MAP_STRIDES
    with pytest.raises(SettingError, match="vote"):
        check_setting("vote", "majority")
    assert check_setting("vote", "distance") == "distance"


def _old_config(**train) -> dict:
    d = RunConfig().to_dict()
    d["model"]["map_background"] = "none"  # every config.json written while the setting existed has it
    d["train"].update({"ce_weight": 0.0, **train})
    return d


def test_an_old_config_with_removed_settings_at_their_defaults_loads_silently(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_old_config()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = RunConfig.load(path)
    assert cfg == RunConfig()


def test_an_old_config_trained_with_cross_entropy_loads_with_a_notice(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_old_config(ce_weight=1.0)))
    with pytest.warns(RemovedSettingWarning, match=r"train.ce_weight = 1.0 ignored: removed.*cv_round13"):
        cfg = RunConfig.load(path)
    assert not hasattr(cfg.train, "ce_weight")


def test_an_old_model_with_border_maps_is_refused_naming_the_replacement(tmp_path):
    d = _old_config()
    d["model"]["map_background"] = "border"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"map_background = 'border': removed.*--padding replicate"):
        RunConfig.load(path)


def test_a_bad_value_in_a_saved_file_names_the_file_and_section(tmp_path):
    d = RunConfig().to_dict()
    d["model"]["vote"] = "majority"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(DataError) as e:
        RunConfig.load(path)
    assert not isinstance(e.value, SettingError)  # a file's fault: the CLI does not blame an option
    assert str(e.value).startswith(f"{path}: model.vote: 'majority' is not one of uniform, distance")

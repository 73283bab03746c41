"""Setting and SettingSpace: the one type of an adaptive setting and the grid a model was trained on."""

import pytest

from adaperceiver.adapt.policy import ActionSpace
from adaperceiver.evaluation import SweepConfig
from adaperceiver.models import Setting, SettingSpace, create_model


def test_setting_is_a_frozen_hashable_tuple_ordered_by_cost():
    s = Setting.parse("16,3,48")
    assert s == (16, 3, 48) and hash(s) == hash((16, 3, 48)) and str(s) == "16,3,48"
    assert s.as_dict() == {"tokens": 16, "depth": 3, "width": 48}
    with pytest.raises(AttributeError):
        s.tokens = 8  # type: ignore[misc]
    # no larger on every axis -> sorts first, whatever the axis order
    assert sorted([Setting(32, 1, 64), Setting(8, 4, 32), Setting(8, 1, 32)]) == [(8, 1, 32), (8, 4, 32), (32, 1, 64)]
    assert Setting(8, 1, 32) < Setting(8, 2, 32) and Setting(8, 4, 64) >= (8, 4, 64)
    assert Setting.of({"tokens": 4, "depth": 1, "width": 16, "acc1": 50.0}) == (4, 1, 16)
    assert SweepConfig is Setting


@pytest.mark.parametrize("text", ["16,3", "a,b,c", "16,3,48,2", ""])
def test_setting_parse_refuses_bad_text(text):
    with pytest.raises(ValueError, match="TOKENS,DEPTH,WIDTH"):
        Setting.parse(text)


def test_space_validates_and_iterates_the_grid():
    sp = SettingSpace((8, 16), (1, 2, 3), (32, 64))
    grid = list(sp)
    assert len(grid) == len(sp) == 12 and grid[0] == (8, 1, 32) and grid[1] == (8, 1, 64) and sp.full == (16, 3, 64)
    assert all(sp.at(*sp.index(s)) == s for s in grid)
    assert (16, 2, 32) in sp and (12, 2, 32) not in sp and "x" not in sp
    with pytest.raises(ValueError, match=r"depth 4 is not in this space's depths \[1, 2, 3\]"):
        sp.validate((8, 4, 32))
    with pytest.raises(ValueError, match="non-empty increasing"):
        SettingSpace((16, 8), (1,), (32,))
    assert SettingSpace.spanning([(8, 1, 32), (16, 3, 64)]) == SettingSpace((8, 16), (1, 3), (32, 64))


def test_model_space_is_its_trained_grid_and_the_policy_action_space():
    model = create_model("adaperceiver_tiny", num_classes=3)
    cfg = model.cfg
    assert model.space == SettingSpace(cfg.trained_grans, tuple(range(1, cfg.depth + 1)), cfg.widths)
    assert model.configurations() == list(model.space) and all(isinstance(s, Setting) for s in model.configurations())
    space = ActionSpace.of(model)
    assert space.axes == model.space.axes and space.config(0, 1, 2) == Setting(cfg.trained_grans[0], 2, cfg.widths[2])

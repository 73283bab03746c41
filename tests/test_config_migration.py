"""Configs written by 0.1 keep loading: renamed presets, removed experiment flags."""

import json
import shutil
from pathlib import Path

import pytest

from adaperceiver.models.presets import migrate_run_preset, preset_config
from adaperceiver.training import load_run_config

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v0.1" / "run"


def _paper_run(tmp_path: Path, name: str) -> tuple[Path, dict]:
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run)
    meta = json.loads((run / "config.json").read_text())
    meta["train"]["model"] = name
    meta["model"].update(readout="query", head_norm=False, embed_mlp=True, ls_init=0.1, rope_theta=10000.0)
    (run / "config.json").write_text(json.dumps(meta))
    return run, meta["train"]["model_overrides"]


@pytest.mark.parametrize("name, extra", [("adaperceiver_tiny", {}), ("adaperceiver_tiny64", {"img_size": 64, "patch_size": 8})])
def test_a_01_run_of_a_renamed_preset_resumes_as_the_paper_layout(tmp_path, name, extra):
    run, overrides = _paper_run(tmp_path, name)
    with pytest.warns(FutureWarning, match="adaperceiver_tiny_paper"):
        cfg = load_run_config(run)
    assert cfg.model == "adaperceiver_tiny_paper" and cfg.model_overrides == {**overrides, **extra}
    built = preset_config(cfg.model, **cfg.model_overrides)
    assert (built.readout, built.embed_mlp, built.img_size) == ("query", True, extra.get("img_size", 28))


def test_runs_of_the_current_recipe_are_not_renamed():
    train = {"model": "adaperceiver_tiny", "model_overrides": {}}
    assert migrate_run_preset(train, preset_config("adaperceiver_tiny").to_dict()) is train
    assert migrate_run_preset({"model": "adaperceiver_small"}, {}) == {"model": "adaperceiver_small"}


def test_removed_flags_at_their_defaults_are_dropped_with_a_note():
    from adaperceiver.models import AdaPerceiverConfig
    from adaperceiver.training import ObjectiveConfig

    old = dict(preset_config("adaperceiver_tiny").to_dict(), embed_residual=False, latent_pos_std=0.0, read_mlp=False)
    with pytest.warns(FutureWarning, match="dropped the removed fields"):
        assert AdaPerceiverConfig.from_dict(old) == preset_config("adaperceiver_tiny")
    with pytest.warns(FutureWarning, match="self_distill_weight"):
        assert ObjectiveConfig.from_dict({"self_distill_weight": 0.0, "ce_weight": 0.5}) == ObjectiveConfig(ce_weight=0.5)


@pytest.mark.parametrize("field, value", [("read_mlp", True), ("latent_pos_std", 0.02), ("embed_residual", True)])
def test_removed_flags_set_on_are_refused(field, value):
    from adaperceiver.models import AdaPerceiverConfig

    with pytest.raises(ValueError, match=rf"model config sets \{{'{field}': {value}\}}: .*removed in adaperceiver 0.2"):
        AdaPerceiverConfig.from_dict({field: value})
    from adaperceiver.training import ObjectiveConfig

    with pytest.raises(ValueError, match="self_distill_weight.*removed"):
        ObjectiveConfig.from_dict({"self_distill_weight": 1.0})

"""The run configuration: a JSON round trip, and the differences a resume names."""

from __future__ import annotations

import json

import pytest

from progressive.train.config import config_differences, merge_config, preset_config


def test_configuration_round_trips_through_json_and_names_differences():
    config = preset_config("demo")
    restored = merge_config(preset_config("demo"), json.loads(config.to_json()))
    assert restored == config
    changed = merge_config(config, {"seed": 5, "objective": {"weight_kl": 2.0}, "kimg": 99.0})
    differences = config_differences(config.to_dict(), changed.to_dict())
    assert differences == ["objective.weight_kl: 1.0 -> 2.0", "seed: 0 -> 5"]  # kimg may change on resume
    with pytest.raises(ValueError, match="unknown TriangleConfig keys: weight_klx"):
        merge_config(config, {"objective": {"weight_klx": 1}})


def test_a_configuration_with_the_optimiser_under_objective_reads_as_todays_layout():
    """config.json files and checkpoints written before the optimiser had its own section kept its keys (learning
    rates, betas, decays, clipping) under "objective": they load to the same configuration and resume."""
    config = preset_config("demo")
    current = config.to_dict()
    old_layout = json.loads(config.to_json())
    old_layout["objective"] |= old_layout.pop("optimizer")
    assert "lr_energy" in old_layout["objective"] and "optimizer" not in old_layout
    assert merge_config(preset_config("demo"), old_layout) == config
    assert config_differences(old_layout, current) == []
    old_layout["objective"]["lr_energy"] = 5e-5
    assert config_differences(old_layout, current) == ["optimizer.lr_energy: 5e-05 -> 0.0001"]
    partial = merge_config(config, {"objective": {"grad_clip": 10.0, "weight_kl": 2.0}})  # an older --config file
    assert (partial.optimizer.grad_clip, partial.objective.weight_kl) == (10.0, 2.0)

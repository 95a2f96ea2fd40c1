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

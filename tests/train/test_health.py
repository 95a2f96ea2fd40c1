"""Training health: the warnings for statistics out of range, and the run's worst values."""

from __future__ import annotations

import math

import pytest

from progressive.objective import TriangleConfig
from progressive.train.health import health_warnings, record_extremes, sample_diversity


def _tick(**changes) -> dict[str, float]:
    values = {"energy_abs_max": 5.0, "logvar_min": -4.0, "logvar_max": 1.0, "latent_nll": 80.0}
    return {**values, "sample_spread": 0.4, "data_spread": 0.5, **changes}


def test_health_warnings_name_each_statistic_out_of_its_range():
    objective = TriangleConfig()
    assert health_warnings(_tick(), 64, objective) == []
    assert sample_diversity(_tick()) == pytest.approx(0.8)
    cases = {
        "energies reach |E| = 2e+03": _tick(energy_abs_max=2e3),
        "posterior log-variance spans [-12": _tick(logvar_min=-12.0),
        "per latent dimension": _tick(latent_nll=64 * 11.0),
        "samples collapse": _tick(sample_spread=0.01),
    }
    for message, values in cases.items():
        (warning,) = health_warnings(values, 64, objective)
        assert message in warning, warning
    assert len(health_warnings(_tick(energy_abs_max=float("nan"), logvar_max=float("inf")), 64, objective)) == 2
    # One image per process gives no spread: diversity is not measured, so it neither warns nor counts.
    unmeasured = _tick(sample_spread=0.0, data_spread=0.0)
    assert math.isnan(sample_diversity(unmeasured)) and health_warnings(unmeasured, 64, objective) == []
    # Without the latent term (the VAE part alone) the latent NLL is not trained, so it is not judged.
    assert health_warnings(_tick(latent_nll=64 * 11.0), 64, objective.replace(weight_latent=0.0)) == []


def test_run_extremes_keep_the_worst_tick():
    health: dict[str, float] = {}
    record_extremes(health, _tick())
    record_extremes(health, _tick(energy_abs_max=9.0, logvar_min=-2.0, sample_spread=0.1))
    record_extremes(health, _tick(energy_abs_max=3.0, logvar_max=2.5))
    record_extremes(health, _tick(sample_spread=0.0, data_spread=0.0))  # diversity not measured: ignored
    assert health == {"energy_abs_max": 9.0, "logvar_min": -4.0, "logvar_max": 2.5, "diversity_min": 0.2}

"""Run health: the tick statistics that mean a run diverges or collapses, and the extremes kept over a run."""

from __future__ import annotations

import math

from progressive.objective import TriangleConfig

# Bounds outside which a run is reported as diverging or collapsing (docs/training.md, "Warnings").
SANE_ENERGY = 1e3  # largest |E(x)| of real or generated images in an iteration
SANE_LOGVAR = 10.0  # posterior log-variance outside (-10, 10): variances below 5e-5 or above 2e4
SANE_LATENT_NLL_PER_DIM = 10.0  # latent NLL of generated images per latent dimension (N(0, 1) gives ~1.4)
MIN_DIVERSITY = 0.1  # sample diversity relative to the data's


def sample_diversity(values: dict[str, float]) -> float:
    """Per-pixel standard deviation across generated images over the data's (1: as varied as the data).

    NaN when it was not measured: a spread needs two images per process, so one image per GPU has none.
    """
    if not values["data_spread"] > 0:
        return math.nan
    return values["sample_spread"] / values["data_spread"]


def record_extremes(health: dict[str, float], values: dict[str, float]) -> None:
    """Update the run's extremes with one tick's statistics (NaN compares false, so it is kept explicitly)."""
    for key, value, pick in (
        ("energy_abs_max", values["energy_abs_max"], max),
        ("logvar_min", values["logvar_min"], min),
        ("logvar_max", values["logvar_max"], max),
        ("diversity_min", sample_diversity(values), min),
    ):
        if key == "diversity_min" and math.isnan(value):
            continue  # not measured (one image per process), unlike a NaN energy, which is news
        previous = health.get(key)
        health[key] = value if previous is None or math.isnan(value) else pick(previous, value)


def health_warnings(values: dict[str, float], latent_dim: int, objective: TriangleConfig) -> list[str]:
    """One message per tick statistic (averaged over the tick) that left its sane range.

    The latent NLL is judged only when the objective trains it (the VAE part alone leaves it untrained).
    """
    warnings = []
    if not values["energy_abs_max"] <= SANE_ENERGY:
        warnings.append(
            f"energies reach |E| = {values['energy_abs_max']:.3g} (> {SANE_ENERGY:g}): the energy model diverges"
        )
    if not (-SANE_LOGVAR <= values["logvar_min"] and values["logvar_max"] <= SANE_LOGVAR):
        warnings.append(
            f"posterior log-variance spans [{values['logvar_min']:.3g}, {values['logvar_max']:.3g}] "
            f"(outside ±{SANE_LOGVAR:g}); bound it with --logvar-bound"
        )
    if objective.weight_latent != 0 and not values["latent_nll"] / latent_dim <= SANE_LATENT_NLL_PER_DIM:
        warnings.append(
            f"latent NLL {values['latent_nll']:.3g} is {values['latent_nll'] / latent_dim:.3g} per latent dimension "
            f"(> {SANE_LATENT_NLL_PER_DIM:g}): the inference model cannot recover generated latents"
        )
    if sample_diversity(values) < MIN_DIVERSITY:  # NaN (not measured) compares false
        warnings.append(
            f"sample diversity {sample_diversity(values):.3g} of the data's (< {MIN_DIVERSITY:g}): samples collapse"
        )
    return warnings

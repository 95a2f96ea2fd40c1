"""The unchanged training iteration of the objective on the progressive networks, stable and mid-fade."""

from __future__ import annotations

import pytest
import torch

from progressive.presets import build_models
from progressive.schedule import ScheduleConfig, blend_reals, stage_at
from progressive.synthetic import shapes_tensor
from progressive.triangle import apply_learning_rates, build_optimizers, train_step


def snapshot(models) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {key: p.detach().clone() for key, p in net.named_parameters()} for name, net in models.networks().items()
    }


def changed(before: dict[str, torch.Tensor], net: torch.nn.Module) -> set[str]:
    return {key for key, p in net.named_parameters() if not torch.equal(before[key], p.detach())}


def used_parameters(resolution: int, alpha: float) -> dict[str, set[str]]:
    """Top-level (container, resolution) pairs each network evaluates at this stage, from the fade-in rule."""
    lower = [r for r in (4, 8, 16, 32) if r <= resolution]
    generator = {("blocks", r) for r in lower} | {("to_rgb", resolution)}
    down = {("blocks", r) for r in lower} | {("from_rgb", resolution)}
    if alpha < 1:
        generator.add(("to_rgb", resolution // 2))
        down.add(("from_rgb", resolution // 2))
    return {"generator": generator, "energy": down, "inference": down}


def group(key: str) -> tuple[str, int]:
    container, resolution = key.split(".")[:2]
    return container, int(resolution)


@pytest.mark.parametrize(("resolution", "alpha"), [(8, 1.0), (16, 0.5)])
def test_one_iteration_changes_all_three_networks_and_only_their_active_layers(resolution, alpha):
    torch.manual_seed(0)
    models = build_models("tiny")
    models.set_stage(resolution, alpha)
    optimizers = build_optimizers(models)
    before = snapshot(models)
    x = blend_reals(shapes_tensor(4, resolution, seed=1), alpha)

    stats = train_step(models, optimizers, x)

    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    expected = used_parameters(resolution, alpha)
    for name, net in models.networks().items():
        moved = {group(key) for key in changed(before[name], net)}
        assert moved == expected[name], f"{name}: changed {sorted(moved)}, expected {sorted(expected[name])}"


def test_iterations_follow_the_schedule_across_a_growth_step():
    torch.manual_seed(1)
    models = build_models("tiny")
    schedule = ScheduleConfig.for_preset("tiny")
    optimizers = build_optimizers(models)  # built once, before growing: the parameter set never changes
    images_shown = 64 + 64 + 64 - 8  # two batches before 16x16 starts to fade in
    seen = []
    for _ in range(4):
        stage = stage_at(schedule, images_shown)
        models.set_stage(stage.resolution, stage.alpha)
        apply_learning_rates(optimizers, stage.learning_rates)
        real = shapes_tensor(stage.batch_size, stage.resolution, seed=images_shown)
        stats = train_step(models, optimizers, blend_reals(real, stage.alpha))
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
        assert models.stage == (stage.resolution, stage.alpha)
        seen.append((stage.resolution, stage.alpha))
        images_shown += stage.batch_size
    assert seen == [(8, 1.0), (8, 1.0), (16, 0.0), (16, 0.0625)]
    # Adam state carries across the growth step: the 8x8 block was updated four times, the new 16x16
    # block only in the one iteration where its fade-in weight was non-zero.
    state = optimizers.generator.state
    assert state[models.generator.blocks["8"][1].weight]["step"] == 4
    assert state[models.generator.blocks["16"][1].weight]["step"] == 1

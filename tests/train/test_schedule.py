"""Growth schedule: phase boundaries, monotone growth, batch sizes, learning rates, resuming, blended reals."""

from __future__ import annotations

import json

import pytest
import torch

from progressive.presets import PRESETS, build_models
from progressive.train.optim import OptimizerConfig
from progressive.train.schedule import (
    ScheduleConfig,
    Stage,
    blend_reals,
    learning_rates,
    schedule_table,
    stage_at,
)

K = 1_000


def test_default_phase_boundaries_are_exact():
    schedule = ScheduleConfig()
    first = stage_at(schedule, 0)
    assert (first.resolution, first.alpha, first.phase) == (4, 1.0, "stable")
    assert (first.phase_start_images, first.phase_end_images) == (0, 600 * K)
    assert stage_at(schedule, 600 * K - 1).resolution == 4
    fade_start = stage_at(schedule, 600 * K)
    assert (fade_start.resolution, fade_start.alpha, fade_start.phase) == (8, 0.0, "fade")
    assert (fade_start.phase_start_images, fade_start.phase_end_images) == (600 * K, 1200 * K)
    assert stage_at(schedule, 900 * K).alpha == 0.5
    last_fade = stage_at(schedule, 1200 * K - 1)
    assert last_fade.phase == "fade" and last_fade.alpha == (600 * K - 1) / (600 * K)
    stable = stage_at(schedule, 1200 * K)
    assert (stable.resolution, stable.alpha, stable.phase, stable.phase_end_images) == (8, 1.0, "stable", 1800 * K)
    # 4x4 stable, then seven resolutions (8 .. 512) of fade + stable: 1024 fades in from 9.0M to 9.6M images.
    assert stage_at(schedule, 9000 * K - 1).resolution == 512
    top_fade = stage_at(schedule, 9000 * K)
    assert (top_fade.resolution, top_fade.phase, top_fade.alpha) == (1024, "fade", 0.0)
    top = stage_at(schedule, 9600 * K)
    assert (top.resolution, top.phase, top.alpha, top.phase_end_images) == (1024, "stable", 1.0, None)
    far = stage_at(schedule, 10**12)
    assert (far.resolution, far.phase, far.alpha, far.phase_start_images, far.phase_end_images) == (
        1024,
        "stable",
        1.0,
        9600 * K,
        None,
    )
    assert schedule.total_images == 10_200 * K


def test_default_batch_sizes_shrink_at_256_512_1024():
    schedule = ScheduleConfig()
    batch = {r: schedule.batch_size_at(r) for r in [4, 8, 16, 32, 64, 128, 256, 512, 1024]}
    assert batch == {4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 16, 256: 14, 512: 6, 1024: 3}
    assert stage_at(schedule, 9000 * K).batch_size == 3


def test_resolution_is_monotone_and_alpha_stays_in_range():
    schedule = ScheduleConfig()
    previous = stage_at(schedule, 0)
    for images_shown in range(0, 11_000 * K, 9_973):
        stage = stage_at(schedule, images_shown)
        assert 0.0 <= stage.alpha <= 1.0
        assert stage.resolution >= previous.resolution
        if stage.resolution == previous.resolution and stage.phase == previous.phase:
            assert stage.alpha >= previous.alpha
        assert stage.phase_start_images <= images_shown
        assert stage.phase_end_images is None or images_shown < stage.phase_end_images
        assert (stage.phase == "stable") == (stage.alpha == 1.0)
        previous = stage
    assert previous.resolution == 1024


def test_per_resolution_overrides_and_empty_phases():
    schedule = ScheduleConfig(
        min_resolution=4,
        max_resolution=32,
        fade_images={8: 10, 16: 0, 32: 5},
        stable_images={4: 3, 8: 4, 16: 2, 32: 7},
        batch_size=5,
        batch_sizes={16: 2, 1024: 1},
    )
    rows = [(s.resolution, s.phase, s.phase_start_images, s.phase_end_images) for s in schedule_table(schedule)]
    assert rows == [
        (4, "stable", 0, 3),
        (8, "fade", 3, 13),
        (8, "stable", 13, 17),
        (16, "stable", 17, 19),  # a zero-length fade: 16x16 starts fully faded in
        (32, "fade", 19, 24),
        (32, "stable", 24, None),
    ]
    assert stage_at(schedule, 8).alpha == 0.5
    assert stage_at(schedule, 17).batch_size == 2
    assert stage_at(schedule, 23).alpha == 0.8
    assert stage_at(schedule, 10**9).resolution == 32


@pytest.mark.parametrize(
    "changes",
    [
        {"fade_images": {8: 10}},  # 16 and 32 missing
        {"fade_images": {4: 1, 8: 1, 16: 1, 32: 1}},  # the first resolution has no fade
        {"stable_images": -1},
        {"fade_images": 2.5},
        {"batch_size": 0},
        {"batch_sizes": {12: 4}},
        {"batch_sizes": {8: 0}},
        {"lr_multipliers": {8: -1.0}},
        {"min_resolution": 64},
        {"max_resolution": 48},
    ],
)
def test_invalid_configurations_are_rejected(changes):
    with pytest.raises(ValueError):
        ScheduleConfig(**({"min_resolution": 4, "max_resolution": 32} | changes))


def test_invalid_image_counts_are_rejected():
    for images_shown in (-1, 1.5, True):
        with pytest.raises(ValueError):
            stage_at(ScheduleConfig(), images_shown)


def test_learning_rates_follow_the_optimizer_decay_times_the_resolution_multiplier():
    optimizer = OptimizerConfig(lr_energy=1e-4, lr_inference=2e-4, lr_generator=4e-4, lr_decay=0.5, lr_decay_images=100)
    schedule = ScheduleConfig(
        min_resolution=4, max_resolution=16, fade_images=100, stable_images=100, lr_multipliers={16: 2.0}
    )
    at_4 = stage_at(schedule, 50, optimizer)  # no decay step yet
    assert at_4.learning_rates == pytest.approx({"energy": 1e-4, "inference": 2e-4, "generator": 4e-4})
    at_16 = stage_at(schedule, 350, optimizer)  # three decay steps, 16x16 fading in, multiplier 2
    assert at_16.resolution == 16
    assert at_16.learning_rates == pytest.approx({"energy": 2.5e-5, "inference": 5e-5, "generator": 1e-4})
    default = stage_at(schedule, 0)
    assert default.learning_rates == pytest.approx({"energy": 1e-4, "inference": 3e-4, "generator": 3e-4})


def test_learning_rates_ramp_down_along_a_half_cosine_placed_by_images_shown():
    optimizer = OptimizerConfig(
        lr_generator=4e-4, lr_decay=1.0, lr_rampdown_start_kimg=2, lr_rampdown_kimg=4, lr_rampdown_floor=0.25
    )
    generator = {images: learning_rates(optimizer, images)["generator"] for images in (0, 1999, 2000, 4000, 6000)}
    assert generator[0] == generator[1999] == generator[2000] == pytest.approx(4e-4)
    assert generator[4000] == pytest.approx(4e-4 * (0.25 + 0.75 * 0.5))  # half-way: cos(pi/2) = 0
    assert generator[6000] == pytest.approx(1e-4)
    assert learning_rates(optimizer, 10**9)["energy"] == pytest.approx(0.25 * 1e-4)  # the floor stays
    inside = [learning_rates(optimizer, images)["inference"] for images in range(2000, 6001, 250)]
    assert all(later < earlier for earlier, later in zip(inside, inside[1:], strict=False))
    without = OptimizerConfig(lr_decay=1.0, lr_rampdown_start_kimg=2, lr_rampdown_floor=0.25)  # length 0: off
    assert learning_rates(without, 10**9) == learning_rates(without, 0)
    for bad in ({"lr_rampdown_kimg": -1.0}, {"lr_rampdown_start_kimg": -1.0}, {"lr_rampdown_floor": 1.5}):
        with pytest.raises(ValueError, match="lr_rampdown"):
            OptimizerConfig(**bad)


def simulate(schedule: ScheduleConfig, images_shown: int, stop: int) -> tuple[list[Stage], int]:
    """Step through training as a trainer does (images_shown += batch size) until `stop` images."""
    stages = []
    while images_shown < stop:
        stage = stage_at(schedule, images_shown)
        stages.append(stage)
        images_shown += stage.batch_size
    return stages, images_shown


def test_resuming_from_the_image_counter_reproduces_the_schedule():
    settings = {
        "min_resolution": 4,
        "max_resolution": 32,
        "fade_images": 30,
        "stable_images": {4: 20, 8: 25, 16: 30, 32: 10},
        "batch_sizes": {16: 3, 32: 2},
        "batch_size": 4,
    }
    uninterrupted, _ = simulate(ScheduleConfig(**settings), 0, 250)
    first_half, counter = simulate(ScheduleConfig(**settings), 0, 97)
    checkpoint = json.dumps({"images_shown": counter})  # all a checkpoint needs for the schedule
    resumed_counter = json.loads(checkpoint)["images_shown"]
    second_half, _ = simulate(ScheduleConfig(**settings), resumed_counter, 250)
    assert first_half + second_half == uninterrupted
    assert {s.resolution for s in uninterrupted} == {4, 8, 16, 32}
    assert any(0 < s.alpha < 1 for s in second_half)


def test_schedule_table_lists_every_phase_back_to_back():
    table = schedule_table(ScheduleConfig())
    assert len(table) == 1 + 2 * 8
    assert [(s.resolution, s.phase) for s in table[:3]] == [(4, "stable"), (8, "fade"), (8, "stable")]
    for before, after in zip(table[:-1], table[1:], strict=True):
        assert before.phase_end_images == after.phase_start_images
        assert after.resolution in (before.resolution, 2 * before.resolution)
    assert all(s.alpha == (0.0 if s.phase == "fade" else 1.0) for s in table)
    assert table[-1].resolution == 1024 and table[-1].phase_end_images is None
    for row in table:
        assert stage_at(ScheduleConfig(), row.phase_start_images) == row


def test_every_preset_has_a_schedule_matching_its_networks():
    for name in PRESETS:
        schedule = ScheduleConfig.for_preset(name)
        if name in ("celebahq", "lsun"):
            expected = (4, 1024 if name == "celebahq" else 256)  # too large to build here; tested elsewhere
        else:
            models = build_models(name)
            expected = (models.min_resolution, models.resolution)
        assert (schedule.min_resolution, schedule.max_resolution) == expected, name
    with pytest.raises(ValueError, match="no default schedule"):
        ScheduleConfig.for_preset("imagenet")


def test_blend_reals_mixes_the_coarse_and_the_full_image():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    b, c, h, w = x.shape
    pooled = x.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))
    coarse = pooled.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert blend_reals(x, 1.0) is x
    torch.testing.assert_close(blend_reals(x, 0.0), coarse)
    torch.testing.assert_close(blend_reals(x, 0.25), 0.75 * coarse + 0.25 * x)
    # The downward models' old path pools the input: it sees the same 4x4 images at every alpha.
    for alpha in (0.0, 0.4, 1.0):
        torch.testing.assert_close(torch.nn.functional.avg_pool2d(blend_reals(x, alpha), 2), pooled)
    for alpha in (-0.1, 1.1):
        with pytest.raises(ValueError):
            blend_reals(x, alpha)

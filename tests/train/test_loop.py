"""Pieces of the training loop: data order, noise, loss scaling per network, moving average."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from progressive.data import StreamBatchSampler
from progressive.models import update_ema
from progressive.train.config import preset_config
from progressive.train.loop import ema_beta
from progressive.train.noise import draw_noise
from progressive.updates import GuardedUpdate


def _take(sampler: StreamBatchSampler, batches: int) -> list[list[int]]:
    iterator = iter(sampler)
    return [next(iterator) for _ in range(batches)]


def test_stream_is_a_pure_function_of_images_shown():
    straight = _take(StreamBatchSampler(10, global_batch=4, seed=3), 6)
    flat = [i for batch in straight for i in batch]
    # Every epoch of 10 is a permutation, and the stream runs across epoch boundaries without gaps.
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    resumed = _take(StreamBatchSampler(10, global_batch=4, seed=3, start=8), 4)
    assert resumed == straight[2:]
    assert _take(StreamBatchSampler(10, global_batch=4, seed=4), 1) != straight[:1]


def test_ranks_take_disjoint_slices_of_the_single_process_batch():
    single = _take(StreamBatchSampler(50, global_batch=6, seed=1), 5)
    ranks = [_take(StreamBatchSampler(50, global_batch=6, seed=1, rank=r, world_size=3), 5) for r in range(3)]
    for step in range(5):
        assert ranks[0][step] + ranks[1][step] + ranks[2][step] == single[step]
    with pytest.raises(ValueError, match="not divisible by the 4 processes"):
        StreamBatchSampler(50, global_batch=6, world_size=4)


def test_noise_depends_on_seed_and_images_shown_and_is_sliced_like_the_data():
    generator = torch.Generator()
    whole = draw_noise(generator, seed=0, images_shown=64, global_batch=4, latent_dim=3, rank=0, world=1)
    again = draw_noise(generator, seed=0, images_shown=64, global_batch=4, latent_dim=3, rank=0, world=1)
    torch.testing.assert_close(whole.z, again.z, rtol=0, atol=0)
    other = draw_noise(generator, seed=0, images_shown=68, global_batch=4, latent_dim=3, rank=0, world=1)
    assert not torch.equal(whole.z, other.z)
    halves = [
        draw_noise(generator, seed=0, images_shown=64, global_batch=4, latent_dim=3, rank=r, world=2) for r in (0, 1)
    ]
    torch.testing.assert_close(torch.cat([h.z for h in halves]), whole.z, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([h.eps[1] for h in halves]), whole.eps[1], rtol=0, atol=0)
    assert torch.equal(torch.cat([h.flip for h in halves]), whole.flip)


def _guarded(enabled: bool) -> GuardedUpdate:
    return GuardedUpdate(
        scalers={
            n: torch.amp.GradScaler("cpu", enabled=enabled, init_scale=1024.0)
            for n in ("energy", "inference", "generator")
        }
    )


def test_an_overflow_skips_only_that_networks_step_and_lowers_only_its_scale():
    torch.manual_seed(0)
    nets = {n: nn.Linear(3, 1) for n in ("energy", "inference", "generator")}
    optimizers = {n: torch.optim.SGD(net.parameters(), lr=0.1) for n, net in nets.items()}
    update = _guarded(enabled=True)
    before = {n: net.weight.detach().clone() for n, net in nets.items()}
    x = torch.randn(4, 3)
    for name, net in nets.items():
        loss = net(x).mean() * (float("inf") if name == "inference" else 1.0)
        update(name, optimizers[name], net, loss, 100.0)
    assert update.skipped == {"energy": 0, "inference": 1, "generator": 0}
    assert update.skipped_this_iteration
    assert torch.equal(nets["inference"].weight, before["inference"])
    assert not torch.equal(nets["energy"].weight, before["energy"])
    assert not torch.equal(nets["generator"].weight, before["generator"])
    assert update.scalers["inference"].get_scale() == 512.0
    assert update.scalers["energy"].get_scale() == 1024.0 and update.scalers["generator"].get_scale() == 1024.0


def test_scaled_update_equals_the_unscaled_one():
    torch.manual_seed(1)
    x = torch.randn(8, 3)
    results = []
    for enabled in (False, True):
        torch.manual_seed(2)
        net = nn.Linear(3, 2)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        _guarded(enabled)("energy", optimizer, net, net(x).pow(2).mean(), 100.0)
        results.append(net.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_moving_average_has_the_configured_half_life():
    config = preset_config("tiny")
    config.ema_kimg = 1.0
    beta = ema_beta(config, batch=100, images_shown=1_000_000)
    assert beta**10 == pytest.approx(0.5)  # 10 batches of 100 images = one half-life
    # Early on the half-life is ema_rampup (5%) of the images shown: 500 images after 10,000.
    assert ema_beta(config, batch=100, images_shown=10_000) ** 5 == pytest.approx(0.5)
    config.ema_rampup = None
    assert ema_beta(config, batch=100, images_shown=10_000) == pytest.approx(beta)
    average, current = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    nn.init.zeros_(average.weight)
    nn.init.ones_(current.weight)
    for _ in range(10):
        update_ema(average, current, beta)
    torch.testing.assert_close(average.weight, torch.full((2, 2), 0.5))


def test_noise_negatives_come_from_the_iteration_seed_and_are_sliced_like_the_batch():
    from progressive.train.noise import draw_noise

    generator = torch.Generator()
    whole = draw_noise(generator, 3, 96, 4, 8, 0, 1, noise_images=(1, 8))
    halves = [draw_noise(generator, 3, 96, 4, 8, rank, 2, noise_images=(1, 8)) for rank in (0, 1)]
    assert whole.noise_images.shape == (4, 3, 8, 8) and whole.noise_images.abs().max() <= 1
    assert torch.equal(whole.noise_images[:, 0], whole.noise_images[:, 2])  # gray noise for a grayscale run
    assert torch.equal(torch.cat([h.noise_images for h in halves]), whole.noise_images)
    without = draw_noise(generator, 3, 96, 4, 8, 0, 1)
    assert without.noise_images is None and torch.equal(without.z, whole.z) and torch.equal(without.flip, whole.flip)
    smooth = draw_noise(generator, 3, 96, 4, 8, 0, 1, noise_images=(1, 8), noise_octaves=2)
    smooth_halves = [draw_noise(generator, 3, 96, 4, 8, r, 2, noise_images=(1, 8), noise_octaves=2) for r in (0, 1)]
    assert torch.equal(torch.cat([h.noise_images for h in smooth_halves]), smooth.noise_images)
    assert torch.equal(smooth.z, whole.z) and torch.equal(smooth.flip, whole.flip)

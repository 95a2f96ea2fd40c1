"""Progressive networks: shapes at every stage, exact fade-in limits, fixed parameter set, presets."""

from __future__ import annotations

import pytest
import torch

from progressive.nets.layers import NORMS, PixelNorm, channels_per_resolution
from progressive.nets.networks import (
    ProgressiveEnergy,
    ProgressiveGenerator,
    ProgressiveInference,
    parameters_per_resolution,
)
from progressive.presets import build_models

# The progressive-GAN rule: 512 channels up to 32x32, halving at every doubling after.
CELEBAHQ_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}

TINY = {"latent_dim": 8, "max_resolution": 32, "channel_base": 64, "channel_max": 4}


def tiny_networks(norm: str = "pixel", down_norm: str = "none", equalized: bool = True):
    """Generator, energy and inference model of the `tiny` preset's shape (4 -> 32, 4 channels)."""
    common = {"max_resolution": 32, "channel_base": 64, "channel_max": 4, "equalized": equalized}
    return (
        ProgressiveGenerator(latent_dim=8, norm=norm, **common),
        ProgressiveEnergy(norm=down_norm, **common),
        ProgressiveInference(latent_dim=8, norm=down_norm, **common),
    )


def avg_pool_by_hand(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


def upsample_by_hand(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def all_outputs(generator, energy, inference, z, x):
    mu, logvar = inference(x)
    return {"generator": generator(z), "energy": energy(x), "mu": mu, "logvar": logvar}


@pytest.mark.slow
def test_every_resolution_and_alpha_gives_finite_outputs_of_the_right_shape():
    torch.manual_seed(0)
    models = build_models("tiny1024")
    assert (models.min_resolution, models.resolution) == (4, 1024)
    z = torch.randn(2, models.latent_dim)
    seen = []
    for resolution in [2**k for k in range(2, 11)]:
        for alpha in [1.0] if resolution == 4 else [0.0, 0.3, 1.0]:
            models.set_stage(resolution, alpha)
            images = models.generator(z)
            assert images.shape == (2, 3, resolution, resolution)
            assert images.abs().max() <= 1.0
            energy = models.energy(images)
            mu, logvar = models.inference(images)
            assert energy.shape == (2,) and energy.dtype == torch.float32
            assert mu.shape == logvar.shape == (2, models.latent_dim)
            assert mu.dtype == logvar.dtype == torch.float32
            for t in (images, energy, mu, logvar):
                assert torch.isfinite(t).all(), (resolution, alpha)
            seen.append(resolution)
    assert sorted(set(seen)) == [4, 8, 16, 32, 64, 128, 256, 512, 1024]


def expected_celebahq_counts(latent_dim: int = 512) -> dict[str, int]:
    """Parameter counts of the three celebahq networks, from the layer layout in docs/architecture.md."""
    c = {r: min(512, 16384 // r) for r in [2**k for k in range(2, 11)]}
    conv3 = lambda i, o: 9 * i * o + o  # noqa: E731
    conv1 = lambda i, o: i * o + o  # noqa: E731
    generator = latent_dim * 16 * c[4] + 16 * c[4] + conv3(c[4], c[4])
    generator += sum(conv3(c[r // 2], c[r]) + conv3(c[r], c[r]) for r in c if r > 4)
    generator += sum(conv1(c[r], 3) for r in c)
    trunk = sum(conv3(c[r], c[r]) + conv3(c[r], c[r // 2]) for r in c if r > 4)
    trunk += sum(conv1(3, c[r]) for r in c) + conv3(c[4], c[4]) + conv1(16 * c[4], c[4])
    return {
        "generator": generator,
        "energy": trunk + conv1(c[4], 1),
        "inference": trunk + conv1(c[4], 2 * latent_dim),
    }


def test_celebahq_preset_builds_with_the_expected_parameter_count(record_property):
    models = build_models("celebahq")
    assert (models.min_resolution, models.resolution, models.latent_dim) == (4, 1024, 512)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in models.networks().items()}
    record_property("celebahq_parameters", counts)
    print(f"celebahq parameters: {counts}, total {sum(counts.values()):,}")
    assert counts == expected_celebahq_counts()
    assert models.generator.channels == CELEBAHQ_CHANNELS
    per_resolution = parameters_per_resolution(models.generator)
    assert sum(per_resolution.values()) == counts["generator"]
    # Run only the 4x4 stage: the full 1024 network is far too slow for a CPU test.
    models.set_stage(4, 1.0)
    with torch.no_grad():
        assert models.energy(models.generator(torch.randn(1, 512))).shape == (1,)


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_alpha_zero_equals_the_previous_stage_for_all_three_models(resolution):
    torch.manual_seed(1)
    generator, energy, inference = tiny_networks()
    z = torch.randn(3, 8)
    x = torch.rand(3, 3, resolution, resolution) * 2 - 1
    for net in (generator, energy, inference):
        net.set_stage(resolution // 2, 1.0)
    previous = all_outputs(generator, energy, inference, z, avg_pool_by_hand(x))
    previous["generator"] = upsample_by_hand(previous["generator"])
    for net in (generator, energy, inference):
        net.set_stage(resolution, 0.0)
    current = all_outputs(generator, energy, inference, z, x)
    for name in previous:
        torch.testing.assert_close(current[name], previous[name], msg=f"{name} at alpha 0")


@pytest.mark.parametrize("resolution", [8, 32])
def test_alpha_one_drops_the_old_path(resolution):
    torch.manual_seed(2)
    generator, energy, inference = tiny_networks()
    z = torch.randn(3, 8)
    x = torch.rand(3, 3, resolution, resolution) * 2 - 1
    for net in (generator, energy, inference):
        net.set_stage(resolution, 1.0)
    before_full = all_outputs(generator, energy, inference, z, x)
    for net in (generator, energy, inference):
        net.set_stage(resolution, 0.5)
    before_half = all_outputs(generator, energy, inference, z, x)
    old = str(resolution // 2)
    with torch.no_grad():  # change only the layers of the old path
        generator.to_rgb[old].weight.add_(1.0)
        for down in (energy, inference):
            down.from_rgb[old][0].weight.add_(1.0)
    after_half = all_outputs(generator, energy, inference, z, x)
    for net in (generator, energy, inference):
        net.set_stage(resolution, 1.0)
    after_full = all_outputs(generator, energy, inference, z, x)
    for name in before_full:
        torch.testing.assert_close(after_full[name], before_full[name], rtol=0, atol=0)
        assert not torch.allclose(after_half[name], before_half[name]), f"{name} ignores the old path mid-fade"


def test_outputs_are_continuous_in_alpha():
    torch.manual_seed(3)
    generator, energy, inference = tiny_networks()
    z = torch.randn(3, 8)
    x = torch.rand(3, 3, 16, 16) * 2 - 1

    def at(alpha):
        for net in (generator, energy, inference):
            net.set_stage(16, alpha)
        return all_outputs(generator, energy, inference, z, x)

    for alpha in (0.0, 0.5, 1.0):
        near = min(1.0, alpha + 1e-6) if alpha < 1 else alpha - 1e-6
        here, there = at(alpha), at(near)
        for name in here:
            torch.testing.assert_close(there[name], here[name], rtol=0, atol=1e-4)
    far_a, far_b = at(0.0), at(1.0)
    assert not torch.allclose(far_a["energy"], far_b["energy"])


def test_generator_fade_is_a_linear_blend_before_the_output_activation():
    torch.manual_seed(4)
    generator = ProgressiveGenerator(
        latent_dim=8, max_resolution=16, channel_base=64, channel_max=4, output_activation="none"
    )
    z = torch.randn(2, 8)
    outputs = {}
    for alpha in (0.0, 0.25, 1.0):
        generator.set_stage(16, alpha)
        outputs[alpha] = generator(z)
    torch.testing.assert_close(outputs[0.25], 0.75 * outputs[0.0] + 0.25 * outputs[1.0])


def test_growing_never_changes_the_parameters():
    generator, energy, inference = tiny_networks()
    for net in (generator, energy, inference):
        names = [name for name, _ in net.named_parameters()]
        ids = [id(p) for p in net.parameters()]
        keys = list(net.state_dict())
        for resolution, alpha in [(4, 1.0), (8, 0.5), (32, 0.0), (16, 1.0)]:
            net.set_stage(resolution, alpha)
            assert [name for name, _ in net.named_parameters()] == names
            assert [id(p) for p in net.parameters()] == ids
            assert list(net.state_dict()) == keys
        assert not any(isinstance(b, torch.Tensor) and "alpha" in n for n, b in net.named_buffers())


def test_set_stage_rejects_stages_the_network_cannot_run():
    generator, energy, inference = tiny_networks()
    for net in (generator, energy, inference):
        for resolution, alpha in [(12, 1.0), (2, 1.0), (64, 1.0), (8, -0.1), (8, 1.5), (4, 0.5), (8, True)]:
            with pytest.raises(ValueError):
                net.set_stage(resolution, alpha)
        assert (net.resolution, net.alpha) == (32, 1.0)


def test_wrong_input_shapes_fail_with_what_was_expected():
    generator, energy, inference = tiny_networks()
    for net in (generator, energy, inference):
        net.set_stage(8, 0.5)
    with pytest.raises(AssertionError, match=r"expected z of shape \(B, 8\)"):
        generator(torch.randn(2, 9))
    for net in (energy, inference):
        with pytest.raises(AssertionError, match=r"expected images of shape \(B, 3, 8, 8\)"):
            net(torch.randn(2, 3, 16, 16))


def test_pixel_norm_does_not_overflow_in_float16():
    x = torch.full((1, 4, 2, 2), 1000.0, dtype=torch.float16)  # 1000^2 overflows float16
    y = PixelNorm()(x)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), torch.ones(1, 4, 2, 2))


def test_energy_and_posterior_stay_float32_under_bfloat16_autocast():
    torch.manual_seed(5)
    generator, energy, inference = tiny_networks()
    for net in (generator, energy, inference):
        net.set_stage(16, 0.5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        images = generator(torch.randn(2, 8))
        assert images.dtype == torch.bfloat16  # the convolutions do run in low precision
        s = energy(images)
        mu, logvar = inference(images)
    for t in (s, mu, logvar):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


@pytest.mark.parametrize("norm", NORMS)
def test_every_normalisation_option_runs(norm):
    torch.manual_seed(6)
    generator, energy, inference = tiny_networks(norm=norm, down_norm=norm)
    has_batch_norm = any(isinstance(m, torch.nn.BatchNorm2d) for m in energy.modules())
    assert has_batch_norm == (norm == "batch")
    for net in (generator, energy, inference):
        net.set_stage(8, 0.5)
    outputs = all_outputs(generator, energy, inference, torch.randn(2, 8), torch.rand(2, 3, 8, 8))
    assert all(torch.isfinite(t).all() for t in outputs.values())
    with pytest.raises(ValueError, match="norm must be one of"):
        tiny_networks(norm="layer")


def test_equalized_learning_rate_changes_storage_not_the_initial_function():
    outputs = []
    for equalized in (True, False):
        torch.manual_seed(7)
        generator, energy, _ = tiny_networks(equalized=equalized)
        torch.manual_seed(8)
        outputs.append(energy(generator(torch.randn(2, 8))))
    torch.testing.assert_close(outputs[0], outputs[1])
    common = {"max_resolution": 32, "channel_base": 64, "channel_max": 4}
    # The energy head's dense layer has fan-in 4 * 16 = 64, so its He constant is sqrt(2 / 64) = 0.18.
    stored = [
        float(ProgressiveEnergy(**common, equalized=e).blocks["4"].dense.weight.detach().std()) for e in (True, False)
    ]
    assert 0.8 < stored[0] < 1.2  # equalised weights are stored with unit variance ...
    assert 0.13 < stored[1] < 0.23  # ... plain ones with the He constant


def test_channel_rule_and_explicit_channels():
    assert channels_per_resolution(4, 1024, 16384, 512) == CELEBAHQ_CHANNELS
    assert channels_per_resolution(4, 1024, 64, 4, 1)[1024] == 1
    explicit = {4: 6, 8: 5, 16: 3}
    energy = ProgressiveEnergy(max_resolution=16, channels=explicit)
    assert energy.channels == explicit
    assert energy.from_rgb["16"][0].weight.shape == (3, 3, 1, 1)
    with pytest.raises(ValueError, match="missing"):
        ProgressiveEnergy(max_resolution=32, channels=explicit)


def test_models_set_stage_moves_all_four_together_or_none():
    models = build_models("tiny")
    models.generator_ema = build_models("tiny").generator
    assert models.stage == (32, 1.0)
    models.set_stage(16, 0.25)
    assert models.stage == (16, 0.25)
    nets = [*models.networks().values(), models.generator_ema]
    assert all((net.resolution, net.alpha) == (16, 0.25) for net in nets)
    with pytest.raises(ValueError):
        models.set_stage(64, 1.0)
    assert models.stage == (16, 0.25)
    models.generator_ema.set_stage(8, 1.0)
    with pytest.raises(RuntimeError, match="different stages.*generator_ema"):
        _ = models.stage


def test_fixed_resolution_presets_accept_only_their_own_stage():
    models = build_models("cifar10-tiny")
    assert models.min_resolution == models.resolution == 32
    models.set_stage(32, 1.0)
    assert models.stage == (32, 1.0)
    for resolution, alpha in [(16, 1.0), (32, 0.5)]:
        with pytest.raises(ValueError, match="runs only at resolution 32"):
            models.set_stage(resolution, alpha)


@pytest.mark.parametrize(
    ("preset", "normalised"), [("celeba64", {"generator"}), ("lsun64", {"generator", "energy", "inference"})]
)
def test_the_papers_64x64_networks(preset, normalised):
    """Section 4.1: the cifar10 networks with one more block; LSUN's with twice the channels and batch norm in all."""
    from progressive.nets.layers import GlobalBatchNorm2d
    from progressive.train.schedule import ScheduleConfig

    torch.manual_seed(0)
    models = build_models(preset)
    assert models.resolution == models.min_resolution == 64
    z = torch.randn(2, models.latent_dim)
    images = models.generator(z)
    assert images.shape == (2, 3, 64, 64)
    assert models.energy(images).shape == (2,)
    mu, logvar = models.inference(images)
    assert mu.shape == logvar.shape == (2, models.latent_dim)
    with_batch_norm = {
        n for n, net in models.networks().items() if any(isinstance(m, GlobalBatchNorm2d) for m in net.modules())
    }
    assert with_batch_norm == normalised
    convolutions = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    channels = {n: max(m.out_channels for m in net.modules() if isinstance(m, convolutions))
                for n, net in models.networks().items()}  # fmt: skip
    assert channels == ({"generator": 512, "energy": 256, "inference": 512} if preset == "celeba64"
                        else {"generator": 1024, "energy": 512, "inference": 1024})  # fmt: skip
    schedule = ScheduleConfig.for_preset(preset)
    assert schedule.min_resolution == schedule.max_resolution == 64


def test_plain_weights_are_used_as_stored_and_equalised_ones_scaled():
    """Layers with plain weights (scale 1) compute F.conv2d/F.linear of the stored weight bit for bit, without a
    multiplication in the graph; equalised ones multiply by their He constant."""
    import torch.nn.functional as F

    from progressive.nets.layers import ScaledConv2d, ScaledLinear

    torch.manual_seed(0)
    x, v = torch.randn(2, 4, 6, 6), torch.randn(2, 4)
    plain_conv, plain_linear = ScaledConv2d(4, 5, 3, equalized=False), ScaledLinear(4, 3, equalized=False)
    assert torch.equal(plain_conv(x), F.conv2d(x, plain_conv.weight, plain_conv.bias, padding=1))
    assert torch.equal(plain_linear(v), F.linear(v, plain_linear.weight, plain_linear.bias))
    assert plain_conv(x).grad_fn.next_functions[1][0].variable is plain_conv.weight  # the parameter itself
    conv = ScaledConv2d(4, 5, 3, equalized=True)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1)) and conv.scale != 1

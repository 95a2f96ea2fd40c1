"""The unchanged training iteration of the objective on the progressive networks, stable and mid-fade."""

from __future__ import annotations

import pytest
import torch

from datasets_prep.synthetic import shapes_tensor
from progressive.objective import train_step
from progressive.presets import build_models
from progressive.train.optim import OptimizerConfig, apply_learning_rates, build_optimizers
from progressive.train.schedule import ScheduleConfig, blend_reals, stage_at


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


def test_speed_paths_compute_what_the_plain_ones_do():
    """Fused Adam and the hand-written pixel-norm gradient: the same iteration as the plain code, within rounding."""
    import copy

    from progressive.nets.layers import PixelNorm
    from progressive.objective import recipe_config
    from progressive.train.optim import TriangleOptimizers

    torch.manual_seed(0)
    fused = build_models("tiny")
    fused.set_stage(16, 0.5)
    plain = copy.deepcopy(fused)
    config, adam = recipe_config("triangle"), OptimizerConfig()

    def for_loop_adam(net, lr, decay):
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(adam.adam_beta1, adam.adam_beta2),
                                weight_decay=decay, foreach=False, fused=False)  # fmt: skip

    plain_optimizers = TriangleOptimizers(
        generator=for_loop_adam(plain.generator, adam.lr_generator, adam.weight_decay_generator),
        energy=for_loop_adam(plain.energy, adam.lr_energy, adam.weight_decay_energy),
        inference=for_loop_adam(plain.inference, adam.lr_inference, adam.weight_decay_inference),
    )
    fused_optimizers = build_optimizers(fused, adam)
    assert all(group["fused"] for _, o in fused_optimizers.items() for group in o.param_groups)
    for step in range(3):
        x = blend_reals(shapes_tensor(4, 16, seed=step), 0.5)
        z, eps = torch.randn(4, fused.latent_dim), (torch.randn(4, fused.latent_dim), torch.randn(4, fused.latent_dim))
        noise = torch.rand_like(x) * 2 - 1  # the energy step's noise negatives, the same for both
        train_step(fused, fused_optimizers, x, z, eps, config, noise)
        train_step(plain, plain_optimizers, x, z, eps, config, noise)
    for name, net in fused.networks().items():
        for (key, a), b in zip(net.named_parameters(), plain.networks()[name].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")

    x = torch.randn(3, 5, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(PixelNorm(), (x,))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 4, 4).to(dtype).requires_grad_()
        weights = torch.randn(3, 5, 4, 4)
        (PixelNorm()(x).float() * weights).sum().backward()
        ours, x.grad = x.grad, None
        x32 = x.float()
        expression = (x32 * torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True) + 1e-8)).to(dtype)
        (expression.float() * weights).sum().backward()
        torch.testing.assert_close(ours, x.grad, rtol=1e-5, atol=1e-6)


def test_channels_last_trains_as_the_default_memory_format():
    import copy

    from progressive.objective import recipe_config

    torch.manual_seed(0)
    plain = build_models("tiny")
    plain.set_stage(16, 0.5)
    nhwc = copy.deepcopy(plain)
    for net in nhwc.networks().values():
        net.to(memory_format=torch.channels_last)
    config = recipe_config("triangle")
    plain_optimizers, nhwc_optimizers = build_optimizers(plain), build_optimizers(nhwc)
    for step in range(3):
        x = blend_reals(shapes_tensor(4, 16, seed=step), 0.5)
        z, eps = torch.randn(4, plain.latent_dim), (torch.randn(4, plain.latent_dim), torch.randn(4, plain.latent_dim))
        noise = torch.rand_like(x) * 2 - 1  # the energy step's noise negatives, the same for both
        train_step(plain, plain_optimizers, x, z, eps, config, noise)
        train_step(nhwc, nhwc_optimizers, x.contiguous(memory_format=torch.channels_last), z, eps, config, noise)
    for name, net in nhwc.networks().items():
        convolutions = [p for p in net.parameters() if p.ndim == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)  # it stayed NHWC
        for a, b in zip(net.parameters(), plain.networks()[name].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

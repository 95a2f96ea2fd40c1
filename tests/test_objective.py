"""The divergence-triangle objective: each term against an independent computation."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from datasets_prep.synthetic import shapes_tensor
from progressive.objective import (
    TriangleConfig,
    bound_logvar,
    energy_from_output,
    kl_to_prior,
    langevin_refine,
    latent_nll,
    prior_mmd,
    recipe_config,
    reconstruction_loss,
    train_step,
    uniform_noise,
    uniform_noise_like,
)
from progressive.presets import build_models
from progressive.train.optim import OptimizerConfig, TriangleOptimizers, build_optimizers
from progressive.train.schedule import learning_rates


def test_energy_forms_match_their_formulas():
    s = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0])
    torch.testing.assert_close(energy_from_output(s, "identity"), s)
    torch.testing.assert_close(energy_from_output(s, "softplus"), torch.log1p(torch.exp(-s)))
    torch.testing.assert_close(
        energy_from_output(s, "tanh"), (torch.exp(-s) - torch.exp(s)) / (torch.exp(-s) + torch.exp(s))
    )
    torch.testing.assert_close(energy_from_output(s, "sigmoid"), 1 / (1 + torch.exp(s)))
    with pytest.raises(ValueError, match="energy_form"):
        energy_from_output(s, "relu")


def test_reconstruction_is_summed_over_pixels_and_averaged_over_batch():
    x = torch.tensor([[[[0.0, 1.0]]], [[[-1.0, 0.5]]]])  # (2, 1, 1, 2)
    r = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 0.0]]]])
    expected = ((1.0**2 + 0.0) + (1.0**2 + 0.5**2)) / 2
    assert reconstruction_loss(r, x).item() == pytest.approx(expected)


def test_kl_reductions_by_hand():
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.1, -0.3]])
    logvar = torch.tensor([[0.0, -1.0, 0.4], [1.0, 0.2, -2.0]])
    terms = [
        [-0.5 * (1 + s - m * m - math.exp(s)) for m, s in zip(mu_row, lv_row, strict=True)]
        for mu_row, lv_row in zip(mu.tolist(), logvar.tolist(), strict=True)
    ]
    mean_over_all = sum(sum(row) for row in terms) / 6
    sum_per_sample = sum(sum(row) for row in terms) / 2
    assert kl_to_prior(mu, logvar, "mean").item() == pytest.approx(mean_over_all, rel=1e-6)
    assert kl_to_prior(mu, logvar, "sum").item() == pytest.approx(sum_per_sample, rel=1e-6)


def test_kl_matches_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=generator)
    logvar = torch.randn(3, 4, generator=generator) * 0.5
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.manual_seed(1)
    samples = q.sample((200_000,))
    per_sample_kl = (q.log_prob(samples) - p.log_prob(samples)).sum(-1).mean(0)  # (3,)
    estimate = per_sample_kl.mean().item()
    assert kl_to_prior(mu, logvar, "sum").item() == pytest.approx(estimate, rel=0.02)
    assert kl_to_prior(mu, logvar, "mean").item() == pytest.approx(estimate / 4, rel=0.02)


def test_latent_nll_by_hand():
    z = torch.tensor([[0.3, -1.2], [2.0, 0.0]])
    mu = torch.tensor([[0.0, -1.0], [1.0, 0.5]])
    logvar = torch.tensor([[0.0, -0.5], [1.5, 0.1]])
    expected = 0.0
    for zr, mr, sr in zip(z.tolist(), mu.tolist(), logvar.tolist(), strict=True):
        expected += sum(
            0.5 * s + 0.5 * (zj - m) ** 2 / (math.exp(s) + 1e-6) for zj, m, s in zip(zr, mr, sr, strict=True)
        )
    expected /= 2
    assert latent_nll(z, mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    # Equals the Gaussian negative log-density up to the constant d/2 * log(2 pi).
    gaussian = -torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1).mean().item()
    assert latent_nll(z, mu, logvar).item() == pytest.approx(gaussian - math.log(2 * math.pi), rel=1e-4)


def _tiny_setup(seed: int = 0, batch: int = 4, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    models = build_models("cifar10-tiny")
    for net in models.networks().values():
        net.to(dtype)
    x = shapes_tensor(batch, 32, seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(batch, models.latent_dim, generator=g, dtype=dtype)
    eps = tuple(torch.randn(batch, models.latent_dim, generator=g, dtype=dtype) for _ in range(2))
    return models, x, z, eps


def test_reported_losses_equal_an_independent_recomputation():
    models, x, z, eps = _tiny_setup()
    config = TriangleConfig()
    before = copy.deepcopy(models)
    stats = train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)

    with torch.no_grad():
        g0 = before.generator
        x_fake = g0(z)
        loss_energy = before.energy(x).mean() - before.energy(x_fake).mean()
        mu, logvar = before.inference(x)
        z_hat = mu + torch.exp(logvar / 2) * eps[0]
        recon = ((g0(z_hat) - x) ** 2).sum() / x.shape[0]
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean()
        mu_f, logvar_f = before.inference(x_fake)
        nll = (0.5 * logvar_f.sum(1) + 0.5 * ((z - mu_f) ** 2 / (logvar_f.exp() + 1e-6)).sum(1)).mean()
        loss_inference = recon + kl + 0.1 * nll
        # The generator step uses the already-updated energy and inference models (final after the step).
        mu2, logvar2 = models.inference(x)
        recon_g = ((g0(mu2 + torch.exp(logvar2 / 2) * eps[1]) - x) ** 2).sum() / x.shape[0]
        mu_g, logvar_g = models.inference(x_fake)
        nll_g = (0.5 * logvar_g.sum(1) + 0.5 * ((z - mu_g) ** 2 / (logvar_g.exp() + 1e-6)).sum(1)).mean()
        loss_generator = recon_g + models.energy(x_fake).mean() + 0.1 * nll_g

    assert stats["loss_energy"] == pytest.approx(loss_energy.item(), rel=1e-4, abs=1e-6)
    assert stats["recon"] == pytest.approx(recon.item(), rel=1e-5)
    assert stats["kl"] == pytest.approx(kl.item(), rel=1e-4, abs=1e-7)
    assert stats["latent_nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert stats["loss_inference"] == pytest.approx(loss_inference.item(), rel=1e-5)
    assert stats["loss_generator"] == pytest.approx(loss_generator.item(), rel=1e-5)


class _SGDOptimizers:
    """Plain SGD (lr 1, no momentum, no decay) so an update equals minus the gradient it used."""

    @staticmethod
    def build(models) -> TriangleOptimizers:
        def sgd(net):
            return torch.optim.SGD(net.parameters(), lr=1.0)

        return TriangleOptimizers(
            generator=sgd(models.generator), energy=sgd(models.energy), inference=sgd(models.inference), grad_clip=0.0
        )


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _expected_generator_update(before, after, x, z, eps, config) -> torch.Tensor:
    """Minus the gradient of L_G alone with respect to G, computed from copies of the networks."""
    g = copy.deepcopy(before.generator)
    x_fake = g(z)
    with torch.no_grad():
        mu2, logvar2 = after.inference(x)
        z_hat2 = mu2 + torch.exp(logvar2 / 2) * eps[1]
    mu_g, logvar_g = after.inference(x_fake)
    loss = (
        config.weight_recon * ((g(z_hat2) - x) ** 2).sum() / x.shape[0]
        + config.weight_energy * after.energy(x_fake).mean()
        + config.weight_latent
        * (0.5 * logvar_g.sum(1) + 0.5 * ((z - mu_g) ** 2 / (logvar_g.exp() + 1e-6)).sum(1)).mean()
    )
    grads = torch.autograd.grad(loss, list(g.parameters()))
    return -torch.cat([gr.flatten() for gr in grads])


def _assert_update(after: torch.nn.Module, before: torch.nn.Module, expected: torch.Tensor) -> None:
    """Parameter change equals `expected` (float64, so round-off is far below any leaked gradient)."""
    torch.testing.assert_close(_flat(after) - _flat(before), expected, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("weight_recon", [1.0, 0.0])
def test_each_update_uses_only_its_own_loss(weight_recon):
    models, x, z, eps = _tiny_setup(seed=3, dtype=torch.float64)
    config = TriangleConfig(weight_recon=weight_recon)
    before = copy.deepcopy(models)
    train_step(models, _SGDOptimizers.build(models), x, z=z, eps=eps, config=config)

    # Energy: minus the gradient of mean E(x) - mean E(G(z)) with G's output held fixed.
    e = copy.deepcopy(before.energy)
    with torch.no_grad():
        x_fake = before.generator(z)
    loss_e = e(x).mean() - e(x_fake).mean()
    expected_e = -torch.cat([g.flatten() for g in torch.autograd.grad(loss_e, list(e.parameters()))])
    _assert_update(models.energy, before.energy, expected_e)

    # Generator: exactly L_G's gradient; nothing left over from the inference step's reconstruction.
    expected_g = _expected_generator_update(before, models, x, z, eps, config)
    _assert_update(models.generator, before.generator, expected_g)
    # Without reconstruction, the energy and latent terms still reach G through G(z).
    assert expected_g.abs().sum() > 0


def test_energy_step_leaves_generator_and_inference_untouched():
    models, x, z, eps = _tiny_setup(seed=4)
    before = copy.deepcopy(models)
    optimizers = build_optimizers(models)
    snapshots = {}

    original_step = optimizers.energy.step

    def step_and_snapshot(*args, **kwargs):
        result = original_step(*args, **kwargs)
        snapshots["after_energy_step"] = {name: _flat(net) for name, net in models.networks().items()}
        return result

    optimizers.energy.step = step_and_snapshot
    train_step(models, optimizers, x, z=z, eps=eps)
    after_energy = snapshots["after_energy_step"]
    torch.testing.assert_close(after_energy["generator"], _flat(before.generator), rtol=0, atol=0)
    torch.testing.assert_close(after_energy["inference"], _flat(before.inference), rtol=0, atol=0)
    assert not torch.equal(after_energy["energy"], _flat(before.energy))
    for name, net in models.networks().items():
        assert not torch.equal(_flat(net), _flat(getattr(before, name))), f"{name} did not change"


def test_variational_and_adversarial_parts_alone():
    models, x, z, eps = _tiny_setup(seed=5)
    before = copy.deepcopy(models)
    vae = TriangleConfig(weight_energy=0.0, weight_latent=0.0)
    stats = train_step(models, build_optimizers(models), x, z=z, eps=eps, config=vae)
    assert torch.equal(_flat(models.energy), _flat(before.energy))
    assert stats["loss_energy"] == 0.0 and stats["loss_inference"] > 0

    models, x, z, eps = _tiny_setup(seed=5)
    before = copy.deepcopy(models)
    adversarial = TriangleConfig(weight_recon=0.0, weight_kl=0.0, weight_latent=0.0)
    train_step(models, build_optimizers(models), x, z=z, eps=eps, config=adversarial)
    assert torch.equal(_flat(models.inference), _flat(before.inference))
    assert not torch.equal(_flat(models.energy), _flat(before.energy))
    assert not torch.equal(_flat(models.generator), _flat(before.generator))


def test_explicit_noise_makes_the_step_deterministic():
    results = []
    for _ in range(2):
        models, x, z, eps = _tiny_setup(seed=7)
        stats = train_step(models, build_optimizers(models), x, z=z, eps=eps)
        results.append((stats, [_flat(net) for net in models.networks().values()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


def test_learning_rates_decay_every_50k_images():
    config = OptimizerConfig()
    assert learning_rates(config, 0) == {"energy": 1e-4, "inference": 3e-4, "generator": 3e-4}
    assert learning_rates(config, 49_999)["generator"] == pytest.approx(3e-4)
    assert learning_rates(config, 50_000)["generator"] == pytest.approx(3e-4 * 0.998)
    assert learning_rates(config, 250_001)["energy"] == pytest.approx(1e-4 * 0.998**5)


def test_optimisers_follow_the_reference_settings():
    models = build_models("cifar10-tiny")
    optimizers = build_optimizers(models)
    assert optimizers.generator.param_groups[0]["weight_decay"] == 5e-4
    assert optimizers.energy.param_groups[0]["weight_decay"] == 0
    assert optimizers.inference.param_groups[0]["betas"] == (0.5, 0.999)
    assert optimizers.energy.param_groups[0]["lr"] == 1e-4


def test_bad_input_is_rejected_with_what_was_expected():
    models, x, z, eps = _tiny_setup()
    optimizers = build_optimizers(models)
    with pytest.raises(ValueError, match=r"\(B, 3, R, R\)"):
        train_step(models, optimizers, x[:, :1])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train_step(models, optimizers, x * 3)
    with pytest.raises(ValueError, match="match"):
        train_step(models, optimizers, torch.zeros(4, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown preset 'nope'; expected one of"):
        build_models("nope")
    with pytest.raises(ValueError, match="kl_reduction"):
        TriangleConfig(kl_reduction="max")


@pytest.mark.slow
def test_short_training_run_reduces_reconstruction_error():
    torch.manual_seed(0)
    models = build_models("cifar10-tiny")
    optimizers = build_optimizers(models)
    data = shapes_tensor(16, 32, seed=11)
    recon = []
    for _ in range(60):
        recon.append(train_step(models, optimizers, data)["recon"])
    first, last = sum(recon[:5]) / 5, sum(recon[-5:]) / 5
    assert last < 0.75 * first, (first, last)


def test_bound_logvar_is_c_tanh_s_over_c_and_off_at_zero():
    s = torch.tensor([-50.0, -2.0, 0.0, 0.3, 50.0])
    torch.testing.assert_close(bound_logvar(s, 0.0), s)
    torch.testing.assert_close(bound_logvar(s, 5.0), 5.0 * torch.tanh(s / 5.0))
    assert bound_logvar(s, 5.0)[0] == pytest.approx(-5.0) and bound_logvar(s, 5.0)[-1] == pytest.approx(5.0)
    assert bound_logvar(s, 5.0)[3] == pytest.approx(0.3, rel=2e-3)  # near 0 the bound changes nothing


def test_energy_penalty_and_logvar_bound_against_an_independent_recomputation():
    models, x, z, eps = _tiny_setup(seed=2)
    penalty, bound = 0.3, 0.05  # a bound this tight is active for every output of the untrained network
    config = TriangleConfig(energy_penalty=penalty, logvar_bound=bound)
    before = copy.deepcopy(models)
    stats = train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)

    def posterior(images):
        mu, logvar = before.inference(images)
        return mu, bound * torch.tanh(logvar / bound)

    with torch.no_grad():
        x_fake = before.generator(z)
        e_real, e_fake = before.energy(x), before.energy(x_fake)
        loss_energy = e_real.mean() - e_fake.mean() + penalty * torch.cat([e_real, e_fake]).pow(2).mean()
        mu, logvar = posterior(x)
        recon = ((before.generator(mu + torch.exp(logvar / 2) * eps[0]) - x) ** 2).sum() / x.shape[0]
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean()
        mu_f, logvar_f = posterior(x_fake)
        nll = (0.5 * logvar_f.sum(1) + 0.5 * ((z - mu_f) ** 2 / (logvar_f.exp() + 1e-6)).sum(1)).mean()
        spread = (x_fake.std(dim=0).mean(), x.std(dim=0).mean())

    assert stats["loss_energy"] == pytest.approx(loss_energy.item(), rel=1e-4, abs=1e-6)
    assert stats["energy_abs_max"] == pytest.approx(torch.cat([e_real, e_fake]).abs().max().item(), rel=1e-5)
    assert stats["recon"] == pytest.approx(recon.item(), rel=1e-5)
    assert stats["kl"] == pytest.approx(kl.item(), rel=1e-4, abs=1e-7)
    assert stats["latent_nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert stats["loss_inference"] == pytest.approx((recon + kl + 0.1 * nll).item(), rel=1e-5)
    assert -bound <= stats["logvar_min"] <= stats["logvar_max"] <= bound
    assert stats["sample_spread"] == pytest.approx(spread[0].item(), rel=1e-5)
    assert stats["data_spread"] == pytest.approx(spread[1].item(), rel=1e-5)


def test_recipes_name_the_reference_and_the_parts_of_the_triangle():
    assert recipe_config("reference") == TriangleConfig()
    default = recipe_config("triangle")
    assert default.energy_penalty > 0 and default.logvar_bound > 0
    vae, adversarial = recipe_config("vae"), recipe_config("adversarial")
    assert not vae.trains_energy and vae.trains_inference and vae.weight_latent == 0
    assert adversarial.trains_energy and not adversarial.trains_inference
    # The parts differ from the triangle only in which terms are switched off.
    assert vae.replace(weight_energy=default.weight_energy, weight_latent=default.weight_latent) == default
    assert recipe_config("triangle", energy_penalty=0.5).energy_penalty == 0.5
    with pytest.raises(ValueError, match="unknown recipe 'nope'; expected one of: triangle, vae"):
        recipe_config("nope")
    for name in ("energy_penalty", "logvar_bound", "weight_recon"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
            TriangleConfig(**{name: -1.0})


def _forward_counts(models) -> dict[str, int]:
    """Forward calls of each network, counted by hooks (what a zero-weight term must not cost)."""
    counts = dict.fromkeys(models.networks(), 0)
    for name, net in models.networks().items():
        net.register_forward_hook(lambda module, args, output, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


def test_wake_sleep_trains_inference_on_dreams_and_the_generator_by_reconstruction():
    models, x, z, eps = _tiny_setup(seed=8)
    before = copy.deepcopy(models)
    counts = _forward_counts(models)
    config = recipe_config("wake-sleep")
    stats = train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)
    assert stats["recon"] == 0 and stats["kl"] == 0 and stats["latent_nll"] > 0  # sleep: dreams only
    assert stats["recon_generator"] > 0 and stats["latent_nll_generator"] == 0  # wake: reconstruction only
    assert torch.equal(_flat(models.energy), _flat(before.energy)) and counts["energy"] == 0
    # G(z) once, G(z_hat2) once; I on the dreams (sleep), then on the real images (wake).
    assert counts == {"generator": 2, "energy": 0, "inference": 2}
    # The sleep step is the latent NLL of the dreams alone, against an independent computation.
    fresh = copy.deepcopy(before)
    with torch.no_grad():
        mu, logvar = fresh.inference(fresh.generator(z))
        logvar = bound_logvar(logvar, config.logvar_bound)
    assert stats["latent_nll"] == pytest.approx(latent_nll(z, mu, logvar, config.nll_eps).item(), rel=1e-5)


def test_terms_with_zero_weight_cost_no_forward():
    counts = {}
    for recipe in ("triangle", "vae", "acd", "adversarial"):
        models, x, z, eps = _tiny_setup(seed=9)
        counted = _forward_counts(models)
        config = recipe_config(recipe)
        train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)
        counts[recipe] = counted
    assert counts["triangle"] == {"generator": 3, "energy": 2, "inference": 2}
    assert counts["vae"] == {"generator": 3, "energy": 0, "inference": 2}
    assert counts["acd"] == {"generator": 1, "energy": 2, "inference": 2}  # no reconstruction anywhere
    assert counts["adversarial"] == {"generator": 1, "energy": 2, "inference": 0}


def test_a_generator_without_any_loss_is_refused():
    with pytest.raises(ValueError, match="the generator has no loss"):
        recipe_config("vae", weight_recon=0.0)
    with pytest.raises(ValueError, match="weight_latent_generator must be a finite number >= 0"):
        recipe_config("triangle", weight_latent_generator=-1.0)
    assert recipe_config("vae", weight_recon=0.0, weight_recon_generator=1.0).generator_recon_weight == 1.0


def test_old_checkpoint_configurations_resume_with_the_values_added_since():
    from progressive.train.config import config_differences, preset_config

    current = preset_config("tiny", "reference").to_dict()
    saved = copy.deepcopy(current)
    del saved["recipe"], saved["channels_last"]
    for key in (
        "energy_penalty",
        "logvar_bound",
        "weight_recon_generator",
        "weight_latent_generator",
        "generator_steps",
        "real_energy_variance",
        "reconstruction_negatives",
        "weight_prior_mmd",
    ):
        del saved["objective"][key]
    for key in ("lr_rampdown_start_kimg", "lr_rampdown_kimg", "lr_rampdown_floor"):
        del saved["optimizer"][key]
    assert config_differences(saved, current) == []
    ramped = preset_config("tiny", "reference")
    ramped = dataclasses.replace(ramped, optimizer=dataclasses.replace(ramped.optimizer, lr_rampdown_kimg=10.0))
    ramped = ramped.to_dict()
    assert config_differences(saved, ramped) == ["optimizer.lr_rampdown_kimg: 0.0 -> 10.0"]
    assert config_differences(saved, preset_config("tiny", "triangle").to_dict())  # but not another objective


def test_several_generator_steps_per_iteration():
    """Algorithm 1's multiple-step generator update: E and I as with one step, G updated K times, deterministic."""
    config = recipe_config("triangle")
    results = {}
    for steps in (1, 3, 3):
        models, x, z, eps = _tiny_setup(seed=10)
        optimizers = build_optimizers(models)
        stats = train_step(models, optimizers, x, z=z, eps=eps, config=config.replace(generator_steps=steps))
        adam_steps = {name: {int(v["step"]) for v in o.state.values()} for name, o in optimizers.items()}
        results.setdefault(steps, []).append((stats, {n: _flat(net) for n, net in models.networks().items()}))
        assert adam_steps == {"energy": {1}, "inference": {1}, "generator": {steps}}
    (one_stats, one), (three_stats, three), (_, again) = results[1][0], *results[3]
    assert three_stats == one_stats  # the statistics are the first generator step's
    torch.testing.assert_close(three["energy"], one["energy"], rtol=0, atol=0)
    torch.testing.assert_close(three["inference"], one["inference"], rtol=0, atol=0)
    assert not torch.equal(three["generator"], one["generator"])
    torch.testing.assert_close(three["generator"], again["generator"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="generator_steps must be an integer >= 1"):
        config.replace(generator_steps=0)


def test_noise_negatives_contrast_real_images_with_uniform_noise():
    models, x, z, eps = _tiny_setup(seed=3)
    weight, penalty = 0.5, 0.2
    config = TriangleConfig(noise_negatives=weight, energy_penalty=penalty)
    before = copy.deepcopy(models)
    torch.manual_seed(11)  # with z and eps given, the noise images are the step's first random draw
    stats = train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)
    torch.manual_seed(11)
    noise = torch.rand(x.shape) * 2 - 1
    with torch.no_grad():
        e_real, e_fake, e_noise = before.energy(x), before.energy(before.generator(z)), before.energy(noise)
    expected = e_real.mean() - e_fake.mean() + weight * (e_real.mean() - e_noise.mean())
    expected = expected + penalty * torch.cat([e_real, e_fake, e_noise]).pow(2).mean()
    assert stats["loss_energy"] == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert stats["energy_fake"] == pytest.approx(e_fake.mean().item(), rel=1e-5)


def test_real_energy_variance_adds_the_spread_of_the_real_images_energies():
    models, x, z, eps = _tiny_setup(seed=4)
    weight, penalty = 0.7, 0.2
    config = TriangleConfig(real_energy_variance=weight, energy_penalty=penalty)
    before = copy.deepcopy(models)
    stats = train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)
    with torch.no_grad():
        e_real, e_fake = before.energy(x), before.energy(before.generator(z))
    centred = e_real - e_real.mean()
    expected = e_real.mean() - e_fake.mean() + penalty * torch.cat([e_real, e_fake]).pow(2).mean()
    expected = expected + weight * centred.pow(2).mean()  # the population variance, by hand
    assert centred.pow(2).mean() > 0
    assert stats["loss_energy"] == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    # The term reaches the energy model's update (and through it the generator's), not the inference model's.
    plain = copy.deepcopy(before)
    train_step(plain, build_optimizers(plain), x, z=z, eps=eps, config=TriangleConfig(energy_penalty=penalty))
    assert not torch.equal(_flat(models.energy), _flat(plain.energy))
    torch.testing.assert_close(_flat(models.inference), _flat(plain.inference), rtol=0, atol=0)
    with pytest.raises(ValueError, match="real_energy_variance must be a finite number >= 0"):
        TriangleConfig(real_energy_variance=-0.1)


def test_prior_mmd_by_hand_and_against_samples_of_near_and_far_distributions():
    codes, prior = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [-1.0, 0.0]])

    def kernel(a, b):  # the sum of inverse multiquadratics C / (C + |a - b|^2), C = 2 d c, d = 2
        return sum(4 * c / (4 * c + float((a - b).pow(2).sum())) for c in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))

    within_codes = sum(kernel(codes[i], codes[j]) for i in range(3) for j in range(3) if i != j) / 6
    within_prior = 2 * kernel(prior[0], prior[1]) / 2
    across = sum(kernel(a, b) for a in codes for b in prior) / 6
    assert prior_mmd(codes, prior).item() == pytest.approx(within_codes + within_prior - 2 * across, rel=1e-6)

    generator = torch.Generator().manual_seed(0)
    draws = lambda shift: torch.randn(64, 8, generator=generator) + shift  # noqa: E731
    same = [prior_mmd(draws(0.0), draws(0.0)).item() for _ in range(20)]
    assert abs(sum(same) / 20) < 0.01  # unbiased: zero on average for one distribution
    assert prior_mmd(draws(0.5), draws(0.0)) > max(same) and prior_mmd(draws(2.0), draws(0.0)) > prior_mmd(
        draws(0.5), draws(0.0)
    )
    with pytest.raises(ValueError, match="at least two codes and two prior draws"):
        prior_mmd(codes[:1], prior)


def test_prior_mmd_adds_to_the_inference_step_only_with_the_steps_codes_and_latents():
    """w_mmd * MMD^2(z_hat, z): z_hat = mu + sigma * eps1 of the real images before the update, z the latents of
    G(z); the energy and generator steps are those of the same configuration without it."""
    models, x, z, eps = _tiny_setup(seed=5)
    weight = 3.0
    before = copy.deepcopy(models)
    stats = train_step(
        models, build_optimizers(models), x, z=z, eps=eps, config=TriangleConfig(weight_prior_mmd=weight)
    )
    plain = copy.deepcopy(before)
    plain_stats = train_step(plain, build_optimizers(plain), x, z=z, eps=eps, config=TriangleConfig())
    with torch.no_grad():
        mu, logvar = before.inference(x)
    expected = prior_mmd(mu + torch.exp(0.5 * logvar) * eps[0], z).item()
    assert plain_stats["prior_mmd"] == 0 and stats["prior_mmd"] == pytest.approx(expected, rel=1e-4)
    assert stats["loss_inference"] == pytest.approx(plain_stats["loss_inference"] + weight * expected, rel=1e-4)
    assert not torch.equal(_flat(models.inference), _flat(plain.inference))
    torch.testing.assert_close(_flat(models.energy), _flat(plain.energy), rtol=0, atol=0)
    with pytest.raises(ValueError, match="weight_prior_mmd must be a finite number >= 0"):
        TriangleConfig(weight_prior_mmd=-1.0)
    assert TriangleConfig(weight_recon=0, weight_kl=0, weight_latent=0, weight_prior_mmd=1.0).trains_inference


def test_reconstruction_negatives_contrast_real_images_with_their_own_reconstructions():
    """w_r (mean E(x) - mean E(G(z_hat))), z_hat from the step's eps1 and the networks before the update, beside
    the noise negatives (noise first, then reconstructions); the inference step is unchanged by it."""
    models, x, z, eps = _tiny_setup(seed=5)
    weight, noise_weight, penalty, bound = 2.0, 0.5, 0.2, 5.0
    config = TriangleConfig(
        reconstruction_negatives=weight, noise_negatives=noise_weight, energy_penalty=penalty, logvar_bound=bound
    )
    before = copy.deepcopy(models)
    torch.manual_seed(12)  # with z and eps given, the noise images are the step's first random draw
    stats = train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)
    torch.manual_seed(12)
    noise = torch.rand(x.shape) * 2 - 1
    with torch.no_grad():
        mu, logvar = before.inference(x)
        logvar = bound * torch.tanh(logvar / bound)
        reconstructions = before.generator(mu + torch.exp(0.5 * logvar) * eps[0])
        e_real, e_fake = before.energy(x), before.energy(before.generator(z))
        e_noise, e_rec = before.energy(noise), before.energy(reconstructions)
    expected = e_real.mean() - e_fake.mean() + noise_weight * (e_real.mean() - e_noise.mean())
    expected = expected + weight * (e_real.mean() - e_rec.mean())
    expected = expected + penalty * torch.cat([e_real, e_fake, e_noise, e_rec]).pow(2).mean()
    rel, abs_ = 1e-4, 1e-6
    swapped = (weight - noise_weight) * (e_noise.mean() - e_rec.mean())  # the weights given to the wrong sets
    assert abs(swapped.item()) > 10 * max(rel * abs(expected.item()), abs_)  # outside the tolerance: order checked
    assert stats["loss_energy"] == pytest.approx(expected.item(), rel=rel, abs=abs_)
    plain = copy.deepcopy(before)
    torch.manual_seed(12)
    plain_stats = train_step(
        plain, build_optimizers(plain), x, z=z, eps=eps, config=config.replace(reconstruction_negatives=0)
    )
    assert stats["loss_inference"] == pytest.approx(plain_stats["loss_inference"], rel=1e-6)
    torch.testing.assert_close(_flat(models.inference), _flat(plain.inference), rtol=0, atol=0)
    assert not torch.equal(_flat(models.energy), _flat(plain.energy))
    with pytest.raises(ValueError, match="reconstruction_negatives must be a finite number >= 0"):
        TriangleConfig(reconstruction_negatives=-1)


def test_reconstruction_negatives_reuse_the_inference_steps_reconstructions():
    """The energy step's reconstructions are the inference step's G(z_hat): the option adds no forward of G or I."""

    def forwards(config: TriangleConfig) -> dict[str, int]:
        models, x, z, eps = _tiny_setup(seed=6)
        counts = {"generator": 0, "inference": 0}

        def counter(name: str):
            return lambda *_: counts.__setitem__(name, counts[name] + 1)

        for name in counts:
            getattr(models, name).register_forward_hook(counter(name))
        train_step(models, build_optimizers(models), x, z=z, eps=eps, config=config)
        return counts

    plain = forwards(TriangleConfig())
    assert plain == {"generator": 3, "inference": 2}  # G(z); G(z_hat) of each step; I of each step
    assert forwards(TriangleConfig(reconstruction_negatives=1.0)) == plain
    # Without a reconstruction term there is nothing to share: the negatives take their own forward of I and G.
    assert forwards(TriangleConfig(weight_recon=0.0, reconstruction_negatives=1.0)) == {"generator": 2, "inference": 3}


def test_noise_octaves_mix_white_noise_with_smooth_noise_of_coarser_grids():
    white = uniform_noise(64, 1, 32, "cpu", generator=torch.Generator().manual_seed(5))
    assert torch.equal(uniform_noise(64, 1, 32, "cpu", generator=torch.Generator().manual_seed(5), octaves=0), white)
    mixed = uniform_noise(64, 1, 32, "cpu", generator=torch.Generator().manual_seed(5), octaves=3)
    assert mixed.shape == (64, 3, 32, 32) and mixed.abs().max() <= 1 and torch.equal(mixed[:, 0], mixed[:, 2])
    kept = [torch.equal(m, w) for m, w in zip(mixed, white, strict=True)]  # the white draw comes first
    roughness = (mixed[:, 0, :, 1:] - mixed[:, 0, :, :-1]).abs().mean(dim=(1, 2))
    smooth = [i for i, k in enumerate(kept) if not k]
    assert 8 <= len(smooth) <= 60  # j = 1, 2, 3 each with probability 1/4
    assert roughness[smooth].max() < 0.5 * roughness[[i for i, k in enumerate(kept) if k]].min()
    # From a 16x16 grid down to a 4x4 one: the smoothest images are 4x4 grids, never constant images.
    assert roughness[smooth].min() > 0.02 and mixed[smooth].flatten(1).std(dim=1).min() > 0.1
    with pytest.raises(ValueError, match="noise_octaves must be an integer >= 0"):
        TriangleConfig(noise_octaves=-1)


def test_grey_noise_and_langevin_steps_keep_a_grayscale_run_grey():
    images = torch.rand(3, 3, 8, 8).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1) * 2 - 1
    noise = uniform_noise_like(images, channels=1)
    assert noise.shape == images.shape and torch.equal(noise[:, 0], noise[:, 2])
    assert not torch.equal(uniform_noise_like(images, channels=3)[:, 0], noise[:, 0])
    energy = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 1))
    config = TriangleConfig(langevin_steps=3, langevin_step_size=0.5, langevin_noise=0.1)
    refined = langevin_refine(lambda t: energy(t).squeeze(1), images, config, channels=1)
    assert torch.equal(refined[:, 0], refined[:, 1]) and torch.equal(refined[:, 1], refined[:, 2])
    assert refined.abs().max() <= 1 and not torch.equal(refined, images)


def test_langevin_steps_without_noise_are_gradient_descent_on_the_energy():
    torch.manual_seed(0)
    energy = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 1)
    )
    net = lambda t: energy(t).squeeze(1)  # noqa: E731
    images = torch.rand(5, 3, 8, 8) * 0.5 - 0.25  # well inside [-1, 1]: no clamping on the way
    step = 0.05
    config = TriangleConfig(langevin_steps=4, langevin_step_size=step, langevin_noise=0.0)
    refined = langevin_refine(net, images, config)
    expected = images.clone()
    for _ in range(4):
        expected.requires_grad_(True)
        (gradient,) = torch.autograd.grad(net(expected).sum(), expected)
        expected = (expected - step * gradient).detach()
    torch.testing.assert_close(refined, expected)
    with torch.no_grad():
        assert (net(refined) < net(images)).all()  # every image's energy went down
    assert not refined.requires_grad and images.grad is None


def test_langevin_noise_has_its_stated_size_in_a_grayscale_run_too():
    flat = lambda t: t.sum(dim=(1, 2, 3)) * 0.0  # noqa: E731  (no gradient: the step is the noise alone)
    config = TriangleConfig(langevin_steps=1, langevin_noise=0.1)
    torch.manual_seed(0)
    for channels in (1, 3):
        moved = langevin_refine(flat, torch.zeros(64, 3, 32, 32), config, channels=channels)
        assert moved.std().item() == pytest.approx(0.1, rel=0.03)

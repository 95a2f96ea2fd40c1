"""Energy-guided sampling: Langevin steps on E(g(z)) + |z|^2/2 before g draws; checked on a quadratic energy whose
minimum is known, for determinism across batches and shards, and through evaluate_run on a tiny trained run."""

import pytest
import torch
from torch import nn

from progressive.errors import BadInput
from progressive.eval.sampling import EnergyGuidance, Shard, generate_from_seeds, generate_images, seeded_latents
from progressive.evaluation import evaluate_run
from progressive.pretrained import open_trained

LATENT = 12  # g reshapes z into a (3, 2, 2) image


class Reshape(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.view(-1, 3, 2, 2)


class Quadratic(nn.Module):
    """E(x) = a |x - c|^2 / 2 for every image: with g(z) = z, E(g(z)) + |z|^2/2 is lowest at z = a c / (a + 1)."""

    def __init__(self, a: float, c: torch.Tensor):
        super().__init__()
        self.a, self.c = a, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.a * (x - self.c).pow(2).flatten(1).sum(1, keepdim=True)


def quadratic_guidance(steps: int, temperature: float) -> EnergyGuidance:
    c = torch.linspace(-1, 1, LATENT).view(1, 3, 2, 2)
    return EnergyGuidance(Quadratic(3.0, c), "identity", steps=steps, step_size=0.05, temperature=temperature)


def test_descent_reaches_the_minimum_of_the_tilted_energy():
    guidance = quadratic_guidance(steps=400, temperature=0.0)
    z = seeded_latents(range(5), LATENT)
    moved = guidance.latents(Reshape(), z, range(5))
    expected = (3.0 * guidance.energy.c.flatten() / 4.0).expand(5, -1)
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)
    # One step is z - step * grad U(z), grad U = a (z - c) + z.
    one = quadratic_guidance(steps=1, temperature=0.0)
    step = z - 0.05 * (3.0 * (z - one.energy.c.flatten()) + z)
    torch.testing.assert_close(one.latents(Reshape(), z, range(5)), step)


def test_langevin_samples_spread_as_the_tilted_gaussian():
    # U(z) = a|z - c|^2/2 + |z|^2/2 is the energy of N(a c / (a + 1), I / (a + 1)): at temperature 1 many small
    # steps sample it, so the latents' variance approaches 1 / (a + 1) = 0.25 (the prior's is 1).
    guidance = quadratic_guidance(steps=300, temperature=1.0)
    moved = guidance.latents(Reshape(), seeded_latents(range(2000), LATENT), range(2000))
    assert abs(moved.var(0).mean().item() - 0.25) < 0.03
    assert abs(moved.mean(0) - 0.75 * guidance.energy.c.flatten()).max() < 0.05


def test_guided_images_are_the_same_in_any_batching_and_shard():
    guidance = quadratic_guidance(steps=5, temperature=1.0)
    one = torch.cat(list(generate_images(Reshape(), 10, LATENT, 4, 7, "cpu", guidance=guidance)))
    assert one.shape == (10, 3, 2, 2)
    # Each latent's noise comes from its own seed: the same images batch by batch, or in another batching.
    alone = [
        batch
        for first in (7, 11, 15)
        for batch in generate_from_seeds(
            Reshape(), range(first, min(first + 4, 17)), LATENT, 4, "cpu", guidance=guidance
        )
    ]
    assert torch.equal(one, torch.cat(alone))
    assert torch.equal(torch.cat(list(generate_images(Reshape(), 10, LATENT, 3, 7, "cpu", guidance=guidance))), one)
    second = Shard(rank=1, world=2, gather=lambda x: x)
    assert torch.equal(torch.cat(list(generate_images(Reshape(), 10, LATENT, 4, 7, "cpu", second, guidance))), one[4:8])
    # No steps asked for: the plain samples, untouched.
    plain = torch.cat(list(generate_images(Reshape(), 10, LATENT, 4, 7, "cpu")))
    assert torch.equal(plain, seeded_latents(range(7, 17), LATENT).view(-1, 3, 2, 2))
    assert not torch.equal(plain, one)


def test_evaluate_run_with_guided_samples(tiny_run):
    run = open_trained(tiny_run / "checkpoints" / "checkpoint-000000240.pt")
    plain = evaluate_run(run, metrics="energy,diversity", images=8, progress=None)
    guided = evaluate_run(
        run,
        metrics="energy,diversity",
        images=8,
        sample_langevin_steps=10,
        sample_langevin_temperature=0.0,
        progress=None,
    )
    assert plain["settings"]["sample_langevin"] is None
    assert guided["settings"]["sample_langevin"] == {"steps": 10, "step_size": 0.01, "temperature": 0.0}
    # Descending the tilted energy lowers the samples' energy: the real images are ranked above fewer of them.
    assert guided["metrics"]["energy/auroc_generated"] < plain["metrics"]["energy/auroc_generated"]
    assert guided["metrics"]["energy/auroc_noise"] == plain["metrics"]["energy/auroc_noise"]  # no sample in it
    for bad, match in (
        ({"sample_langevin_steps": -1}, "--sample-langevin-steps"),
        ({"sample_langevin_step_size": 0.0}, "--sample-langevin-step-size"),
        ({"sample_langevin_temperature": -0.5}, "--sample-langevin-temperature"),
    ):
        with pytest.raises(BadInput, match=match):
            evaluate_run(run, metrics="energy", progress=None, **bad)


def test_temperature_scales_the_latents_before_g():
    scaled = torch.cat(list(generate_images(Reshape(), 6, LATENT, 4, 3, "cpu", temperature=0.5)))
    torch.testing.assert_close(scaled, 0.5 * seeded_latents(range(3, 9), LATENT).view(-1, 3, 2, 2))


def test_evaluate_run_draws_from_the_chosen_generator_at_the_chosen_temperature(tiny_run):
    checkpoint = tiny_run / "checkpoints" / "checkpoint-000000240.pt"
    run = open_trained(checkpoint)
    metrics = "energy,diversity,swd"
    averaged = evaluate_run(run, metrics=metrics, images=8, progress=None)
    trained = evaluate_run(run, metrics=metrics, images=8, generator="trained", progress=None)
    assert (averaged["settings"]["generator"], trained["settings"]["generator"]) == ("ema", "trained")
    assert trained["metrics"] != averaged["metrics"]
    # "trained" is the last generator itself: the same report as a run whose average is replaced by it.
    swapped = open_trained(checkpoint)
    swapped.models.generator_ema = swapped.models.generator
    assert evaluate_run(swapped, metrics=metrics, images=8, progress=None)["metrics"] == trained["metrics"]
    # Latents scaled towards 0 draw images nearer each other (g is continuous): less spread than at temperature 1.
    narrow = evaluate_run(run, metrics=metrics, images=8, temperature=0.1, progress=None)
    assert narrow["settings"]["temperature"] == 0.1
    assert narrow["metrics"]["diversity/generated"] < averaged["metrics"]["diversity/generated"]
    for bad, match in (({"generator": "last"}, "--generator"), ({"temperature": 0.0}, "--temperature")):
        with pytest.raises(BadInput, match=match):
            evaluate_run(run, metrics="energy", progress=None, **bad)

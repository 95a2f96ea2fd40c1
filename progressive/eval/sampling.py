"""Running the three networks in batches under no_grad: seeded samples, reconstructions g(mu(x)) and energies,
and the share of those batches one process computes when several evaluate together (`Shard`).

What the metrics, the exports (`triangle-export`, `PretrainedTriangle`) and the energy landscape draw images and
energies with. Images are float tensors (B, 3, R, R) in [-1, 1]. Samples are g(z) with z ~ N(0, I), or, with an
`EnergyGuidance`, g of latents moved by short-run Langevin dynamics on E(g(z)) + |z|^2/2 (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from progressive.errors import BadInput
from progressive.eval.landscape import LandscapeSettings, descend, with_gaussian_prior
from progressive.eval.statistics import check_images
from progressive.objective import energy_from_output


@dataclass(frozen=True)
class Shard:
    """The batches of an evaluation that one process computes, and how every process's results meet.

    Batch k (of the held-out images, and of the samples) is computed by process k % world; `join` gathers every
    process's per-batch results and puts them back in batch order. A metric then reduces exactly what one process
    would have computed, batch for batch and in the same order: a 2-process evaluation equals a 1-process one.
    Random draws that run no network (negatives, patch positions) are made for every batch on every process.
    """

    rank: int = 0  # this process
    world: int = 1  # the processes that evaluate together
    gather: Callable[[list], list] | None = None  # [x] on every process -> [x of rank 0, x of rank 1, ...]

    def __post_init__(self) -> None:
        assert 0 <= self.rank < self.world, f"rank {self.rank} outside a world of {self.world}"
        assert self.world == 1 or self.gather is not None, "several processes need a gather"

    @classmethod
    def of(cls, accelerator) -> Shard:
        """The shard of this process of an Accelerator (gathering with Accelerate's gather_object)."""
        from accelerate.utils import gather_object

        return cls(accelerator.process_index, accelerator.num_processes, gather_object)

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world == self.rank

    def own(self, image_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """This process's batches of all `image_batches` (the others are passed over, not computed on)."""
        return (images for index, images in enumerate(image_batches) if self.owns(index))

    @property
    def main(self) -> bool:
        """The process that writes shared files (caches) and, in the commands, reports."""
        return self.rank == 0

    def wait(self) -> None:
        """Return when every process has called it (a barrier; nothing to wait for in one process)."""
        if self.world > 1:
            self.gather([None])

    def join(self, parts: list[Any]) -> list[Any]:
        """This process's per-batch results (its batches, in order; on the CPU) -> every batch's, in batch order,
        on every process. A collective: every process calls it, as often as the others."""
        if self.world == 1:
            return parts
        per_process = self.gather([parts])
        rounds = max(len(process_parts) for process_parts in per_process)
        return [done[round_] for round_ in range(rounds) for done in per_process if round_ < len(done)]


ONE_PROCESS = Shard()  # every batch, computed here


def batch_sizes(count: int, batch_size: int) -> list[int]:
    """The sizes of the batches `count` images come in: all `batch_size` but the last."""
    return [min(batch_size, count - start) for start in range(0, count, batch_size)]


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of at most `batch_size` images."""
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


EXPORT_BATCH = 32  # images per forward of the exports (triangle-export --batch, PretrainedTriangle.sample)


def seeded_latents(seeds: Iterable[int], latent_dim: int) -> torch.Tensor:
    """One latent per seed, z ~ N(0, I) from torch.Generator().manual_seed(seed): the same seed, the same z."""
    return torch.stack([torch.randn(latent_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


@dataclass(frozen=True)
class EnergyGuidance:
    """Energy-guided sampling: each latent takes `steps` Langevin steps on U(z) = E(g(z)) + |z|^2/2 before g draws it.

    U is the energy of p(z) exp(-E(g(z))) with p = N(0, I): the prior tilted by the energy model, whose samples the
    energy model ranks as likelier (Che et al. 2020's discriminator-driven latent sampling; the landscape's
    `--space latent --latent-prior` descends the same U). A step is z <- z - step_size * grad U(z) + sqrt(2 *
    step_size * temperature) * noise: temperature 1 samples the tilted distribution (in the limit of many small
    steps), 0 descends towards its modes. Not part of the objective: a sampler over the trained networks, off unless
    asked for; each step costs a forward and a backward pass of G and E.
    """

    energy: nn.Module  # the run's energy network
    energy_form: str  # the run's energy form (objective.energy_from_output)
    steps: int  # Langevin steps per latent (> 0)
    step_size: float = 0.01  # per unit of gradient
    temperature: float = 1.0  # of the Langevin noise; 0: plain gradient descent

    def latents(self, generator: nn.Module, z: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """The latents z (B, latent_dim) after the steps. Latent i's noise continues the random stream of its seed
        after z itself (seeded_latents), so a seed gives the same sample in any batch, shard or count."""
        settings = LandscapeSettings(
            descent_steps=self.steps, step_size=self.step_size, temperature=self.temperature, bounds=None
        )
        noise = None
        if self.temperature > 0:
            noise = torch.stack([_noise_after_latent(seed, z.shape[1], self.steps) for seed in seeds], dim=1)
        tilted = with_gaussian_prior(
            lambda w: energy_from_output(self.energy(generator(w)), self.energy_form).flatten()
        )
        return descend(tilted, z, settings, noise=noise)


def _noise_after_latent(seed: int, latent_dim: int, steps: int) -> torch.Tensor:
    """(steps, latent_dim) standard normal draws of seed's generator after the latent_dim of its z."""
    stream = torch.Generator().manual_seed(seed)
    torch.randn(latent_dim, generator=stream)  # z: seeded_latents' draw
    return torch.randn(steps, latent_dim, generator=stream)


def check_sample_langevin(steps: int, step_size: float, temperature: float) -> None:
    """BadInput, named as the commands' --sample-langevin-* flags, unless steps >= 0, step_size > 0 and
    temperature >= 0 (before any network is loaded)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise BadInput(f"--sample-langevin-steps must be an integer, 0 or more; got {steps!r}")
    if not 0 < step_size < float("inf"):
        raise BadInput(f"--sample-langevin-step-size must be a number above 0; got {step_size!r}")
    if not 0 <= temperature < float("inf"):
        raise BadInput(f"--sample-langevin-temperature must be a number, 0 or more; got {temperature!r}")


def generate_images(
    generator: nn.Module,
    count: int,  # images to draw
    latent_dim: int,  # dimension of z
    batch_size: int,  # images per forward
    seed: int,  # image i uses latent seed `seed + i`
    device: torch.device | str,  # where the generator runs
    shard: Shard = ONE_PROCESS,  # which batches this process draws
    guidance: EnergyGuidance | None = None,  # Langevin steps on the latents before drawing; None: g(z)
    temperature: float = 1.0,  # every z is scaled by this (below 1: truncation toward the mean image)
) -> Iterator[torch.Tensor]:
    """Batches of generated images (float32, on `device`) from seeded latents: `count` in all, or the shard's."""
    for index, start in enumerate(range(0, count, batch_size)):
        if shard.owns(index):
            seeds = range(seed + start, seed + min(start + batch_size, count))
            yield from generate_from_seeds(generator, seeds, latent_dim, batch_size, device, temperature, guidance)


@torch.no_grad()
def generate_from_seeds(
    generator: nn.Module,
    seeds: Sequence[int],  # image i uses latent seed seeds[i]
    latent_dim: int,  # dimension of z
    batch_size: int,  # images per forward
    device: torch.device | str,  # where the generator runs
    temperature: float = 1.0,  # every z is scaled by this (below 1: truncation toward the mean image)
    guidance: EnergyGuidance | None = None,  # Langevin steps on the (scaled) latents before drawing; None: g(z)
) -> Iterator[torch.Tensor]:
    """Batches of generated images (float32, on `device`), one per seed."""
    for start in range(0, len(seeds), batch_size):
        z = seeded_latents(seeds[start : start + batch_size], latent_dim).to(device) * temperature
        if guidance is not None:
            z = guidance.latents(generator, z, seeds[start : start + batch_size])
        yield generator(z).float()


@torch.no_grad()
def reconstruct(inference: nn.Module, generator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """g(mu(x)): the deterministic reconstruction the paper's Table 2 measures."""
    return encode_and_reconstruct(inference, generator, images)[2]


def encode_and_reconstruct(
    inference: nn.Module, generator: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu(x), log-variance s(x), g(mu(x))) of a batch of images."""
    check_images(images)
    mu, logvar = inference(images)
    return mu, logvar, generator(mu).float()


@torch.no_grad()
def energies(energy: nn.Module, images: torch.Tensor, energy_form: str) -> torch.Tensor:
    """E(x) of each image (B,) on the CPU, from the energy network's raw output and the run's energy form."""
    check_images(images)
    return energy_from_output(energy(images), energy_form).flatten().cpu()

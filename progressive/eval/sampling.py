"""Running the three networks in batches under no_grad: seeded samples, reconstructions g(mu(x)) and energies.

What the metrics, the exports (`triangle-export`, `PretrainedTriangle`) and the energy landscape draw images and
energies with. Images are float tensors (B, 3, R, R) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from progressive.eval.statistics import check_images
from progressive.objective import energy_from_output


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of at most `batch_size` images."""
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


EXPORT_BATCH = 32  # images per forward of the exports (triangle-export --batch, PretrainedTriangle.sample)


def seeded_latents(seeds: Iterable[int], latent_dim: int) -> torch.Tensor:
    """One latent per seed, z ~ N(0, I) from torch.Generator().manual_seed(seed): the same seed, the same z."""
    return torch.stack([torch.randn(latent_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def generate_images(
    generator: nn.Module,
    count: int,  # images to draw
    latent_dim: int,  # dimension of z
    batch_size: int,  # images per forward
    seed: int,  # image i uses latent seed `seed + i`
    device: torch.device | str,  # where the generator runs
) -> Iterator[torch.Tensor]:
    """Batches of generated images (float32, on `device`) from seeded latents, `count` in all."""
    return generate_from_seeds(generator, range(seed, seed + count), latent_dim, batch_size, device)


@torch.no_grad()
def generate_from_seeds(
    generator: nn.Module,
    seeds: Sequence[int],  # image i uses latent seed seeds[i]
    latent_dim: int,  # dimension of z
    batch_size: int,  # images per forward
    device: torch.device | str,  # where the generator runs
    temperature: float = 1.0,  # every z is scaled by this (below 1: truncation toward the mean image)
) -> Iterator[torch.Tensor]:
    """Batches of generated images (float32, on `device`), one per seed."""
    for start in range(0, len(seeds), batch_size):
        z = seeded_latents(seeds[start : start + batch_size], latent_dim).to(device)
        yield generator(z * temperature).float()


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

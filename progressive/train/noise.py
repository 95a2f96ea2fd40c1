"""All randomness of one iteration from (seed, images_shown): latents, reparameterisation noise, flips and the
uniform-noise negatives of the energy step.

Drawn for the whole global batch and sliced to this rank, as the data is, so N processes see exactly
what one process with the global batch would, and a resumed run draws what an uninterrupted one did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from progressive.objective import uniform_noise


def iteration_seed(seed: int, images_shown: int) -> int:
    return int(np.random.SeedSequence([seed, images_shown]).generate_state(1)[0])


@dataclass
class IterationNoise:
    """Latents, reparameterisation noise and flips of one iteration, this rank's slice of the global batch."""

    z: torch.Tensor
    eps: tuple[torch.Tensor, torch.Tensor]
    flip: torch.Tensor
    noise_images: torch.Tensor | None = None  # uniform in [-1, 1], (B, 3, R, R) in the run's channel mode, or None


def draw_noise(
    generator: torch.Generator,
    seed: int,
    images_shown: int,
    global_batch: int,
    latent_dim: int,
    rank: int,
    world: int,
    noise_images: tuple[int, int] | None = None,  # (channels, resolution) of the noise negatives, when they are on
    noise_octaves: int = 0,  # the noise negatives' coarser scales (objective.uniform_noise)
) -> IterationNoise:
    """Noise for the whole global batch from (seed, images_shown), sliced to this rank (as the data is)."""
    generator.manual_seed(iteration_seed(seed, images_shown))
    device = generator.device
    full = torch.randn(3, global_batch, latent_dim, generator=generator, device=device)
    flip = torch.rand(global_batch, generator=generator, device=device) < 0.5
    local = global_batch // world
    part = slice(rank * local, (rank + 1) * local)
    images = None
    if noise_images is not None:  # drawn after the rest, so z, eps and flips are the same with or without them
        channels, resolution = noise_images
        images = uniform_noise(global_batch, channels, resolution, device, generator=generator, octaves=noise_octaves)
        images = images[part]
    return IterationNoise(z=full[0, part], eps=(full[1, part], full[2, part]), flip=flip[part], noise_images=images)

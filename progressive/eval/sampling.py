"""Running the three networks in batches under no_grad: seeded samples, reconstructions g(mu(x)) and energies,
and the share of those batches one process computes when several evaluate together (`Shard`).

What the metrics, the exports (`triangle-export`, `PretrainedTriangle`) and the energy landscape draw images and
energies with. Images are float tensors (B, 3, R, R) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


def generate_images(
    generator: nn.Module,
    count: int,  # images to draw
    latent_dim: int,  # dimension of z
    batch_size: int,  # images per forward
    seed: int,  # image i uses latent seed `seed + i`
    device: torch.device | str,  # where the generator runs
    shard: Shard = ONE_PROCESS,  # which batches this process draws
) -> Iterator[torch.Tensor]:
    """Batches of generated images (float32, on `device`) from seeded latents: `count` in all, or the shard's."""
    for index, start in enumerate(range(0, count, batch_size)):
        if shard.owns(index):
            seeds = range(seed + start, seed + min(start + batch_size, count))
            yield from generate_from_seeds(generator, seeds, latent_dim, batch_size, device)


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

"""Named model configurations: `build_models(name)` returns the three networks of a preset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from progressive.reference import ReferenceEnergy, ReferenceGenerator, ReferenceInference


@dataclass
class TriangleModels:
    """The three networks trained by the divergence triangle, plus what their callers must know."""

    generator: nn.Module  # g(z): (B, latent_dim) -> (B, 3, R, R) in [-1, 1]
    energy: nn.Module  # raw energy output s(x): (B, 3, R, R) -> (B,)
    inference: nn.Module  # q(z|x): (B, 3, R, R) -> (mu, logvar), each (B, latent_dim)
    latent_dim: int  # dimension of z
    resolution: int  # largest image side the networks handle

    def networks(self) -> dict[str, nn.Module]:
        """The three networks by name, in the order they are updated."""
        return {"energy": self.energy, "inference": self.inference, "generator": self.generator}

    def to(self, device: torch.device | str) -> TriangleModels:
        for net in self.networks().values():
            net.to(device)
        return self

    def train(self, mode: bool = True) -> TriangleModels:
        for net in self.networks().values():
            net.train(mode)
        return self


def _cifar10() -> TriangleModels:
    latent_dim = 100
    return TriangleModels(
        generator=ReferenceGenerator(latent_dim=latent_dim, channels=(512, 512, 256, 128)),
        energy=ReferenceEnergy(channels=(64, 128, 256, 256)),
        inference=ReferenceInference(latent_dim=latent_dim, channels=(64, 128, 256, 512)),
        latent_dim=latent_dim,
        resolution=32,
    )


def _cifar10_tiny() -> TriangleModels:
    """The cifar10 architecture with 1/8 of the channels: for tests and quick CPU checks."""
    latent_dim = 16
    return TriangleModels(
        generator=ReferenceGenerator(latent_dim=latent_dim, channels=(64, 64, 32, 16)),
        energy=ReferenceEnergy(channels=(8, 16, 32, 32)),
        inference=ReferenceInference(latent_dim=latent_dim, channels=(8, 16, 32, 64)),
        latent_dim=latent_dim,
        resolution=32,
    )


PRESETS: dict[str, Callable[[], TriangleModels]] = {
    "cifar10": _cifar10,
    "cifar10-tiny": _cifar10_tiny,
}


def build_models(name: str) -> TriangleModels:
    """Build the generator, energy model and inference model of preset `name`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()

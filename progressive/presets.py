"""Named model configurations: `build_models(name)` returns the three networks of a preset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from progressive.networks import ProgressiveEnergy, ProgressiveGenerator, ProgressiveInference
from progressive.reference import ReferenceEnergy, ReferenceGenerator, ReferenceInference
from progressive.triangle import bare


@dataclass
class TriangleModels:
    """The three networks trained by the divergence triangle, plus what their callers must know."""

    generator: nn.Module  # g(z): (B, latent_dim) -> (B, 3, R, R) in [-1, 1]
    energy: nn.Module  # raw energy output s(x): (B, 3, R, R) -> (B,)
    inference: nn.Module  # q(z|x): (B, 3, R, R) -> (mu, logvar), each (B, latent_dim)
    latent_dim: int  # dimension of z
    resolution: int  # largest image side the networks handle
    min_resolution: int | None = None  # smallest stage resolution; None: `resolution` (fixed-resolution networks)

    def __post_init__(self) -> None:
        if self.min_resolution is None:
            self.min_resolution = self.resolution

    def networks(self) -> dict[str, nn.Module]:
        """The three networks by name, in the order they are updated."""
        return {"energy": self.energy, "inference": self.inference, "generator": self.generator}

    def set_stage(self, resolution: int, alpha: float) -> None:
        """Put all three networks at stage (resolution, alpha) together, or raise ValueError and change none.

        Networks without `set_stage` (fixed resolution) accept only their own resolution with alpha 1.
        """
        nets = [bare(net) for net in self.networks().values()]
        for net in nets:
            if hasattr(net, "set_stage"):
                net.validate_stage(resolution, alpha)
            elif resolution != self.resolution or alpha != 1:
                raise ValueError(
                    f"{type(net).__name__} runs only at resolution {self.resolution} with alpha 1, "
                    f"got resolution {resolution}, alpha {alpha}"
                )
        for net in nets:
            if hasattr(net, "set_stage"):
                net.set_stage(resolution, alpha)

    @property
    def stage(self) -> tuple[int, float]:
        """(resolution, alpha) of the three networks; RuntimeError if they disagree."""
        stages = {
            name: (bare(net).resolution, float(getattr(bare(net), "alpha", 1.0)))
            for name, net in self.networks().items()
        }
        if len(set(stages.values())) != 1:
            raise RuntimeError(f"the three networks are at different stages: {stages}")
        return next(iter(stages.values()))

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


def _reference64(width: int, batch_norm: bool) -> TriangleModels:
    """Section 4.1's 64x64 networks: the cifar10 networks with one more block at 64x64, `width` times the channels,
    batch norm in the energy and inference models too when `batch_norm` (the generator always has it)."""
    latent_dim = 100

    def wide(*channels: int) -> tuple[int, ...]:
        return tuple(width * c for c in channels)

    return TriangleModels(
        generator=ReferenceGenerator(latent_dim=latent_dim, channels=wide(512, 512, 256, 128, 64)),
        energy=ReferenceEnergy(channels=wide(32, 64, 128, 256, 256), batch_norm=batch_norm),
        inference=ReferenceInference(
            latent_dim=latent_dim, channels=wide(32, 64, 128, 256, 512), batch_norm=batch_norm
        ),
        latent_dim=latent_dim,
        resolution=64,
    )


def _celeba64() -> TriangleModels:
    """CelebA 64x64: batch norm in the generator only, as the cifar10 networks."""
    return _reference64(width=1, batch_norm=False)


def _lsun64() -> TriangleModels:
    """LSUN 64x64: "twice the number of channels and batch normalization is used in all three models"."""
    return _reference64(width=2, batch_norm=True)


def _progressive(
    latent_dim: int,  # dimension of z
    max_resolution: int,  # last resolution of the growth
    channel_base: int,  # channels at resolution r: clamp(channel_base // r, channel_min, channel_max)
    channel_max: int,  # upper clamp of the channel rule
    channel_min: int = 1,  # lower clamp of the channel rule
    equalized: bool = False,  # equalised learning rate; off: the reference's Adam rates assume plain weights
) -> TriangleModels:
    """The three progressive networks with one channel rule and the default normalisations (docs/architecture.md)."""
    rule = {
        "channel_base": channel_base,
        "channel_max": channel_max,
        "channel_min": channel_min,
        "equalized": equalized,
    }
    span = {"min_resolution": 4, "max_resolution": max_resolution}
    return TriangleModels(
        generator=ProgressiveGenerator(latent_dim=latent_dim, **span, **rule),
        energy=ProgressiveEnergy(**span, **rule),
        inference=ProgressiveInference(latent_dim=latent_dim, **span, **rule),
        latent_dim=latent_dim,
        resolution=max_resolution,
        min_resolution=4,
    )


def _celebahq() -> TriangleModels:
    """4 -> 1024 with the progressive-GAN channels: 512 up to 32x32, halving after (16 at 1024)."""
    return _progressive(latent_dim=512, max_resolution=1024, channel_base=16384, channel_max=512)


def _lsun() -> TriangleModels:
    """4 -> 256 with the same channel rule as celebahq."""
    return _progressive(latent_dim=512, max_resolution=256, channel_base=16384, channel_max=512)


def _demo() -> TriangleModels:
    """4 -> 32 with 64 channels up to 8x8, 32 at 16x16, 16 at 32x32: the CPU demo."""
    return _progressive(latent_dim=64, max_resolution=32, channel_base=512, channel_max=64)


def _tiny() -> TriangleModels:
    """4 -> 32 with 4 channels (2 at 32x32): fast tests."""
    return _progressive(latent_dim=8, max_resolution=32, channel_base=64, channel_max=4)


def _tiny1024() -> TriangleModels:
    """4 -> 1024 with 4 channels up to 16x16, 2 at 32x32, 1 from 64x64: shape tests at every resolution."""
    return _progressive(latent_dim=8, max_resolution=1024, channel_base=64, channel_max=4)


PRESETS: dict[str, Callable[[], TriangleModels]] = {
    "cifar10": _cifar10,
    "cifar10-tiny": _cifar10_tiny,
    "celeba64": _celeba64,
    "lsun64": _lsun64,
    "celebahq": _celebahq,
    "lsun": _lsun,
    "demo": _demo,
    "tiny": _tiny,
    "tiny1024": _tiny1024,
}


def build_models(name: str) -> TriangleModels:
    """Build the generator, energy model and inference model of preset `name`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()

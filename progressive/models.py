"""The three models trained together, as one object: stage changes in sync, unwrapping, the generator's average."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from progressive.nets.networks import parameters_per_resolution


def bare(net: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar) wrapper; the module itself otherwise."""
    return getattr(net, "module", net)


@dataclass
class TriangleModels:
    """The three networks trained by the divergence triangle, the generator's moving average, and what their callers
    must know. Every network is a StagedNetwork (nets/layers.py): `set_stage` moves all of them together."""

    generator: nn.Module  # g(z): (B, latent_dim) -> (B, 3, R, R) in [-1, 1], three identical channels if grayscale
    energy: nn.Module  # raw energy output s(x): (B, 3, R, R) -> (B,)
    inference: nn.Module  # q(z|x): (B, 3, R, R) -> (mu, logvar), each (B, latent_dim)
    latent_dim: int  # dimension of z
    resolution: int  # largest image side the networks handle
    min_resolution: int | None = None  # smallest stage resolution; None: `resolution` (fixed-resolution networks)
    # 1: the generator draws gray images (one channel shown as three identical ones); every image interface stays
    # (B, 3, R, R), so only the generator and the PNG writers need to know.
    image_channels: int = 3
    # The generator's exponential moving average (samples), never back-propagated; None where there is none yet
    # (the networks as built). The trainer, load_trained and PretrainedTriangle hold it here.
    generator_ema: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.min_resolution is None:
            self.min_resolution = self.resolution
        drawn = getattr(bare(self.generator), "image_channels", 3)
        if drawn != self.image_channels:
            raise ValueError(f"image_channels is {self.image_channels} but the generator draws {drawn} channel(s)")

    def networks(self) -> dict[str, nn.Module]:
        """The three trained networks by name, in the order they are updated (the average is not one of them)."""
        return {"energy": self.energy, "inference": self.inference, "generator": self.generator}

    def staged(self) -> dict[str, nn.Module]:
        """Every network with a stage, unwrapped, by name: the three and the average ("generator_ema")."""
        nets = {name: bare(net) for name, net in self.networks().items()}
        return nets | ({"generator_ema": self.generator_ema} if self.generator_ema is not None else {})

    def set_stage(self, resolution: int, alpha: float) -> None:
        """Put every network (the average too) at stage (resolution, alpha) together, or raise ValueError and change
        none. Fixed-resolution networks accept only their own resolution with alpha 1."""
        for net in self.staged().values():
            net.validate_stage(resolution, alpha)
        for net in self.staged().values():
            net.set_stage(resolution, alpha)

    @property
    def stage(self) -> tuple[int, float]:
        """(resolution, alpha) of the networks; RuntimeError if they disagree."""
        stages = {name: (net.resolution, float(net.alpha)) for name, net in self.staged().items()}
        if len(set(stages.values())) != 1:
            raise RuntimeError(f"the networks are at different stages: {stages}")
        return next(iter(stages.values()))

    def to(self, device: torch.device | str) -> TriangleModels:
        for net in self.networks().values():
            net.to(device)
        if self.generator_ema is not None:
            self.generator_ema.to(device)
        return self

    def train(self, mode: bool = True) -> TriangleModels:
        for net in self.networks().values():
            net.train(mode)
        return self


@torch.no_grad()
def update_ema(ema: nn.Module, generator: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * generator for parameters; buffers (batch-norm statistics) copied."""
    # Under no_grad the generator's parameters are read as they are: no detached view per tensor (54 in celebahq).
    torch._foreach_lerp_(list(ema.parameters()), list(generator.parameters()), 1.0 - beta)
    for ema_buffer, buffer in zip(ema.buffers(), generator.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def parameter_summary(models: TriangleModels) -> dict[str, dict[str, int]]:
    """Per network, its parameter count ("total") and, for progressive networks, the count of each resolution's
    block with its RGB layer (keys "4", "8", ...: `parameters_per_resolution`)."""
    summary = {}
    for name, net in models.networks().items():
        net = bare(net)
        counts = {"total": sum(p.numel() for p in net.parameters())}
        if net.progressive:  # every parameter belongs to one resolution
            counts |= {str(r): n for r, n in parameters_per_resolution(net).items()}
        summary[name] = counts
    return summary


def format_count(count: int) -> str:
    """1234 -> '1.2k', 23_100_000 -> '23.1M'."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)

"""Everything a training iteration needs, on this process's device: the three networks (wrapped by Accelerate,
DistributedDataParallel across processes), their optimisers, the generator's moving average and the updates.

Shared by the training loop and launch/benchmark_train.py, so the benchmark measures what training runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from progressive.models import TriangleModels
from progressive.presets import build_models
from progressive.train.compile import check_accelerate, compile_networks
from progressive.train.optim import OptimizerConfig, build_optimizers
from progressive.updates import GuardedUpdate, TriangleOptimizers


@dataclass
class PreparedTraining:
    models: TriangleModels  # the three networks as Accelerate prepared them, and the generator's moving average
    optimizers: TriangleOptimizers  # one Adam per network
    update: GuardedUpdate  # per-network loss scaling and non-finite checks
    memory_format: torch.memory_format  # of the networks, and of the images they should be given


def prepare_training(
    preset: str,  # model preset (progressive/presets.py)
    optimizer: OptimizerConfig,  # learning rates, betas, weight decays and clipping of the optimisers
    accelerator: Accelerator,  # device, processes, mixed precision
    seed: int,  # initial weights: the same on every process
    channels_last: bool = False,  # NHWC networks (same maths; faster convolutions on GPUs)
    compile_mode: str = "no",  # torch.compile mode for the networks (train/compile.py), or "no"
    image_channels: int = 3,  # the data's: 1 builds a generator that draws gray images (TrainConfig.image_channels)
    channel_base: int | None = None,  # the progressive channel rule's base (TrainConfig.channel_base); None: preset's
    channel_max: int | None = None,  # its upper clamp (TrainConfig.channel_max); None: the preset's
    latent_dim: int | None = None,  # the dimension of z (TrainConfig.latent_dim); None: the preset's
) -> PreparedTraining:
    """Build, place and wrap the networks of `preset`; ValueError for fp16 where it cannot run (see GuardedUpdate)
    and for Accelerate's own dynamo backend (see train/compile.py)."""
    check_accelerate(accelerator)
    torch.manual_seed(seed)  # identical initial weights on every rank
    models = build_models(preset, image_channels, channel_base, channel_max, latent_dim).to(accelerator.device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for net in models.networks().values():
        net.to(memory_format=memory_format)
    optimizers = build_optimizers(models, optimizer)
    ema = copy.deepcopy(models.generator).requires_grad_(False)
    update = GuardedUpdate.for_accelerator(accelerator, models.networks())
    if compile_mode != "no":
        compile_networks(models.networks().values(), compile_mode)
    generator, energy, inference = accelerator.prepare(models.generator, models.energy, models.inference)
    prepared = TriangleModels(
        generator=generator,
        energy=energy,
        inference=inference,
        latent_dim=models.latent_dim,
        resolution=models.resolution,
        min_resolution=models.min_resolution,
        image_channels=models.image_channels,
        generator_ema=ema,  # not wrapped: it is never back-propagated
    )
    return PreparedTraining(prepared, optimizers, update, memory_format)

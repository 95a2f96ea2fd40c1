"""The optimiser configuration: one Adam per network, its learning rates, their decay and ramp-down, and gradient
clipping.

Apart from the objective (`TriangleConfig` says what is minimised; this says how the steps are taken). The
learning rates at a given number of images shown are the schedule's (`train/schedule.py` `learning_rates`,
times the resolution's multiplier), so that a run's whole course is a pure function of the images shown.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from progressive.updates import TriangleOptimizers


@dataclass(frozen=True)
class OptimizerConfig:
    """Adam for each network (defaults: the reference code's values, enijkamp/triangle)."""

    adam_beta1: float = 0.5  # Adam beta1, all three networks
    adam_beta2: float = 0.999  # Adam beta2, all three networks
    lr_energy: float = 1e-4  # learning rate of the energy model
    lr_generator: float = 3e-4  # learning rate of the generator
    lr_inference: float = 3e-4  # learning rate of the inference model
    weight_decay_energy: float = 0.0  # L2 weight decay (Adam's coupled form) of the energy model
    weight_decay_generator: float = 5e-4  # L2 weight decay of the generator
    weight_decay_inference: float = 0.0  # L2 weight decay of the inference model
    grad_clip: float = 100.0  # gradient-norm clipping per network; <= 0 disables it
    lr_decay: float = 0.998  # learning rates are multiplied by this ...
    lr_decay_images: int = 50_000  # ... every this many real images shown
    lr_rampdown_start_kimg: float = 0.0  # a half-cosine ramp-down of all rates begins after this many kimg ...
    lr_rampdown_kimg: float = 0.0  # ... and lasts this many kimg (0: no ramp-down) ...
    lr_rampdown_floor: float = 0.1  # ... down to this fraction of the rates, kept from then on

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if self.lr_decay_images <= 0:
            raise ValueError(f"lr_decay_images must be positive, got {self.lr_decay_images}")
        for name in ("lr_rampdown_start_kimg", "lr_rampdown_kimg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0 <= self.lr_rampdown_floor <= 1:
            raise ValueError(f"lr_rampdown_floor must be between 0 and 1, got {self.lr_rampdown_floor}")


OPTIMIZER_KEYS = frozenset(f.name for f in dataclasses.fields(OptimizerConfig))
REFERENCE_OPTIMIZER = OptimizerConfig()  # the reference code's optimiser: what a caller gets without one


def build_optimizers(models, config: OptimizerConfig = REFERENCE_OPTIMIZER) -> TriangleOptimizers:
    """Adam for each network with the configuration's learning rates, betas, weight decay and clipping."""
    betas = (config.adam_beta1, config.adam_beta2)

    def adam(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        # Fused: one kernel per step for all parameters instead of about ten per parameter tensor (same maths).
        return torch.optim.Adam(net.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, fused=True)

    return TriangleOptimizers(
        generator=adam(models.generator, config.lr_generator, config.weight_decay_generator),
        energy=adam(models.energy, config.lr_energy, config.weight_decay_energy),
        inference=adam(models.inference, config.lr_inference, config.weight_decay_inference),
        grad_clip=config.grad_clip,
    )


def apply_learning_rates(optimizers: TriangleOptimizers, rates: dict[str, float]) -> None:
    """Set every parameter group's learning rate from `rates` (keyed by network name)."""
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = rates[name]

"""One Adam optimiser per network, and the learning rates the schedule gives them."""

from __future__ import annotations

import torch
from torch import nn

from progressive.objective import TriangleConfig
from progressive.updates import TriangleOptimizers


def build_optimizers(models, config: TriangleConfig | None = None) -> TriangleOptimizers:
    """Adam for each network with the configuration's learning rates, betas and weight decay."""
    config = config or TriangleConfig()
    betas = (config.adam_beta1, config.adam_beta2)

    def adam(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        # Fused: one kernel per step for all parameters instead of about ten per parameter tensor (same maths).
        return torch.optim.Adam(net.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, fused=True)

    return TriangleOptimizers(
        generator=adam(models.generator, config.lr_generator, config.weight_decay_generator),
        energy=adam(models.energy, config.lr_energy, config.weight_decay_energy),
        inference=adam(models.inference, config.lr_inference, config.weight_decay_inference),
    )


def apply_learning_rates(optimizers: TriangleOptimizers, rates: dict[str, float]) -> None:
    """Set every parameter group's learning rate from `rates` (keyed by network name)."""
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = rates[name]

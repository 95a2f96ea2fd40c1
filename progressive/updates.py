"""How one network's loss becomes its parameter update: backward into that network only, clip, step.

`plain_update` is the iteration's default; `GuardedUpdate` adds per-network fp16 loss scaling and skips
non-finite steps (what training uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:  # the iteration needs no Accelerate; only the trainer's updates are built from one
    from accelerate import Accelerator


class Update(Protocol):
    """How one network's loss becomes a parameter update, its gradient norm clipped to `max_norm` (<= 0: not
    clipped); returns the gradient norm before clipping."""

    def __call__(
        self, name: str, optimizer: torch.optim.Optimizer, net: nn.Module, loss: torch.Tensor, max_norm: float
    ) -> torch.Tensor: ...


@dataclass
class TriangleOptimizers:
    """One optimiser per network, with the same attribute names as the models, and the gradient clipping of
    every update (train/optim.py `build_optimizers` builds them from an OptimizerConfig)."""

    generator: torch.optim.Optimizer
    energy: torch.optim.Optimizer
    inference: torch.optim.Optimizer
    grad_clip: float = 100.0  # gradient-norm clipping per network (the reference's); <= 0 disables it

    def items(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return [("energy", self.energy), ("inference", self.inference), ("generator", self.generator)]


def updated_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters `optimizer` updates that take gradients: the `inputs` of its network's backward.

    Read from the optimiser rather than the network: walking the modules for them at every update cost a few per
    cent of the host time of a low-resolution iteration, where the GPU waits on the host (docs/benchmarks.md).
    """
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Total gradient norm before clipping (stays on the device); clips to `max_norm` when it is positive.

    Parameters without a gradient (inactive blocks of a progressive network) are ignored.
    """
    if max_norm > 0:
        return nn.utils.clip_grad_norm_(params, max_norm).detach().float()
    return nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).detach().float()


def plain_update(
    name: str, optimizer: torch.optim.Optimizer, net: nn.Module, loss: torch.Tensor, max_norm: float
) -> torch.Tensor:
    """Back-propagate `loss` into `net` only, clip its gradient norm, step.

    Trainers substitute their own (mixed-precision loss scaling, non-finite checks) via `triangle_step(update=...)`.
    """
    params = updated_parameters(optimizer)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    grad_norm = clip_gradients(params, max_norm)
    optimizer.step()
    return grad_norm


@dataclass
class GuardedUpdate:
    """Per-network update with its own fp16 loss scaler and a non-finite check.

    Each network has its own GradScaler, so an overflow in one network's backward lowers only that
    network's scale and skips only its step. A step whose gradient norm (after DDP's all-reduce, so
    the same on every rank) is not finite is skipped; the decision costs one host sync per update.
    """

    scalers: dict[str, torch.amp.GradScaler]  # one per network; disabled unless training in fp16
    skipped: dict[str, int] = field(default_factory=lambda: {"energy": 0, "inference": 0, "generator": 0})
    skipped_this_iteration: bool = False  # set by any skipped update, cleared by the loop

    @classmethod
    def for_accelerator(cls, accelerator: Accelerator, names) -> GuardedUpdate:
        """Updates for the networks `names`, with loss scaling when `accelerator` trains in fp16.

        Raises ValueError for fp16 without float16 autocast (the CPU), which Accelerate would
        otherwise run in float32 while calling it fp16.
        """
        fp16 = accelerator.mixed_precision == "fp16"
        if fp16 and not accelerator.native_amp:
            raise ValueError(
                f"fp16 mixed precision needs a GPU (Accelerate does not autocast to float16 on "
                f"{accelerator.device}); use --mixed_precision bf16 or no"
            )
        return cls(scalers={name: torch.amp.GradScaler(accelerator.device.type, enabled=fp16) for name in names})

    def __call__(self, name, optimizer, net, loss, max_norm: float) -> torch.Tensor:
        params = updated_parameters(optimizer)
        scaler = self.scalers[name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(inputs=params)
        scaler.unscale_(optimizer)
        grad_norm = clip_gradients(params, max_norm)
        if math.isfinite(grad_norm.item()):  # the one host sync of the update (torch.isfinite would add 5 ops)
            scaler.step(optimizer)
        else:
            self.skipped[name] += 1
            self.skipped_this_iteration = True
            optimizer.zero_grad(set_to_none=True)
        scaler.update()
        return grad_norm

"""`--compile`: torch.compile each network in place, with a recompilation budget for the whole schedule.

Each stage (resolution, fade or stable) is a different graph, and within a stage a forward function is
compiled again for each batch shape it meets (the energy model sees real and generated images together,
then generated ones alone), for gradient-free passes (snapshots, metrics) and once more when a fade's alpha
first changes (dynamo specialises a float before treating it as symbolic). With torch's default budget of 8
compilations per function, a progressive run exhausts it within the first fades and dynamo then runs the
networks eagerly without saying so. Here the budget is sized from the schedule and an exhausted budget
is an error instead of a silent fall-back.

The networks are compiled in place (`nn.Module.compile`), before Accelerate wraps them: the iteration's
forwards through the unwrapped modules (`bare`) run compiled too. Accelerate's own dynamo backend compiles
the DistributedDataParallel wrapper instead, which those forwards bypass; it is refused (`check_accelerate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from torch import nn

COMPILE_MODES = ("no", "default", "reduce-overhead", "max-autotune")  # reduce-overhead: CUDA graphs on GPUs
GRAPHS_PER_PHASE = 12  # per forward function: batch shapes x gradient / no gradient x alpha's first change, with room


def check_accelerate(accelerator: Accelerator) -> None:
    """ValueError when Accelerate was configured to compile (`--dynamo_backend`, `accelerate config`)."""
    from accelerate.utils import DynamoBackend

    backend = accelerator.state.dynamo_plugin.backend
    if backend != DynamoBackend.NO:
        raise ValueError(
            f"Accelerate's dynamo backend ({backend.value.lower()}) compiles the DistributedDataParallel wrappers, "
            "which the iteration's cross-network forwards bypass, and exhausts torch's recompilation budget across "
            "the growth stages; launch with --dynamo_backend no and pass --compile to the training program instead"
        )


def compile_networks(networks: Iterable[nn.Module], mode: str) -> None:
    """Compile `networks` in place (mode one of COMPILE_MODES but "no"); run them inside `recompilation_budget`."""
    if mode not in COMPILE_MODES[1:]:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES[1:]}, got {mode!r}")
    for net in networks:
        net.compile(mode=None if mode == "default" else mode)


@contextmanager
def recompilation_budget(phases: int) -> Iterator[None]:
    """While inside, dynamo may compile each function GRAPHS_PER_PHASE times per phase of the schedule, and an
    exhausted budget raises instead of silently running eagerly. Dynamo's settings are restored on exit."""
    with torch._dynamo.config.patch(
        recompile_limit=max(torch._dynamo.config.recompile_limit, GRAPHS_PER_PHASE * phases),
        accumulated_recompile_limit=max(
            torch._dynamo.config.accumulated_recompile_limit, 4 * GRAPHS_PER_PHASE * phases
        ),
        fail_on_recompile_limit_hit=True,
    ):
        yield

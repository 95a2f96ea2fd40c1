"""What the user sees of a run: the lines at its start, the status line and tracker scalars of each tick, and
the progress line between ticks. Everything here runs on the main process, except the one collective of a tick.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from progressive.models import TriangleModels, format_count, parameter_summary
from progressive.objective import STATISTICS, TriangleConfig, stats_to_dict
from progressive.train.health import health_warnings, record_extremes, sample_diversity
from progressive.train.schedule import Stage

log = logging.getLogger("progressive.train")


@dataclass
class Tick:
    """When the current tick began: the time and the images shown then."""

    time: float
    images: int


def interval_images(every_kimg: float) -> int:
    """An interval in kimg as a whole number of images (at least 1): what ticks, snapshots and checkpoints count."""
    return max(int(round(every_kimg * 1000)), 1)


def crossed(before: int, after: int, every_kimg: float) -> bool:
    """Whether a multiple of `every_kimg` thousand images lies in (before, after]."""
    every = interval_images(every_kimg)
    return after // every > before // every


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory: CUDA allocations on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_description(
    models: TriangleModels,  # the networks of the run
    ema_kimg: float,  # half-life of the generator average
    ema_rampup: float | None,  # its ramp-up (TrainConfig.ema_rampup)
    batch: int,  # the current batch size
    decay_now: float,  # the average's decay per iteration at the current images shown
) -> list[str]:
    """Lines for the start of a run: parameters per network and resolution, and the generator average's decay."""
    lines = [
        f"{name}: {format_count(counts['total'])} parameters"
        + (" (" + ", ".join(f"{r}: {format_count(n)}" for r, n in counts.items() if r != "total") + ")")
        for name, counts in parameter_summary(models).items()
    ]
    rampup = f" (at most {ema_rampup:g} x the images shown)" if ema_rampup is not None else ""
    decay = 0.5 ** (batch / (ema_kimg * 1000))
    lines.append(
        f"generator average: half-life {ema_kimg * 1000:,.0f} images{rampup}; "
        f"decay per iteration of {batch} images {decay:.6f}, now {decay_now:.6f}"
    )
    return lines


def progress_line(stage: Stage, tick: Tick, now: int, total: int, tick_kimg: float) -> None:
    """A line between ticks that are minutes apart: where the run is, its speed, and when the next tick comes."""
    images_per_second = max(now - tick.images, 1) / max(time.time() - tick.time, 1e-9)
    every = interval_images(tick_kimg)
    next_tick = (now // every + 1) * every
    log.info(
        "kimg %8.2f  res %4d  alpha %.3f  img/s %7.1f  next tick in %s  eta run %s",
        now / 1000,
        stage.resolution,
        stage.alpha,
        images_per_second,
        duration(max(min(next_tick, total) - now, 0) / images_per_second),
        duration(max(total - now, 0) / images_per_second),
    )


def tick_report(
    accelerator: Accelerator,  # every process calls this: the statistics are averaged over them
    stage: Stage,  # the stage at the end of the tick
    tick: Tick,  # when the tick began
    stats_sum: torch.Tensor,  # the iteration statistics summed over the tick (STATISTICS order)
    count: int,  # iterations summed
    now: int,  # images shown
    total: int,  # images the run will show
    skipped: dict[str, int],  # skipped updates per network, over the run
    health: dict[str, float],  # the run's extremes, updated here
    latent_dim: int,  # dimension of z (the latent NLL is judged per dimension)
    objective: TriangleConfig,  # which terms are trained (for the warnings)
) -> None:
    """The status line, the warnings and the tracker scalars of a tick."""
    stats = accelerator.reduce(stats_sum / max(count, 1), reduction="mean")  # one collective per tick
    values = stats_to_dict(stats)
    images_per_second = max(now - tick.images, 1) / max(time.time() - tick.time, 1e-9)
    memory = peak_memory_gib(accelerator.device)
    phase_left = (stage.phase_end_images - now) if stage.phase_end_images is not None else total - now
    if not accelerator.is_main_process:
        return
    diversity = sample_diversity(values)
    log.info(
        "kimg %8.2f  res %4d  alpha %.3f  batch %3d  sec/kimg %7.2f  img/s %7.1f  "
        "L_E %+.3f  L_I %.2f  L_G %.2f  recon %.2f  E(real) %+.3f  E(fake) %+.3f  diversity %.2f  "
        "eta phase %s run %s  mem %.2f GiB  skipped %s",
        now / 1000,
        stage.resolution,
        stage.alpha,
        stage.batch_size,
        1000 / images_per_second,
        images_per_second,
        values["loss_energy"],
        values["loss_inference"],
        values["loss_generator"],
        values["recon"],
        values["energy_real"],
        values["energy_fake"],
        diversity,
        duration(max(phase_left, 0) / images_per_second),
        duration(max(total - now, 0) / images_per_second),
        memory,
        sum(skipped.values()),
    )
    record_extremes(health, values)
    for warning in health_warnings(values, latent_dim, objective):
        log.warning("warning at kimg %.2f: %s", now / 1000, warning)
    scalars = {STATISTICS[name]: value for name, value in values.items()}
    scalars |= {
        "health/latent_nll_per_dim": values["latent_nll"] / latent_dim,
        "health/diversity": diversity,
        "progress/kimg": now / 1000,
        "progress/resolution": stage.resolution,
        "progress/alpha": stage.alpha,
        "progress/batch": stage.batch_size,
        "timing/sec_per_kimg": 1000 / images_per_second,
        "timing/images_per_second": images_per_second,
        "memory/peak_gib": memory,
    }
    scalars |= {f"lr/{name}": rate for name, rate in stage.learning_rates.items()}
    scalars |= {f"skipped/{name}": n for name, n in skipped.items()}
    accelerator.log(scalars, step=now)

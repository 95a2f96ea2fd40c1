"""Batch sizes that fit a GPU: the peak memory of a training iteration, modelled from measurements, and the
batch table `--batch auto` derives from it (docs/training.md, "Batch sizes").

The model is linear in the batch: peak = static + images per process x per-image memory at the resolution.
Fitting only ever lowers the schedule's batch sizes: the learning rates are per Adam step and were verified at the
presets' batch, so a larger batch would be a different training, not a faster one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from progressive.nets.layers import resolutions
from progressive.presets import PeakMemory, preset
from progressive.train.schedule import LEGACY_BATCH_SIZES, ScheduleConfig

# The fraction of a GPU's memory the model's peak may reach, and what is kept aside first (the CUDA context,
# cuDNN workspaces): the allocator reserves more than the tensors it holds, and the model is an estimate.
USABLE_FRACTION = 0.9
RESERVED_GIB = 1.0


def apply_batch_flag(schedule: ScheduleConfig, text: str) -> ScheduleConfig:
    """The schedule with the batch sizes of `--batch TEXT`: "legacy" (progressive GANs' 16 GB table), N (every
    resolution), R:N,R:N (those resolutions, over the schedule's table) or both; "auto" leaves it as it is (the
    fitting is choose_batch_sizes'). ValueError naming what is wrong."""
    if text == "auto":
        return schedule
    parts = text.split(",")
    default = [p for p in parts if ":" not in p]
    per_resolution = [p.partition(":") for p in parts if ":" in p]
    if len(default) > 1:
        raise ValueError("more than one batch size without a resolution")
    batch_size, batch_sizes = schedule.batch_size, dict(schedule.batch_sizes)
    if default == ["legacy"]:
        batch_size, batch_sizes = 16, dict(LEGACY_BATCH_SIZES)
    elif default:
        batch_size, batch_sizes = int(default[0]), {}
    batch_sizes.update({int(resolution): int(batch) for resolution, _, batch in per_resolution})
    return dataclasses.replace(schedule, batch_size=batch_size, batch_sizes=batch_sizes)


def device_memory_gib(device: torch.device) -> float | None:
    """Total memory of a CUDA device in GiB; None for the CPU and other devices (nothing to fit)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def smallest_gpu_memory_gib(accelerator: Accelerator, given_gib: float | None = None) -> float | None:
    """The memory the batch sizes must fit: `given_gib` (--gpu-memory-gib), else the smallest GPU's of all processes
    (one gather at the start; GPUs found by each process can differ), else None: not a CUDA device, which then
    holds for every process, so none waits in the gather (the CPU: nothing to fit)."""
    if given_gib is not None:
        return given_gib
    own = device_memory_gib(accelerator.device)
    if own is None or accelerator.num_processes == 1:
        return own
    return min(gather_object([own]))


def usable_gib(total_gib: float) -> float:
    """What the model's peak may reach on a GPU with `total_gib` of memory."""
    return USABLE_FRACTION * total_gib - RESERVED_GIB


def fitted_batch_sizes(
    schedule: ScheduleConfig,  # the schedule whose batch sizes are the upper bounds
    memory: PeakMemory,  # the networks' memory model
    total_gib: float,  # memory of the smallest GPU in use
    processes: int,  # the global batch is split evenly over them
    mixed_precision: str,  # "no", "fp16" or "bf16"
) -> dict[int, int]:
    """Per resolution of the schedule: its batch where the predicted peak fits, else the largest multiple of
    `processes` below it that fits; ValueError where not even one image per process fits."""
    budget = usable_gib(total_gib)
    fitted = {}
    for resolution in resolutions(schedule.min_resolution, schedule.max_resolution):
        wanted = schedule.batch_size_at(resolution)
        images = -(-wanted // processes)  # the most any process holds
        if memory.peak_gib(resolution, images, mixed_precision) <= budget:
            fitted[resolution] = wanted  # fits: kept, even where the processes cannot split it (refused later)
            continue
        while images > 1 and memory.peak_gib(resolution, images, mixed_precision) > budget:
            images -= 1
        if memory.peak_gib(resolution, images, mixed_precision) > budget:
            raise ValueError(
                f"one image per process at {resolution}x{resolution} needs about "
                f"{memory.peak_gib(resolution, 1, mixed_precision):.1f} GiB, more than the "
                f"{budget:.1f} GiB usable of a {total_gib:.1f} GiB GPU; train to a lower --res"
                + (" or with --mixed-precision bf16" if mixed_precision == "no" else "")
            )
        fitted[resolution] = images * processes
    return fitted


def fit_schedule(
    schedule: ScheduleConfig,  # upper bounds, as resolved from the preset and the flags
    preset_name: str,  # whose memory model applies
    total_gib: float | None,  # memory of the smallest GPU; None: no limit (CPU)
    processes: int,
    mixed_precision: str,
) -> tuple[ScheduleConfig, str]:
    """The schedule with its batch sizes fitted to the GPU (`--batch auto`), and a line saying what was done."""
    memory = preset(preset_name).memory
    if total_gib is None or memory is None:
        reason = "no GPU memory to fit" if total_gib is None else f"no memory model for preset {preset_name}"
        return schedule, f"batch sizes as the preset's ({reason})"
    fitted = fitted_batch_sizes(schedule, memory, total_gib, processes, mixed_precision)
    lowered = {r: b for r, b in fitted.items() if b != schedule.batch_size_at(r)}
    changes = ", ".join(f"{r}: {b}" for r, b in lowered.items()) or "none lowered"
    precision = "float32" if mixed_precision == "no" else mixed_precision
    line = f"batch sizes fitted to {total_gib:.1f} GiB per GPU ({precision}, {processes} process(es)): {changes}"
    return dataclasses.replace(schedule, batch_sizes={**schedule.batch_sizes, **lowered}), line


def choose_batch_sizes(
    schedule: ScheduleConfig,  # as resolved from the preset, --config and the flags
    preset_name: str,  # whose memory model applies
    auto: bool,  # --batch auto (or none given): fit; else the schedule's sizes were given explicitly
    total_gib: float | None,  # memory of the smallest GPU in use; None on the CPU
    processes: int,
    mixed_precision: str,
    resumed_schedule: dict[str, Any] | None = None,  # the schedule a resumed checkpoint was trained with
) -> tuple[ScheduleConfig, list[str], list[str]]:
    """The batch sizes to train with, a line saying how they were chosen, and a warning for each resolution whose
    batch the memory model says will not fit (never for fitted ones).

    auto: fitted to the GPU, or on resume the run's own (fitting again on other GPUs or another number of processes
    would change the training, and the checkpoint would rightly be refused). Explicit sizes are kept. ValueError
    where not even one image per process fits.
    """
    if auto and resumed_schedule is None:
        fitted, line = fit_schedule(schedule, preset_name, total_gib, processes, mixed_precision)
        return fitted, [line], []
    notes = []
    if auto:
        schedule = dataclasses.replace(  # checked by checkpoint.saved_schedule: ints, resolutions as JSON keys
            schedule,
            batch_size=resumed_schedule["batch_size"],
            batch_sizes={int(r): b for r, b in resumed_schedule["batch_sizes"].items()},
        )
        notes.append("batch sizes as the resumed run's (--batch auto)")
    if total_gib is None:
        return schedule, notes, []
    usable = f"{usable_gib(total_gib):.1f} GiB usable of a {total_gib:.1f} GiB GPU"
    overflows = predicted_overflows(schedule, preset_name, total_gib, processes, mixed_precision)
    return schedule, notes, [f"{line}, more than the {usable}" for line in overflows]


def predicted_overflows(
    schedule: ScheduleConfig, preset_name: str, total_gib: float, processes: int, mixed_precision: str
) -> list[str]:
    """'batch B at RxR: about P GiB' for each resolution whose batch the model says will not fit (explicit --batch)."""
    memory = preset(preset_name).memory
    if memory is None:
        return []
    budget = usable_gib(total_gib)
    overflows = []
    for resolution in resolutions(schedule.min_resolution, schedule.max_resolution):
        batch = schedule.batch_size_at(resolution)
        peak = memory.peak_gib(resolution, -(-batch // processes), mixed_precision)  # the most any process holds
        if peak > budget:
            overflows.append(f"batch {batch} at {resolution}x{resolution}: about {peak:.1f} GiB per process")
    return overflows


# GPUs by the memory torch reports for them (GiB), for the table of docs/training.md.
GPU_MEMORY_GIB = {
    "V100 16GB": 15.8,
    "A10 24GB": 22.0,
    "A100 40GB": 39.4,
    "L40S 48GB": 44.4,
    "A100/H100 80GB": 79.1,
    "H100 NVL 94GB": 93.1,
    "H200 141GB": 139.8,
}


def memory_table(preset_name: str, mixed_precision: str) -> list[str]:
    """A markdown table of the `--batch auto` sizes of a preset, one row per GPU memory size (docs/training.md)."""
    schedule = ScheduleConfig.for_preset(preset_name)
    memory = preset(preset_name).memory
    assert memory is not None, f"preset {preset_name} has no memory model"
    high = [r for r in resolutions(schedule.min_resolution, schedule.max_resolution) if r >= 128]
    rows = [
        f"| GPU (GiB) | {' | '.join(f'{r}' for r in high)} |",
        "|---" * (len(high) + 1) + "|",
    ]
    for name, size in GPU_MEMORY_GIB.items():
        fitted = fitted_batch_sizes(schedule, memory, size, 1, mixed_precision)
        rows.append(f"| {name} ({size:g}) | {' | '.join(str(fitted[r]) for r in high)} |")
    return rows


def _print_tables() -> None:
    """`python -m progressive.train.batches`: the tables of docs/training.md."""
    for precision in ("bf16", "no"):
        print(f"celebahq, one process, mixed precision {precision}:")
        print("\n".join(memory_table("celebahq", precision)))


if __name__ == "__main__":
    _print_tables()

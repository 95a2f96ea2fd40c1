"""`triangle-train --dry-run`: the resolved configuration, the phase table and, from measured speeds
(`launch/benchmark_train.py --json`), the projected training time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from progressive.cli.checks import BadInput
from progressive.train.config import TrainConfig
from progressive.train.schedule import schedule_table


def dry_run_precision(precision: str) -> str:
    """The mixed precision a dry run assumes (--mixed-precision, else `accelerate launch`'s setting); BadInput
    for one that Accelerate would not run."""
    precision = precision.lower()
    if precision not in ("no", "fp16", "bf16"):
        raise BadInput(f"mixed precision {precision!r} (ACCELERATE_MIXED_PRECISION) is not no, fp16 or bf16")
    return precision


def read_throughput(path: str) -> dict[str, Any]:
    """A `benchmark_train.py --json` file, its per-resolution tables keyed by int; BadInput naming what is wrong."""
    try:
        throughput = json.loads(Path(path).read_text())
        throughput["images_per_second"] = {int(r): float(v) for r, v in throughput["images_per_second"].items()}
        throughput["batch_sizes"] = {int(r): int(b) for r, b in throughput.get("batch_sizes", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise BadInput(f"--throughput {path}: not a benchmark_train.py --json file ({error})") from error
    return throughput


def print_dry_run(config: TrainConfig, throughput: dict | None = None) -> None:
    """The configuration, the schedule and, given measured images/s per resolution, the projected wall time."""
    print(config.to_json())
    speed = throughput["images_per_second"] if throughput else {}
    measured_batch = throughput["batch_sizes"] if throughput else {}
    other_batch = set()  # resolutions whose speed was measured at another batch than this schedule's
    print(
        f"\n{'phase':>6} {'res':>5} {'batch':>6} {'start kimg':>11} {'end kimg':>9}  learning rates at start (E, I, G)"
        + ("   hours" if speed else "")
    )
    total_seconds, unmeasured = 0.0, set()
    for stage in schedule_table(config.schedule, config.objective):
        end_images = min(stage.phase_end_images or config.total_images, config.total_images)
        end = f"{stage.phase_end_images / 1000:9.3f}" if stage.phase_end_images is not None else "      end"
        rates = ", ".join(f"{stage.learning_rates[n]:.2e}" for n in ("energy", "inference", "generator"))
        hours = ""
        if speed:
            images = max(end_images - stage.phase_start_images, 0)
            if stage.resolution in speed:
                total_seconds += images / speed[stage.resolution]
                hours = f"  {images / speed[stage.resolution] / 3600:6.2f}"
                if measured_batch.get(stage.resolution, stage.batch_size) != stage.batch_size:
                    other_batch.add(stage.resolution)
                    hours += f" (measured at batch {measured_batch[stage.resolution]})"
            elif images:
                unmeasured.add(stage.resolution)
                hours = "       ?"
        print(
            f"{stage.phase:>6} {stage.resolution:5d} {stage.batch_size:6d} {stage.phase_start_images / 1000:11.3f}"
            f" {end}  {rates}{hours}"
        )
    print(f"\ntraining length: {config.total_images / 1000:.1f} kimg")
    if speed:
        where = (
            f"{throughput.get('processes', 1)} x {throughput.get('device', '?')}, {throughput.get('mixed_precision')}"
        )
        missing = f" (without resolutions {sorted(unmeasured)}, not measured)" if unmeasured else ""
        if other_batch:
            missing += f"; resolutions {sorted(other_batch)} measured at other batch sizes"
        print(f"projected training time at the measured speed ({where}): {total_seconds / 3600:.1f} h{missing}")
        scaled = ", ".join(f"{n}x: {total_seconds / 3600 / n:.1f} h" for n in (2, 4, 8, 16))
        print(f"on N times as many GPUs, scaling ideally (a lower bound on time): {scaled}")
        print("(iterations only: snapshots, checkpoints and metrics add to it)")

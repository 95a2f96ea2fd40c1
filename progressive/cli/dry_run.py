"""`triangle-train --dry-run`: the resolved configuration, the phase table and, from measured speeds
(`launch/benchmark_train.py --json`), the projected training time; as text, or with --json as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from progressive.cli.checks import BadInput
from progressive.train.config import TrainConfig
from progressive.train.schedule import schedule_table, stage_at


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


def dry_run_plan(config: TrainConfig, throughput: dict | None = None, notes: list[str] | None = None) -> dict:
    """What a dry run reports, as JSON values: the resolved configuration, one entry per phase (with its projected
    hours where `throughput` measured its resolution), the length, the projected total and the batch notes."""
    speed = throughput["images_per_second"] if throughput else {}
    measured_batch = throughput["batch_sizes"] if throughput else {}
    phases = []
    for stage in schedule_table(config.schedule, config.optimizer):
        end_images = min(stage.phase_end_images or config.total_images, config.total_images)
        images = max(end_images - stage.phase_start_images, 0)
        phase = {
            "phase": stage.phase,
            "resolution": stage.resolution,
            "batch_size": stage.batch_size,
            "start_kimg": stage.phase_start_images / 1000,
            "end_kimg": None if stage.phase_end_images is None else stage.phase_end_images / 1000,  # None: the end
            "learning_rates": dict(stage.learning_rates),
        }
        if speed:
            phase["hours"] = images / speed[stage.resolution] / 3600 if stage.resolution in speed else None
            phase["trained_images"] = images
            phase["measured_batch_size"] = measured_batch.get(stage.resolution, stage.batch_size)
        phases.append(phase)
    plan: dict[str, Any] = {"config": config.to_dict(), "phases": phases, "training_kimg": config.total_images / 1000}
    # The rates a phase's start does not show: the decay and the ramp-down run on within the last, open phase.
    at_end = stage_at(config.schedule, config.total_images, config.optimizer)
    plan["learning_rates_at_end"] = dict(at_end.learning_rates)
    if speed:
        plan["projected_hours"] = sum(p["hours"] for p in phases if p["hours"] is not None)
        plan["unmeasured_resolutions"] = sorted(
            {p["resolution"] for p in phases if p["hours"] is None and p["trained_images"]}
        )
        plan["throughput"] = {key: throughput.get(key) for key in ("device", "processes", "mixed_precision")}
    plan["notes"] = list(notes or []) + rampdown_notes(config)
    return plan


def rampdown_notes(config: TrainConfig) -> list[str]:
    """Where the learning-rate ramp-down lies against the training's length, as a line for the dry run."""
    optimizer = config.optimizer
    if optimizer.lr_rampdown_kimg <= 0:
        return []
    start, end = optimizer.lr_rampdown_start_kimg, optimizer.lr_rampdown_start_kimg + optimizer.lr_rampdown_kimg
    floor = optimizer.lr_rampdown_floor
    where = f"learning rates ramp down from {start:g} to {end:g} kimg, to {floor:g} of their value"
    length = config.total_images / 1000
    if start >= length:
        return [f"{where}: after the training's end ({length:g} kimg), so never in this run"]
    if end > length:
        return [f"{where}: the training ends ({length:g} kimg) before the ramp-down does"]
    return [where]


def print_dry_run(plan: dict) -> None:
    """`dry_run_plan`'s report as text: the configuration, the phase table and the projected wall time."""
    print(json.dumps(plan["config"], indent=2, sort_keys=True))
    projected = "projected_hours" in plan
    print(
        f"\n{'phase':>6} {'res':>5} {'batch':>6} {'start kimg':>11} {'end kimg':>9}  learning rates at start (E, I, G)"
        + ("   hours" if projected else "")
    )
    other_batch = set()  # resolutions whose speed was measured at another batch than this schedule's
    for phase in plan["phases"]:
        end = f"{phase['end_kimg']:9.3f}" if phase["end_kimg"] is not None else "      end"
        rates = ", ".join(f"{phase['learning_rates'][n]:.2e}" for n in ("energy", "inference", "generator"))
        hours = ""
        if projected and phase["hours"] is not None:
            hours = f"  {phase['hours']:6.2f}"
            if phase["measured_batch_size"] != phase["batch_size"]:
                other_batch.add(phase["resolution"])
                hours += f" (measured at batch {phase['measured_batch_size']})"
        elif projected and phase["trained_images"]:
            hours = "       ?"
        print(
            f"{phase['phase']:>6} {phase['resolution']:5d} {phase['batch_size']:6d} {phase['start_kimg']:11.3f}"
            f" {end}  {rates}{hours}"
        )
    print(f"\ntraining length: {plan['training_kimg']:.1f} kimg")
    rates = ", ".join(f"{plan['learning_rates_at_end'][n]:.2e}" for n in ("energy", "inference", "generator"))
    print(f"learning rates at the end (E, I, G): {rates}")
    if projected:
        measured = plan["throughput"]
        where = f"{measured['processes'] or 1} x {measured['device'] or '?'}, {measured['mixed_precision']}"
        unmeasured = plan["unmeasured_resolutions"]
        missing = f" (without resolutions {unmeasured}, not measured)" if unmeasured else ""
        if other_batch:
            missing += f"; resolutions {sorted(other_batch)} measured at other batch sizes"
        total = plan["projected_hours"]
        print(f"projected training time at the measured speed ({where}): {total:.1f} h{missing}")
        scaled = ", ".join(f"{n}x: {total / n:.1f} h" for n in (2, 4, 8, 16))
        print(f"on N times as many GPUs, scaling ideally (a lower bound on time): {scaled}")
        print("(iterations only: snapshots, checkpoints and metrics add to it)")
    if plan["notes"]:
        print("\n".join(plan["notes"]))

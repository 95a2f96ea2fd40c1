"""Train the divergence triangle progressively: `accelerate launch launch/train.py --res 1024 --data celebahq.lmdb`
(or `triangle-train`, the same program, installed as a console script).

Works under `accelerate launch` (any number of processes, --mixed_precision no|fp16|bf16) and as plain
`python launch/train.py` (one process, CPU or GPU). Without --data it trains on built-in synthetic shapes.
Every objective, optimiser and schedule value can be overridden (see --help); the resolved configuration is written
to the run directory as config.json. A grayscale dataset (LMDB metadata `channels` 1) trains a generator that draws
gray images (docs/architecture.md, "Grayscale"). docs/training.md describes the options and the presets.

Exit codes: 0 done, 1 failed (one line; e.g. a checkpoint write on a full disk), 2 bad input (nothing written before
the start, or a damaged image found in training), 3 stopped on repeated non-finite gradients.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any

from progressive.cli.checks import EXIT_BAD_INPUT, EXIT_SIGNAL_BASE, BadInput
from progressive.cli.dry_run import dry_run_plan, dry_run_precision, print_dry_run, read_throughput
from progressive.cli.failures import failure_report, is_main_process, report
from progressive.objective import DEFAULT_RECIPE, RECIPES, TriangleConfig
from progressive.presets import PRESETS, default_preset
from progressive.train.checkpoint import CheckpointError, ConfigurationMismatch
from progressive.train.compile import COMPILE_MODES
from progressive.train.config import SECTIONS, TrainConfig, load_config_file, resolve_config
from progressive.train.optim import OptimizerConfig
from progressive.train.schedule import ScheduleConfig, images_or_per_resolution, per_resolution
from progressive.train.session import fit_batches, open_run, with_data_channels
from progressive.train.trackers import parse_report_to

# Flags that are not TrainConfig values (they choose what to run, not what is trained).
COMMAND_ONLY = (
    "res",
    "preset",
    "recipe",
    "resume",
    "batch",
    "gpu_memory_gib",
    "config",
    "dry_run",
    "json",
    "throughput",
    "mixed_precision",
)
# TrainConfig numbers whose flag is their name (--tick-kimg 4); docs/training.md says what each does.
_PLAIN_RUN_VALUES = (
    "workers ema_kimg ema_rampup tick_kimg progress_seconds snapshot_kimg checkpoint_kimg keep_checkpoints "
    "synthetic_images grid_images max_nonfinite collective_timeout_min"
).split()
# Schedule values set by other options (--res sets max_resolution, --batch the batch sizes).
_SCHEDULE_VIA_OTHER_OPTIONS = {"max_resolution", "batch_size", "batch_sizes"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triangle-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--res", type=int, help="final resolution, a power of two 4..1024 (default: the preset's)")
    parser.add_argument("--data", help="dataset LMDB built by `python -m datasets_prep build` (default: synthetic)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="model preset (default: by --res, see docs)")
    parser.add_argument(
        "--channel-base",
        type=int,
        help="progressive presets: channel_base // R channels at resolution R (default: the preset's; demo 512)",
    )
    parser.add_argument(
        "--channel-max", type=int, help="progressive presets: most channels at any resolution (default: preset's)"
    )
    parser.add_argument(
        "--latent-dim", type=int, help="progressive presets: dimension of z (default: the preset's; demo 64)"
    )
    parser.add_argument(
        "--recipe",
        help=f"objective recipe, one of {', '.join(RECIPES)} (default: {DEFAULT_RECIPE}; docs/objective.md)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        help="autocast precision (default: Accelerate's configuration, e.g. accelerate launch --mixed_precision)",
    )
    parser.add_argument(
        "--report-to",
        dest="report_to",
        help="trackers: tensorboard (default), wandb, aim, mlflow, comet_ml, ..., a comma list, all, or none",
    )
    parser.add_argument(
        "--tracker-project", dest="tracker_project", help="the trackers' project (default: divergence-triangle)"
    )
    parser.add_argument("--out", help="root of the auto-numbered run directories (default: runs)")
    parser.add_argument("--resume", help="`latest`, a run directory or a checkpoint file")
    parser.add_argument("--kimg", type=float, help="training length in thousands of real images")
    parser.add_argument(
        "--batch",
        help="global batch: auto (default: the preset's, lowered where the GPU's memory is short), legacy "
        "(progressive GANs' 16 GB table), N for every resolution and/or R:N,R:N per resolution",
    )
    parser.add_argument(
        "--gpu-memory-gib",
        type=float,
        help="memory per GPU that --batch auto fits (default: the smallest GPU's own; none on the CPU)",
    )
    parser.add_argument("--seed", type=int, help="global seed")
    parser.add_argument("--config", help="JSON configuration (e.g. a run's config.json), applied before the flags")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved configuration and schedule, exit")
    parser.add_argument(
        "--json", action="store_true", help="with --dry-run: one JSON object (config, phases, notes) on stdout"
    )
    parser.add_argument(
        "--throughput",
        help="with --dry-run: images/s per resolution (benchmark_train.py --json) to project the wall time",
    )
    run = parser.add_argument_group("run")
    for name in _PLAIN_RUN_VALUES:
        kind = int if TrainConfig.__dataclass_fields__[name].type == "int" else float
        run.add_argument(_flag(name), dest=name, type=kind, help=f"TrainConfig.{name}")
    run.add_argument("--hflip", dest="hflip", action=argparse.BooleanOptionalAction, help="mirror augmentation")
    run.add_argument(
        "--channels-last",
        dest="channels_last",
        action=argparse.BooleanOptionalAction,
        help="NHWC memory format (GPUs: faster convolutions at high resolution; same results)",
    )
    run.add_argument(
        "--compile",
        dest="compile",
        choices=COMPILE_MODES,
        help="torch.compile the networks (GPUs: fewer kernel launches; a compilation at each stage change)",
    )
    run.add_argument(
        "--metrics",
        type=lambda s: [m for m in s.split(",") if m],
        help="metrics during training, e.g. recon,swd,energy (fid,kid,is need --inception)",
    )
    run.add_argument("--metric-kimg", dest="metric_kimg", type=float, help="evaluate --metrics every N kimg")
    run.add_argument("--metric-images", dest="metric_images", type=int, help="images per evaluation")
    run.add_argument("--inception", help="TorchScript Inception weights for fid/is")
    run.add_argument(
        "--debug-nan-iterations",
        type=lambda s: [int(v) for v in s.split(",")],
        help="testing aid: replace these iterations' real batches by NaN",
    )
    for section, fields in (("objective", TriangleConfig), ("optimizer", OptimizerConfig)):
        group = parser.add_argument_group(f"{section} (docs/objective.md)")
        for f in dataclasses.fields(fields):
            kind = {"str": str, "int": int, "float": float, "float | None": float}[str(f.type)]
            group.add_argument(_flag(f.name), dest=f"{section}.{f.name}", type=kind, help=f"default {f.default!r}")
    schedule = parser.add_argument_group("schedule (docs/training.md); per-resolution values as R:V,R:V")
    for f in dataclasses.fields(ScheduleConfig):
        if f.name not in _SCHEDULE_VIA_OTHER_OPTIONS:
            kind = per_resolution if f.name == "lr_multipliers" else images_or_per_resolution
            schedule.add_argument(_flag(f.name), dest=f"schedule.{f.name}", type=kind)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset defaults, then --config, then the flags given on the command line (train/config.py resolve_config)."""
    values: dict[str, Any] = {section: {} for section in SECTIONS}
    for key, value in vars(args).items():
        if value is not None and key not in COMMAND_ONLY:
            section, _, name = key.rpartition(".")
            (values[section] if section else values)[name] = value
    if args.res is not None:
        values["resolution"] = args.res
    if args.gpu_memory_gib is not None and not 0 < args.gpu_memory_gib < math.inf:
        raise BadInput(f"--gpu-memory-gib must be a positive number of GiB, got {args.gpu_memory_gib}")
    try:
        file_values = load_config_file(args.config) if args.config else {}
        config = resolve_config(args.preset or default_preset(args.res), args.recipe, file_values, values)
        parse_report_to(config.report_to)
    except (ValueError, TypeError) as error:
        raise BadInput(str(error)) from error
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    batch = args.batch or "auto"
    try:
        config = config_from_args(args)
        if args.dry_run:
            precision = dry_run_precision(args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no")
            config, lines = fit_batches(with_data_channels(config), batch, args.gpu_memory_gib, 1, precision)
            plan = dry_run_plan(config, read_throughput(args.throughput) if args.throughput else None, lines)
            if args.json:
                print(json.dumps(plan, indent=2, sort_keys=True))
            else:
                print_dry_run(plan)
            return 0
    except BadInput as error:
        return report(True, str(error), EXIT_BAD_INPUT)

    try:
        session = open_run(
            config,
            resume=args.resume,
            batch=batch,
            gpu_memory_gib=args.gpu_memory_gib,
            mixed_precision=args.mixed_precision,
        )
    except ConfigurationMismatch as error:
        hint = ""
        if args.batch and {"schedule.batch_size", "schedule.batch_sizes"} & set(error.changes):
            hint = " (without --batch, a resumed run keeps its batch sizes)"
        return report(is_main_process(), f"{error}{hint}", EXIT_BAD_INPUT)
    except (BadInput, CheckpointError) as error:
        return report(is_main_process(), str(error), EXIT_BAD_INPUT)
    from progressive.train.loop import Stopped

    with session:
        try:
            session.run()
        except Stopped as stop:
            return EXIT_SIGNAL_BASE + stop.signal_number
        except Exception as error:
            code, every_rank, message = failure_report(error, config)
            return report(every_rank or session.accelerator.is_main_process, message, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())

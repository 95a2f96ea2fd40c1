"""Train the divergence triangle progressively: `accelerate launch launch/train.py --res 1024 --data celebahq.lmdb`
(or `triangle-train`, the same program, installed as a console script).

Works under `accelerate launch` (any number of processes, --mixed_precision no|fp16|bf16) and as plain
`python launch/train.py` (one process, CPU or GPU). Without --data it trains on built-in synthetic shapes.
Every objective and schedule value can be overridden (see --help); the resolved configuration is written
to the run directory as config.json. A grayscale dataset (LMDB metadata `channels` 1) trains a generator that draws
gray images (docs/architecture.md, "Grayscale"). docs/training.md describes the options and the presets.

Exit codes: 0 done, 1 failed (one line; e.g. a checkpoint write on a full disk), 2 bad input (nothing written before
the start, or a damaged image found in training), 3 stopped on repeated non-finite gradients.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from datasets_prep.lmdb_format import DatasetFormatError
from datasets_prep.locking import DirectoryBusy, DirectoryLock
from progressive.cli.checks import EXIT_BAD_INPUT, EXIT_FAILED, BadInput, check_writable_folder
from progressive.cli.dry_run import dry_run_precision, print_dry_run, read_throughput
from progressive.nets.layers import is_power_of_two
from progressive.objective import DEFAULT_RECIPE, RECIPES, TriangleConfig
from progressive.presets import PRESETS, default_preset
from progressive.train.batches import choose_batch_sizes, smallest_gpu_memory_gib
from progressive.train.checkpoint import (
    CheckpointError,
    ConfigurationMismatch,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
    saved_schedule,
)
from progressive.train.compile import COMPILE_MODES
from progressive.train.config import TrainConfig, load_config_file, merge_config, preset_config
from progressive.train.run_directory import create_run_directory, lock_run_directory
from progressive.train.schedule import LEGACY_BATCH_SIZES, ScheduleConfig
from progressive.train.trackers import create_trackers, hyperparameters, parse_report_to

EXIT_NONFINITE = 3
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
    "throughput",
    "mixed_precision",
)
# Schedule values set by other options (--res sets max_resolution, --batch the batch sizes).
_SCHEDULE_VIA_OTHER_OPTIONS = {"max_resolution", "batch_size", "batch_sizes"}


def _table(text: str) -> dict[int, Any]:
    """'8:1000,16:2000' -> {8: 1000, 16: 2000}."""
    table = {}
    for item in text.split(","):
        key, _, value = item.partition(":")
        table[int(key)] = float(value) if "." in value else int(value)
    return table


def _int_or_table(text: str) -> int | dict[int, Any]:
    return _table(text) if ":" in text else int(text)


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
        "--throughput",
        help="with --dry-run: images/s per resolution (benchmark_train.py --json) to project the wall time",
    )
    run = parser.add_argument_group("run")
    for name, kind in [
        ("workers", int),
        ("ema_kimg", float),
        ("ema_rampup", float),
        ("tick_kimg", float),
        ("progress_seconds", float),
        ("snapshot_kimg", float),
        ("checkpoint_kimg", float),
        ("keep_checkpoints", int),
        ("synthetic_images", int),
        ("grid_images", int),
        ("max_nonfinite", int),
        ("collective_timeout_min", float),
    ]:
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
    objective = parser.add_argument_group("objective (docs/objective.md)")
    for f in dataclasses.fields(TriangleConfig):
        kind = {"str": str, "int": int, "float": float, "float | None": float}[str(f.type)]
        objective.add_argument(_flag(f.name), dest=f"objective.{f.name}", type=kind, help=f"default {f.default!r}")
    schedule = parser.add_argument_group("schedule (docs/training.md); per-resolution values as R:V,R:V")
    for f in dataclasses.fields(ScheduleConfig):
        if f.name not in _SCHEDULE_VIA_OTHER_OPTIONS:
            kind = _table if f.name == "lr_multipliers" else _int_or_table
            schedule.add_argument(_flag(f.name), dest=f"schedule.{f.name}", type=kind)
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Preset defaults, then --config, then the flags given on the command line."""
    preset = args.preset or default_preset(args.res)
    try:
        file_values = load_config_file(args.config) if args.config else {}
        # The recipe gives the objective's starting values; a --config file and the flags apply on top.
        config = preset_config(preset, args.recipe or file_values.get("recipe", DEFAULT_RECIPE))
        if file_values:
            config = merge_config(config, file_values)
    except (ValueError, TypeError) as error:
        raise BadInput(str(error)) from error
    values: dict[str, Any] = {}
    objective: dict[str, Any] = {}
    schedule: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None or key in COMMAND_ONLY:
            continue
        if key.startswith("objective."):
            objective[key.split(".", 1)[1]] = value
        elif key.startswith("schedule."):
            schedule[key.split(".", 1)[1]] = value
        else:
            values[key] = value
    if "lr_multipliers" in schedule:  # per-resolution entries change the preset's table, they do not replace it
        schedule["lr_multipliers"] = {**config.schedule.lr_multipliers, **schedule["lr_multipliers"]}
    if args.res is not None:
        values["resolution"] = args.res
    resolution = values.get("resolution", config.resolution)
    if not is_power_of_two(resolution) or not 4 <= resolution <= 1024:
        raise BadInput(f"--res must be a power of two between 4 and 1024, got {resolution}")
    schedule["max_resolution"] = resolution
    if args.gpu_memory_gib is not None and not 0 < args.gpu_memory_gib < math.inf:
        raise BadInput(f"--gpu-memory-gib must be a positive number of GiB, got {args.gpu_memory_gib}")
    if args.batch and args.batch != "auto":
        parts = args.batch.split(",")
        default = [p for p in parts if ":" not in p]
        per_resolution = [p for p in parts if ":" in p]
        try:
            if len(default) > 1:
                raise ValueError("more than one batch size without a resolution")
            if default == ["legacy"]:
                schedule["batch_size"] = 16
                schedule["batch_sizes"] = dict(LEGACY_BATCH_SIZES)
            elif default:
                schedule["batch_size"] = int(default[0])
                schedule["batch_sizes"] = {}
            if per_resolution:
                base = schedule.get("batch_sizes", config.schedule.batch_sizes)
                schedule["batch_sizes"] = {**base, **_table(",".join(per_resolution))}
        except ValueError as error:
            raise BadInput(f"--batch {args.batch!r} is not auto, legacy, N or R:N,R:N ({error})") from error
    from progressive.eval.metrics import METRIC_NAMES, NEEDS_CLASSIFIER

    unknown = [m for m in values.get("metrics", []) if m not in METRIC_NAMES]
    if unknown:
        raise BadInput(f"unknown metrics {unknown}; expected some of {', '.join(METRIC_NAMES)}")
    judged = [m for m in values.get("metrics", []) if m in NEEDS_CLASSIFIER]
    if judged:  # the trainer loads no classifier: these run after training, with triangle-evaluate
        raise BadInput(f"--metrics {','.join(judged)} needs the domain classifier; run it with triangle-evaluate")
    try:
        parse_report_to(values.get("report_to", config.report_to))
    except ValueError as error:
        raise BadInput(str(error)) from error
    values["objective"] = objective
    values["schedule"] = schedule
    try:
        return merge_config(config, values)
    except (ValueError, TypeError) as error:
        raise BadInput(str(error)) from error


def data_channels(config: TrainConfig) -> int:
    """The training data's image channels: 1 for a grayscale LMDB (metadata `channels`; absent in LMDBs built before
    grayscale existed, which are colour), 3 for colour and for the synthetic shapes; BadInput for an unreadable LMDB."""
    if config.data is None:
        return 3
    from datasets_prep.lmdb_format import read_metadata

    try:
        # read_metadata checks the field (1 or 3) and fills in 3 for LMDBs built before it existed.
        return read_metadata(config.data)["channels"]
    except ValueError as error:
        raise BadInput(str(error)) from error


def with_data_channels(config: TrainConfig) -> TrainConfig:
    """`config` with the image channels of its data: they follow the data, whatever a --config file said."""
    return dataclasses.replace(config, image_channels=data_channels(config))


def check_resumed_channels(state: dict[str, Any], config: TrainConfig, checkpoint_path: Path) -> None:
    """BadInput when a checkpoint trained on grayscale images is resumed on colour data, or the reverse: its
    generator draws the other number of channels. Checked before the networks are built, with a plainer message
    than the configuration comparison's."""
    try:
        saved = json.loads(state["config"]).get("image_channels", 3)  # older checkpoints: colour
    except (KeyError, TypeError, ValueError, AttributeError):
        return  # a damaged checkpoint: refused with its reason when it is loaded
    if saved != config.image_channels:
        kinds = {1: "grayscale (1 channel)", 3: "colour (3 channels)"}
        data = config.data or "the synthetic shapes"
        raise BadInput(
            f"{checkpoint_path} was trained on {kinds.get(saved, saved)} images but the data given ({data}) is "
            f"{kinds[config.image_channels]}; resume it on the dataset it was trained on"
        )


def open_datasets(config: TrainConfig):
    """(training set, held-out set or None) for the configuration, checked against the schedule's resolutions."""
    from progressive.nets.layers import resolutions

    needed = resolutions(config.schedule.min_resolution, config.schedule.max_resolution)
    if config.data is None:
        from progressive.data import SyntheticShapesDataset

        return SyntheticShapesDataset(config.synthetic_images, needed[0], seed=config.seed), None
    from datasets_prep.lmdb_format import read_metadata
    from datasets_prep.reader import LMDBImageDataset

    try:
        metadata = read_metadata(config.data)
    except ValueError as error:
        raise BadInput(str(error)) from error
    available = sorted(metadata["resolutions"])
    missing = [r for r in needed if r not in available]
    if missing:
        remedies = []
        if min(available) > needed[0] and max(available) >= needed[-1]:
            remedies.append(f"start the schedule there with --min-resolution {min(available)}")
        if max(available) < needed[-1]:
            remedies.append(f"train to --res {max(available)}, or rebuild with --max-res {needed[-1]}")
        if not remedies:
            remedies.append(f"rebuild it with --min-res {needed[0]} --max-res {needed[-1]}")
        raise BadInput(
            f"--res {config.resolution} needs resolutions {needed} but {config.data} has {available}; "
            + "; ".join(remedies)
        )
    try:
        train = LMDBImageDataset(config.data, needed[0], split="train")
        holdout = (
            LMDBImageDataset(config.data, needed[0], split="holdout") if metadata["count"].get("holdout") else None
        )
    except ValueError as error:
        raise BadInput(str(error)) from error
    return train, holdout


def check_batches(config: TrainConfig, processes: int) -> None:
    from progressive.nets.layers import resolutions

    for resolution in resolutions(config.schedule.min_resolution, config.schedule.max_resolution):
        batch = config.schedule.batch_size_at(resolution)
        if batch % processes:
            raise BadInput(
                f"batch size {batch} at {resolution}x{resolution} is not divisible by the {processes} processes; "
                "set --batch to a multiple"
            )


def fit_batches(
    config: TrainConfig,  # as resolved from the preset, --config and the flags
    batch_flag: str | None,  # --batch as given
    total_gib: float | None,  # memory of the smallest GPU in use; None on the CPU
    processes: int,
    mixed_precision: str,
    resumed_schedule: dict[str, Any] | None = None,  # the schedule a resumed checkpoint was trained with
) -> tuple[TrainConfig, list[str]]:
    """The configuration with the batch sizes to train with (train/batches.py), and the lines to log about them."""
    auto = not batch_flag or batch_flag == "auto"
    try:
        schedule, notes, overflows = choose_batch_sizes(
            config.schedule, config.preset, auto, total_gib, processes, mixed_precision, resumed_schedule
        )
    except ValueError as error:
        raise BadInput(f"--batch auto: {error}") from error
    flag = "auto" if auto else batch_flag
    return dataclasses.replace(config, schedule=schedule), notes + [f"warning: --batch {flag}: {w}" for w in overflows]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = resolve_config(args)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        precision = args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
        try:
            config = with_data_channels(config)
            config, lines = fit_batches(config, args.batch, args.gpu_memory_gib, 1, dry_run_precision(precision))
            throughput = read_throughput(args.throughput) if args.throughput else None
        except BadInput as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print_dry_run(config, throughput)
        print("\n".join(lines))
        return 0

    # Heavy imports after argument checks, so --help and bad flags answer at once.
    from accelerate import Accelerator
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        InitProcessGroupKwargs,
        broadcast_object_list,
    )

    from progressive.train.loop import Trainer

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,  # None: from `accelerate launch` / `accelerate config` / the environment
        log_with=None,  # trackers are created with the run directory (train_in)
        project_dir=config.out,  # replaced by the run directory once every input has been checked
        kwargs_handlers=[
            # Inactive higher-resolution blocks get no gradient at low resolution.
            DistributedDataParallelKwargs(find_unused_parameters=True),
            # NCCL's default of 10 minutes is short for a checkpoint or an evaluation on the main process.
            InitProcessGroupKwargs(timeout=timedelta(minutes=config.collective_timeout_min)),
        ],
    )
    main_process = accelerator.is_main_process

    total_gib = smallest_gpu_memory_gib(accelerator, args.gpu_memory_gib)
    try:
        checkpoint_path = resolve_resume(args.resume, Path(config.out)) if args.resume else None
        # Read onto the CPU: load_state_dict copies each tensor to its parameter's device, and a checkpoint
        # then resumes on any device and number of processes (torch cannot map to a multi-process "cpu:0").
        state = load_checkpoint(checkpoint_path, map_location="cpu") if checkpoint_path is not None else None
        config = with_data_channels(config)  # the networks are built for the data's channels
        if state is not None:
            check_resumed_channels(state, config, checkpoint_path)
        config, batch_notes = fit_batches(
            config,
            args.batch,
            total_gib,
            accelerator.num_processes,
            accelerator.mixed_precision,
            resumed_schedule=saved_schedule(state) if state is not None else None,
        )
        check_batches(config, accelerator.num_processes)
        if config.image_channels == 1:
            batch_notes.append("grayscale data (metadata channels 1): the generator draws one channel, shown as three")
        if {"fid", "kid", "is"} & set(config.metrics):
            from progressive.eval.inception import load_inception

            load_inception(config.inception, "cpu")  # fails now, with how to get the weights, not hours in
        dataset, holdout = open_datasets(config)
        trainer = Trainer(config, accelerator, dataset, run_dir=None, holdout=holdout)
        if checkpoint_path is not None:
            try:
                trainer.load_state_dict(state, checkpoint_path)
            except ConfigurationMismatch as error:
                if args.batch and {"schedule.batch_size", "schedule.batch_sizes"} & set(error.changes):
                    raise CheckpointError(f"{error} (without --batch, a resumed run keeps its batch sizes)") from error
                raise
            except (KeyError, RuntimeError, TypeError) as error:  # a missing entry, a tensor of another shape
                detail = (str(error).splitlines() or [""])[0]
                raise CheckpointError(
                    f"checkpoint {checkpoint_path} is damaged or incomplete: {type(error).__name__}: {detail}"
                ) from error
        if main_process:
            check_writable_folder(Path(config.out), "--out", config.out)
    except (BadInput, CheckpointError, ValueError) as error:
        accelerator.end_training()  # after a collective, a process that exits with its group alive is aborted
        return report(main_process, str(error), EXIT_BAD_INPUT)

    # Only now, with every input checked, is anything written. The main process picks the run directory and
    # locks it (or learns that another run holds it); every process learns the outcome.
    outcome: list[Any] = [None, None]  # [run directory, message of a refusal]
    lock = None
    if main_process:
        try:
            run_dir, lock = claim_run_directory(config, checkpoint_path)
            outcome[0] = str(run_dir)
        except DirectoryBusy as error:
            outcome[1] = f"run directory {error}"
        except OSError as error:  # the other processes wait in the broadcast below: tell them, do not raise
            outcome[1] = f"--out {config.out}: cannot create the run directory ({error})"
    broadcast_object_list(outcome)
    if outcome[1] is not None:
        accelerator.end_training()
        return report(main_process, outcome[1], EXIT_BAD_INPUT)
    try:
        return train_in(Path(outcome[0]), trainer, config, accelerator, checkpoint_path, batch_notes)
    finally:
        if lock is not None:
            lock.release()


def claim_run_directory(config: TrainConfig, checkpoint_path: Path | None) -> tuple[Path, DirectoryLock]:
    """The run directory to write in, locked: the resumed checkpoint's own run, else a new one under --out."""
    if checkpoint_path is not None and checkpoint_path.parent.name == "checkpoints":
        run_dir = checkpoint_path.parent.parent
    else:  # a new run, or a checkpoint file kept outside any run directory: a new run directory under --out
        run_dir = create_run_directory(Path(config.out), f"{config.preset}-{config.resolution}")
    return run_dir, lock_run_directory(run_dir)


def train_in(
    run_dir: Path,
    trainer,
    config: TrainConfig,
    accelerator,
    checkpoint_path: Path | None,
    notes: list[str],  # lines to log once the run directory's log exists (the batch sizes' fitting)
) -> int:
    """Train in `run_dir` (chosen and locked by the main process) until done, stopped or failed; the exit code."""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    from progressive.data import WorkerLost
    from progressive.train.loop import NonFiniteError, Stopped

    main_process = accelerator.is_main_process
    log = logging.getLogger("progressive.train")
    trainer.run_dir = run_dir
    _setup_logging(trainer.run_dir, main_process)
    if main_process:
        (trainer.run_dir / "config.json").write_text(config.to_json())
        for path in remove_stale_temporaries(run_dir / "checkpoints"):  # safe: this process holds the lock
            log.info("removed %s, left by a checkpoint save that was interrupted", path.name)
        log.info(
            "run directory %s; %d process(es), device %s, mixed precision %s%s",
            trainer.run_dir,
            accelerator.num_processes,
            accelerator.device,
            accelerator.mixed_precision,
            f"; resumed from {checkpoint_path} at {trainer.state.images_shown / 1000:.2f} kimg"
            if checkpoint_path
            else "",
        )
    accelerator.project_configuration.set_directories(trainer.run_dir)
    accelerator.project_configuration.logging_dir = str(trainer.run_dir)
    start_trackers(accelerator, config, trainer.run_dir)
    if main_process:
        for line in [*notes, *trainer.describe()]:
            log.info("%s", line)
    try:
        with trainer.stop_on_signals():
            trainer.run()
    except NonFiniteError as error:
        accelerator.end_training()
        return report(main_process, str(error), EXIT_NONFINITE)
    except DatasetFormatError as error:  # a damaged image, found by whichever rank reads it: that rank reports
        return report(True, original_message(error), EXIT_BAD_INPUT)
    except FailOnRecompileLimitHit as error:  # --compile: a network needed more compilations than budgeted
        detail = (str(error).strip().splitlines() or [""])[0]
        message = f"--compile {config.compile}: recompilation budget exhausted ({detail}); checkpoints written are "
        return report(main_process, message + "intact: continue with --resume latest --compile no", EXIT_FAILED)
    except WorkerLost as error:  # the rank whose worker died is the one that knows
        return report(True, f"{error}; continue with --resume latest", EXIT_FAILED)
    except OSError as error:  # a full disk or a lost file system while writing; the last checkpoint is intact
        return report(main_process, f"{original_message(error)}; continue with --resume latest", EXIT_FAILED)
    except Stopped as stop:
        log.info("%s; continue with --resume latest", stop)
        accelerator.end_training()
        return 128 + stop.signal_number  # what a shell reports for a process ended by that signal
    accelerator.end_training()
    return 0


def start_trackers(accelerator, config: TrainConfig, run_dir: Path) -> None:
    """The --report-to trackers, named after the run directory, with the resolved configuration as hyperparameters."""
    accelerator.log_with = create_trackers(parse_report_to(config.report_to), config.tracker_project, run_dir)
    accelerator.init_trackers(config.tracker_project, config=hyperparameters(config.to_dict()))


def report(main_process: bool, message: str, code: int) -> int:
    """Print `error: message` once (from the main process) and return the exit code."""
    if main_process:
        print(f"error: {message}", file=sys.stderr)
    return code


def original_message(error: BaseException) -> str:
    """The message of `error`, without the worker traceback a DataLoader worker's exception carries in its text."""
    last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return last.removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")


def _setup_logging(run_dir: Path, main_process: bool) -> None:
    """Status lines to the console and run_dir/log.txt, from the main process only."""
    logger = logging.getLogger("progressive.train")
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    for old in list(logger.handlers):  # a second run in the same process must not log twice
        logger.removeHandler(old)
        old.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if main_process:
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())

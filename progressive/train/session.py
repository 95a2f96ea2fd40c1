"""A training session: `open_run` checks every input, builds the trainer and claims the run directory; `run` trains.

The command line (progressive/cli/train.py) is flags over this module. From Python:

    config = dataclasses.replace(preset_config("demo"), data="data/fashion-mnist.lmdb", kimg=14)
    with open_run(config) as session:  # open_run(config, resume="latest") continues the newest run under config.out
        session.run()  # Ctrl-C or SIGTERM: a checkpoint, then `Stopped`

Failures are typed, so that callers decide what each one means (the command's exit codes are in its module):
- from `open_run`: `BadInput` (an input the user can fix; nothing written) and `CheckpointError` (a checkpoint that
  is missing, damaged or of another configuration; `ConfigurationMismatch` lists the changed values);
- from `run`: `NonFiniteError`, `Stopped`, `DatasetFormatError` (a damaged image), `WorkerLost` (a data-loading
  process died), `OSError` (a write failed; the last checkpoint is intact) and, with `compile`, torch's
  `FailOnRecompileLimitHit`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from datasets_prep.locking import DirectoryBusy, DirectoryLock
from progressive.errors import BadInput
from progressive.io import check_writable_folder
from progressive.nets.layers import resolutions
from progressive.train.batches import apply_batch_flag, choose_batch_sizes, smallest_gpu_memory_gib
from progressive.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
    run_directory_of,
    saved_schedule,
)
from progressive.train.config import TrainConfig
from progressive.train.run_directory import create_run_directory, lock_run_directory
from progressive.train.trackers import create_trackers, hyperparameters, parse_report_to

log = logging.getLogger("progressive.train")


@dataclasses.dataclass
class TrainingSession:
    """An opened run: the resolved configuration, its Accelerator and Trainer, and the locked run directory."""

    config: TrainConfig  # as trained: the data's channels and the fitted batch sizes filled in
    accelerator: Any  # accelerate.Accelerator: devices, processes, precision, trackers
    trainer: Any  # progressive.train.loop.Trainer, its checkpoint loaded when resumed
    run_dir: Path  # where config.json, log.txt, snapshots and checkpoints go
    checkpoint_path: Path | None  # the checkpoint resumed, if any
    lock: DirectoryLock | None  # held by the main process while the session is open

    def run(self) -> None:
        """Train until `config.kimg` (or the schedule's end). A stop signal writes a checkpoint and raises `Stopped`."""
        from progressive.train.loop import NonFiniteError, Stopped

        try:
            with self.trainer.stop_on_signals():
                self.trainer.run()
        except NonFiniteError:
            self.accelerator.end_training()
            raise
        except Stopped as stop:
            log.info("%s; continue with --resume latest", stop)
            self.accelerator.end_training()
            raise
        self.accelerator.end_training()

    def close(self) -> None:
        """Give the run directory back (the process's end does too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_run(
    config: TrainConfig,  # the resolved configuration (train/config.py: preset_config, merge_config)
    *,
    resume: str | Path | None = None,  # "latest" (the newest run under config.out), a run directory or a checkpoint
    batch: str = "auto",  # fit the batch sizes to the GPU's memory; or "legacy", N, R:N,R:N (docs/training.md)
    gpu_memory_gib: float | None = None,  # the memory to fit; None: the smallest GPU's own
    mixed_precision: str | None = None,  # "no", "fp16", "bf16"; None: Accelerate's configuration
) -> TrainingSession:
    """Check every input and build the trainer (the checkpoint loaded), then claim the run directory (the resumed
    checkpoint's, else a new numbered one under config.out) and write config.json. Nothing is written before every
    check has passed; BadInput or CheckpointError name what failed."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    accelerator = Accelerator(
        mixed_precision=mixed_precision,  # None: from `accelerate launch` / `accelerate config` / the environment
        log_with=None,  # trackers are created with the run directory
        project_dir=config.out,  # replaced by the run directory once it is claimed
        kwargs_handlers=[
            # Inactive higher-resolution blocks get no gradient at low resolution.
            DistributedDataParallelKwargs(find_unused_parameters=True),
            # NCCL's default of 10 minutes is short for a checkpoint or an evaluation on the main process.
            InitProcessGroupKwargs(timeout=timedelta(minutes=config.collective_timeout_min)),
        ],
    )
    try:
        checkpoint_path = resolve_resume(str(resume), Path(config.out)) if resume else None
        # Read onto the CPU: load_state_dict copies each tensor to its parameter's device, and a checkpoint
        # then resumes on any device and number of processes (torch cannot map to a multi-process "cpu:0").
        state = load_checkpoint(checkpoint_path, map_location="cpu") if checkpoint_path is not None else None
        config = with_data_channels(config)  # the networks are built for the data's channels
        if state is not None:
            check_resumed_channels(state, config, checkpoint_path)
        config, notes = fit_batches(
            config,
            batch,
            smallest_gpu_memory_gib(accelerator, gpu_memory_gib),
            accelerator.num_processes,
            accelerator.mixed_precision,
            resumed_schedule=saved_schedule(state) if state is not None else None,
        )
        check_batches(config, accelerator.num_processes)
        if config.image_channels == 1:
            notes.append("grayscale data (metadata channels 1): the generator draws one channel, shown as three")
        if {"fid", "kid", "is"} & set(config.metrics):
            from progressive.eval.inception import load_inception

            load_inception(config.inception, "cpu")  # fails now, with how to get the weights, not hours in
        dataset, holdout = open_datasets(config)
        from progressive.train.loop import Trainer

        # Built and loaded before the run directory is claimed: loading the checkpoint into the networks is the
        # last check of the inputs, and nothing is written before every check has passed.
        trainer = Trainer(config, accelerator, dataset, run_dir=None, holdout=holdout)
        if state is not None:
            try:
                trainer.load_state_dict(state, checkpoint_path)
            except (KeyError, RuntimeError, TypeError) as error:  # a missing entry, a tensor of another shape
                raise _damaged(checkpoint_path, error) from error
        if accelerator.is_main_process:
            check_writable_folder(Path(config.out), "--out", config.out)
    except (BadInput, CheckpointError, ValueError) as error:
        accelerator.end_training()  # after a collective, a process that exits with its group alive is aborted
        if isinstance(error, BadInput | CheckpointError):
            raise
        raise BadInput(str(error)) from error

    run_dir, lock = _claim_run_directory(config, checkpoint_path, accelerator)
    trainer.run_dir = run_dir  # from here on it writes snapshots and checkpoints
    session = TrainingSession(config, accelerator, trainer, run_dir, checkpoint_path, lock)
    _start_writing(session, notes)
    return session


def _damaged(checkpoint_path: Path, error: Exception) -> CheckpointError:
    detail = (str(error).splitlines() or [""])[0]
    return CheckpointError(f"checkpoint {checkpoint_path} is damaged or incomplete: {type(error).__name__}: {detail}")


def _claim_run_directory(
    config: TrainConfig, checkpoint_path: Path | None, accelerator
) -> tuple[Path, DirectoryLock | None]:
    """(run directory, its lock on the main process): the main process picks and locks
    it, or learns that another run holds it; every process learns the outcome (BadInput on all of them)."""
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None, None]  # [run directory, message of a refusal]
    lock = None
    if accelerator.is_main_process:
        try:
            run_dir = run_directory_of(checkpoint_path) if checkpoint_path is not None else None
            if run_dir is None:  # a new run, or a checkpoint kept outside any run directory
                run_dir = create_run_directory(Path(config.out), f"{config.preset}-{config.resolution}")
            lock = lock_run_directory(run_dir)
            outcome[0] = str(run_dir)
        except DirectoryBusy as error:
            outcome[1] = f"run directory {error}"
        except OSError as error:  # the other processes wait in the broadcast below: tell them, do not raise
            outcome[1] = f"--out {config.out}: cannot create the run directory ({error})"
    broadcast_object_list(outcome)
    if outcome[1] is not None:
        accelerator.end_training()
        raise BadInput(outcome[1])
    return Path(outcome[0]), lock


def _start_writing(session: TrainingSession, notes: list[str]) -> None:
    """The run directory's first writes (main process): log.txt, config.json, stale temporaries removed; trackers."""
    accelerator, config, run_dir = session.accelerator, session.config, session.run_dir
    main_process = accelerator.is_main_process
    setup_logging(run_dir, main_process)
    if main_process:
        (run_dir / "config.json").write_text(config.to_json())
        for path in remove_stale_temporaries(run_dir / "checkpoints"):  # safe: this process holds the lock
            log.info("removed %s, left by a checkpoint save that was interrupted", path.name)
        resumed = session.checkpoint_path
        log.info(
            "run directory %s; %d process(es), device %s, mixed precision %s%s",
            run_dir,
            accelerator.num_processes,
            accelerator.device,
            accelerator.mixed_precision,
            f"; resumed from {resumed} at {session.trainer.state.images_shown / 1000:.2f} kimg" if resumed else "",
        )
    accelerator.project_configuration.set_directories(run_dir)
    accelerator.project_configuration.logging_dir = str(run_dir)
    accelerator.log_with = create_trackers(parse_report_to(config.report_to), config.tracker_project, run_dir)
    accelerator.init_trackers(config.tracker_project, config=hyperparameters(config.to_dict()))
    if main_process:
        for line in [*notes, *session.trainer.describe()]:
            log.info("%s", line)


def setup_logging(run_dir: Path, main_process: bool) -> None:
    """Status lines to the console and run_dir/log.txt, from the main process only."""
    log.setLevel(logging.INFO if main_process else logging.WARNING)
    log.propagate = False
    for old in list(log.handlers):  # a second run in the same process must not log twice
        log.removeHandler(old)
        old.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if main_process:
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)


# ----------------------------------------------------------------------------- the data


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


# ----------------------------------------------------------------------------- batch sizes


def check_batches(config: TrainConfig, processes: int) -> None:
    """BadInput where a resolution's global batch does not split evenly over the processes."""
    for resolution in resolutions(config.schedule.min_resolution, config.schedule.max_resolution):
        batch = config.schedule.batch_size_at(resolution)
        if batch % processes:
            raise BadInput(
                f"batch size {batch} at {resolution}x{resolution} is not divisible by the {processes} processes; "
                "set --batch to a multiple"
            )


def fit_batches(
    config: TrainConfig,  # as resolved from the preset, --config and the flags
    batch: str,  # --batch: "auto" fits the batch sizes to `total_gib`; else sizes to apply (batches.apply_batch_flag)
    total_gib: float | None,  # memory of the smallest GPU in use; None on the CPU
    processes: int,
    mixed_precision: str,
    resumed_schedule: dict[str, Any] | None = None,  # the schedule a resumed checkpoint was trained with
) -> tuple[TrainConfig, list[str]]:
    """The configuration with the batch sizes to train with (train/batches.py), and the lines to log about them."""
    try:
        schedule = apply_batch_flag(config.schedule, batch)
    except ValueError as error:
        raise BadInput(f"--batch {batch!r} is not auto, legacy, N or R:N,R:N ({error})") from error
    try:
        schedule, notes, overflows = choose_batch_sizes(
            schedule, config.preset, batch == "auto", total_gib, processes, mixed_precision, resumed_schedule
        )
    except ValueError as error:
        raise BadInput(f"--batch auto: {error}") from error
    return dataclasses.replace(config, schedule=schedule), notes + [f"warning: --batch {batch}: {w}" for w in overflows]

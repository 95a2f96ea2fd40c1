"""Loading a trained run for sampling, reconstruction, scoring and evaluation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from progressive.errors import BadInput
from progressive.models import TriangleModels
from progressive.presets import build_models
from progressive.train.checkpoint import (
    CheckpointContents,
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    run_directory_of,
)
from progressive.train.config import TrainConfig, merge_config, preset_config
from progressive.train.schedule import Stage, stage_at


@dataclass
class TrainedRun:
    """The networks of a checkpoint, at the stage they had reached, in training mode (as trained)."""

    # generator, energy, inference as last trained, and generator_ema, their generator's exponential moving average
    # (the default for sampling); .image_channels: 1 for a grayscale run
    models: TriangleModels
    config: TrainConfig  # the run's resolved configuration
    stage: Stage  # resolution and alpha at the checkpoint
    images_shown: int  # real images shown when the checkpoint was written
    dataset_fingerprint: str  # of the training data
    path: Path  # the checkpoint file

    @property
    def resolution(self) -> int:
        return self.stage.resolution

    @property
    def generator_ema(self) -> nn.Module:
        """The generator's moving average (models.generator_ema)."""
        return self.models.generator_ema

    @property
    def run_directory(self) -> Path:
        """Where a command writes beside the checkpoint: its run directory, else the folder that holds it."""
        return run_directory_of(self.path) or self.path.parent


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> TrainedRun:
    """Rebuild the three networks and the averaged generator of a checkpoint on `device`: `path` is a checkpoint
    file, a run directory (its newest checkpoint) or a root of runs (the newest run's newest), as on the
    command line: `load_trained("runs")`.

    Raises progressive.train.checkpoint.CheckpointError (a ValueError) for a missing or foreign file.
    """
    path = find_checkpoint(path)
    saved = CheckpointContents.from_dict(load_checkpoint(path, map_location=device))
    values = json.loads(saved.config)
    # Checkpoints written before named recipes existed trained the reference objective; those written before
    # grayscale runs existed have no image_channels and were colour (TrainConfig's default, 3).
    config = merge_config(preset_config(values["preset"], values.get("recipe", "reference")), values)

    def networks() -> TriangleModels:
        return build_models(config.preset, config.image_channels, **config.network_overrides())

    models = networks().to(device)
    for name, net in models.networks().items():
        net.load_state_dict(saved.networks[name])
    models.generator_ema = networks().generator.to(device)
    models.generator_ema.load_state_dict(saved.generator_ema)
    models.generator_ema.requires_grad_(False)
    stage = stage_at(config.schedule, saved.images_shown, config.optimizer)
    models.set_stage(stage.resolution, stage.alpha)
    return TrainedRun(
        models=models,
        config=config,
        stage=stage,
        images_shown=saved.images_shown,
        dataset_fingerprint=saved.dataset_fingerprint,
        path=path,
    )


def open_trained(
    checkpoint: str | Path,  # a checkpoint file, a run directory (its newest) or a root of runs (the newest run's)
    device: torch.device | str = "cpu",  # where the networks go
    say: Callable[[str], None] | None = None,  # given: told "loaded PATH: RxR at K kimg, on DEVICE (S s)"
) -> TrainedRun:
    """`load_trained` for evaluation and export: every network frozen (no gradients), and every problem with the
    file one `BadInput` line (a missing or foreign checkpoint, or one whose contents do not fit its configuration)."""
    started = time.perf_counter()
    try:
        run = load_trained(checkpoint, device)
    except CheckpointError as error:
        raise BadInput(str(error)) from error
    except (KeyError, RuntimeError, TypeError, ValueError) as error:  # contents that do not fit their configuration
        detail = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        raise BadInput(f"{find_checkpoint(checkpoint)} cannot be loaded: {detail}") from error
    for net in run.models.staged().values():
        net.requires_grad_(False)
    if say is not None:
        say(
            f"loaded {run.path}: {run.resolution}x{run.resolution} at {run.images_shown / 1000:.1f} kimg, on {device} "
            f"({time.perf_counter() - started:.1f} s)"
        )
    return run


def pick_device(name: str = "auto") -> torch.device:
    """ "auto": the GPU when there is one, else the CPU; otherwise the named device (BadInput if unusable)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise BadInput(f"--device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device is available")
    return device

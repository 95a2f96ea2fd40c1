"""Experiment trackers through Accelerate: which ones (`--report-to`), the resolved configuration as their
hyperparameters, and the snapshot grids through each tracker's own image logging.

Every tracker gets the same scalars (`Accelerator.log`). wandb, MLflow and Aim name a run after its run directory
(`00003-celebahq-1024`) inside the project (experiment) `--tracker-project`; the other trackers name runs their own
way. TensorBoard always writes to RUN/tensorboard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets_prep.pixels import signed_to_pixels
from progressive.train.config import SECTIONS

# What --report-to accepts besides the tracker names: every installed tracker, or none at all.
ALL, NONE = "all", "none"
PACKAGES = {"comet_ml": "comet-ml"}  # pip names that differ from the tracker's name
IMAGE_LOGGING = ("tensorboard", "wandb", "aim")  # trackers whose image logging is used; the others get scalars only


def known_trackers() -> list[str]:
    from accelerate.utils import LoggerType

    return [str(kind.value) for kind in LoggerType if kind != LoggerType.ALL]


def parse_report_to(text: str) -> list[str]:
    """Tracker names from `tensorboard`, `wandb,tensorboard`, `all` or `none`.

    ValueError naming the problem for an unknown name or a tracker whose package is not installed: a run
    that was asked to report to wandb must not train for days without it.
    """
    from accelerate.tracking import get_available_trackers

    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    available = [str(kind.value) for kind in get_available_trackers()]
    if names == [NONE]:
        return []
    if names == [ALL]:
        return available
    known = known_trackers()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(
            f"--report-to {text!r}: unknown tracker {', '.join(unknown) or '(none given)'}; "
            f"use {ALL}, {NONE} or a comma list of {', '.join(known)}"
        )
    for name in names:
        if name not in available:
            package = PACKAGES.get(name, name)
            raise ValueError(f"--report-to {name}: the {package} package is not installed (pip install {package})")
    return names


def create_trackers(names: Iterable[str], project: str, run_dir: Path) -> list:
    """Accelerate trackers for `names`, ready for `init_trackers` (wandb, MLflow and Aim name the run after its
    directory). Only TensorBoard and wandb are exercised by the tests; the others follow Accelerate's signatures."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    trackers = []
    for name in names:
        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            trackers.append(tracker_class("tensorboard", str(run_dir)))  # RUN/tensorboard, whatever the project
        elif name == "wandb":
            trackers.append(tracker_class(project, name=run_dir.name, dir=str(run_dir)))
        elif name == "mlflow":  # where runs are stored is MLflow's own setting (MLFLOW_TRACKING_URI)
            trackers.append(tracker_class(project, run_name=run_dir.name))
        elif name == "aim":  # one Aim repository under --out, the run named after its directory
            trackers.append(tracker_class(run_dir.name, str(run_dir.parent), experiment=project))
        elif tracker_class.requires_logging_directory:
            trackers.append(tracker_class(project, str(run_dir)))
        else:  # the tracker's own run naming
            trackers.append(tracker_class(project))
    return trackers


def hyperparameters(config: dict[str, Any]) -> dict[str, bool | int | float | str | None]:
    """The resolved configuration flattened to scalar values (`objective.weight_recon`), as every tracker
    accepts; per-resolution tables and lists become their JSON text."""
    flat: dict[str, bool | int | float | str | None] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key in SECTIONS:
            for inner, inner_value in hyperparameters(value).items():
                flat[f"{key}.{inner}"] = inner_value
        elif value is None or isinstance(value, bool | int | float | str):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, sort_keys=True)
    return flat


def log_images(trackers: Iterable, grids: dict[str, torch.Tensor], step: int) -> None:
    """Log image grids ((3, H, W) floats in [0, 1]) with each tracker's own image logging."""
    for tracker in trackers:
        if tracker.name not in IMAGE_LOGGING:
            continue
        if tracker.name == "tensorboard":
            tracker.log_images({kind: grid[None].numpy() for kind, grid in grids.items()}, step=step)  # (1, 3, H, W)
            continue
        pictures = {kind: _to_uint8_hwc(grid) for kind, grid in grids.items()}
        if tracker.name == "wandb":
            tracker.log_images({kind: [picture] for kind, picture in pictures.items()}, step=step)
        else:  # aim: one image per key
            tracker.log_images(pictures, step=step)


def _to_uint8_hwc(grid: torch.Tensor) -> np.ndarray:
    return signed_to_pixels(grid * 2 - 1).permute(1, 2, 0).numpy()  # make_grid's [0, 1] to 0..255

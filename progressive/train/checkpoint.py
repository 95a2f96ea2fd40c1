"""Checkpoints: atomic single-file snapshots of the whole training state, pruned and found again.

A checkpoint holds the three networks, their optimisers and loss scalers, the generator's moving
average, the images-shown counter (from which the schedule, the data order and all noise derive),
the skip counters, the dataset fingerprint and the resolved configuration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from progressive.io import TEMPORARY_MARK, write_atomically

CHECKPOINT_KIND = "divergence-triangle-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d{9,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, of another kind, or incompatible with the run."""


class ConfigurationMismatch(CheckpointError):
    """A checkpoint trained with another configuration; `changes` is {key: (saved, current)}, nested keys 'a.b'."""

    def __init__(self, source: Path, changes: dict[str, tuple[Any, Any]]):
        listed = "; ".join(f"{key}: {a!r} -> {b!r}" for key, (a, b) in changes.items())
        super().__init__(f"{source} was trained with a different configuration: {listed}")
        self.changes = changes


@dataclass
class CheckpointContents:
    """What a checkpoint holds: the one description of its layout, written by the trainer and read by resumption
    and `load_trained`. Stored as a plain dict (`to_dict`) of tensors and built-in values, which
    `torch.load(weights_only=True)` reads back without importing any class of this project."""

    config: str  # the resolved TrainConfig as JSON (compared on resume, rebuilt by load_trained)
    dataset_fingerprint: str  # content fingerprint of the training data
    images_shown: int  # real images shown: the schedule, data order and noise derive from it
    iteration: int  # iterations run
    networks: dict[str, dict[str, torch.Tensor]]  # state dicts by name: energy, inference, generator
    generator_ema: dict[str, torch.Tensor]  # state dict of the generator's moving average
    optimizers: dict[str, dict[str, Any]]  # Adam state dicts by network name
    scalers: dict[str, dict[str, Any]]  # fp16 GradScaler state dicts by network name (empty when disabled)
    skipped: dict[str, int]  # updates skipped for a non-finite gradient, by network name
    consecutive_nonfinite: int = 0  # iterations in a row with a skipped update
    health: dict[str, float] = field(default_factory=dict)  # the run's extremes (absent before it was recorded)
    rank_digests: list[list[float]] | None = None  # per process, sums of every network's values (sync check)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: the tensors are not copied
        if values["rank_digests"] is None:
            del values["rank_digests"]
        return {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION, **values}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CheckpointContents:
        """The contents of a loaded checkpoint; KeyError naming the first missing entry of a damaged one."""
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.name not in ("consecutive_nonfinite", "health", "rank_digests")]
        for name in required:
            state[name]  # noqa: B018 -- KeyError with the entry's name
        return cls(**{key: value for key, value in state.items() if key in names})


def saved_schedule(state: dict[str, Any]) -> dict[str, Any] | None:
    """The schedule of a loaded checkpoint's configuration, as JSON values; None unless its batch sizes are readable
    (a damaged checkpoint, refused with its reason when it is loaded)."""
    try:
        schedule = json.loads(state["config"])["schedule"]
        batches = [schedule["batch_size"], *schedule["batch_sizes"].values()]
        [int(r) for r in schedule["batch_sizes"]]  # keys are resolutions
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        return None
    return schedule


def checkpoint_name(images_shown: int) -> str:
    return f"checkpoint-{images_shown:09d}.pt"


def save_atomically(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash at any moment leaves either the old file or the new one, on disk."""

    def save(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # through a Python file, a failed write is an OSError, not a C++ one
            torch.save(state, handle)

    try:
        write_atomically(path, save, durable=True)
    except OSError as error:  # torch.save's own message names no file
        raise OSError(error.errno, f"writing {path} failed: {error.strerror}") from error


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first (temporary files of interrupted saves are ignored)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path | str, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The state saved in `path`; CheckpointError (one line) if it is not a readable checkpoint of this project."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types for damaged or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a divergence-triangle checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


def run_directory_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint file belongs to (the parent of its checkpoints/ folder); None for a checkpoint
    kept elsewhere."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def run_directories(root: Path) -> list[Path]:
    """Auto-numbered run directories under `root` (NNNNN-name), in numeric order."""
    if not root.is_dir():
        return []
    numbered = [(int(p.name.split("-", 1)[0]), p) for p in root.iterdir() if p.is_dir() and p.name[:5].isdigit()]
    return [p for _, p in sorted(numbered)]


def newest_in_directory(directory: Path) -> Path | None:
    """The newest checkpoint of a run directory (in its `checkpoints/`, or in the directory itself), if any."""
    found = list_checkpoints(directory / "checkpoints") or list_checkpoints(directory)
    return found[-1] if found else None


def newest_of_runs(root: Path) -> Path | None:
    """The newest checkpoint of the newest run under `root` that has one, if any."""
    for run_dir in reversed(run_directories(root)):
        found = list_checkpoints(run_dir / "checkpoints")
        if found:
            return found[-1]
    return None


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint meant by `path`: a checkpoint file itself, a run directory's newest checkpoint, or the
    newest checkpoint of the newest run under a root of runs. CheckpointError (one line) if there is none."""
    path = Path(path)
    if path.is_dir():
        newest = newest_in_directory(path) or newest_of_runs(path)
        if newest is None:
            raise CheckpointError(f"no checkpoint in directory {path}")
        return newest
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def resolve_resume(resume: str, out: Path) -> Path:
    """The checkpoint meant by --resume: `latest` (newest checkpoint of the newest run under `out` that has one),
    a run directory (its newest checkpoint) or a checkpoint file."""
    if resume == "latest":
        latest = newest_of_runs(out)
        if latest is None:
            raise CheckpointError(f"--resume latest: no checkpoint under {out}")
        return latest
    path = Path(resume)
    if path.is_dir():
        newest = newest_in_directory(path)
        if newest is None:
            raise CheckpointError(f"--resume {path}: no checkpoint in that directory")
        return newest
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint")
    return path


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files of saves that were interrupted (.checkpoint-NNN.tmp-PID.pt, progressive/io.py);
    only for a directory no other process writes."""
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".checkpoint-") and TEMPORARY_MARK in p.name]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale

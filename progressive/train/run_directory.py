"""Run directories: auto-numbered under --out, and locked (datasets_prep.locking) while a run writes in them."""

from __future__ import annotations

from pathlib import Path

from datasets_prep.locking import DirectoryBusy, DirectoryLock
from progressive.train.checkpoint import run_directories

# Simultaneous starts under one --out each take the next free number; this bounds the retries.
NUMBERING_ATTEMPTS = 1000


def lock_run_directory(run_dir: Path) -> DirectoryLock:
    """The held lock of `run_dir`; ValueError (one line) while another live run holds it."""
    lock = DirectoryLock(run_dir)
    try:
        lock.acquire()
    except DirectoryBusy as busy:
        raise DirectoryBusy(
            run_dir, f"{busy.holder}; two runs in one directory would overwrite each other's checkpoints"
        ) from None
    return lock


def create_run_directory(root: Path, name: str) -> Path:
    """Create root/NNNNN-name with NNNNN one above the highest number there, retrying if another run takes it."""
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(NUMBERING_ATTEMPTS):
        existing = run_directories(root)
        number = int(existing[-1].name[:5]) + 1 if existing else 0
        run_dir = root / f"{number:05d}-{name}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:  # another run created a directory with this number since the listing
            continue
    raise RuntimeError(f"no free run directory number under {root} after {NUMBERING_ATTEMPTS} attempts")

"""Run directories: auto-numbered under --out, and locked while a training run writes in them.

The lock is an `flock` on RUN_DIR/.lock, held by the main training process for as long as it runs. The
kernel releases it when that process ends in any way (kill -9 and power loss included), so a lock left
by a dead run is recovered by the next one without any clean-up; the file only records who holds it,
for the message a second run receives. flock works on local disks and on most cluster file systems
(Lustre, GPFS, NFSv4); where it does not, the lock is not enforced (docs/training.md).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from progressive.checkpoint import run_directories

LOCK_NAME = ".lock"
# Simultaneous starts under one --out each take the next free number; this bounds the retries.
NUMBERING_ATTEMPTS = 1000


class RunDirectoryBusy(ValueError):
    """Another live training process holds the run directory."""


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


class RunDirectoryLock:
    """An exclusive lock on a run directory: `acquire()` raises RunDirectoryBusy while another process holds it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(
                f"run directory {self.run_dir} is in use by {holder}; two runs in one directory would overwrite "
                "each other's checkpoints"
            ) from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

"""An exclusive lock on a directory, for the processes that write in it (a dataset build, a training run).

The lock is an `flock` on DIRECTORY/.lock, held for as long as the writing process runs. The kernel
releases it when that process ends in any way (kill -9 included), so a lock left by a dead process is
recovered by the next one without any clean-up; the file only records who holds it, for the message a
second process receives. flock works on local disks and on most cluster file systems (Lustre, GPFS,
NFSv4); where it does not, the lock is not enforced.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class DirectoryBusy(ValueError):
    """Another live process holds the directory's lock."""

    def __init__(self, directory: Path, holder: str):
        super().__init__(f"{directory} is in use by {holder}")
        self.directory = directory
        self.holder = holder


class DirectoryLock:
    """`acquire()` takes the lock or raises DirectoryBusy; `release()` (or the process's end) gives it back."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DirectoryBusy(self.directory, holder) from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

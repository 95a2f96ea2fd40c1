"""Writing a file so that a crash at any moment leaves either the old file or the complete new one, and checking
before any work that an output folder can be written.

The bytes go to a hidden temporary file beside the target (same directory, so the rename is atomic; same
suffix, so writers that choose the format by it still do), which is renamed over the target when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from progressive.errors import BadInput

TEMPORARY_MARK = ".tmp-"  # in the name of every temporary file (followed by the writer's process id)


def temporary_beside(path: Path) -> Path:
    """A hidden temporary name next to `path`, keeping its suffix: .NAME.tmp-PID.SUFFIX."""
    return path.with_name(f".{path.stem}{TEMPORARY_MARK}{os.getpid()}{path.suffix}")


def write_atomically(path: Path, write: Callable[[Path], None], durable: bool = False) -> None:
    """Call write(temporary), then rename the temporary onto `path`; an earlier `path` survives any failure.

    `durable` also flushes the file and the directory entry to disk before returning (checkpoints: a power
    loss right after must not lose them).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_beside(path)
    try:
        write(temporary)
        if durable:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def check_writable_folder(folder: Path, option: str, given: str) -> None:
    """BadInput unless `folder` exists or can be created, and files can be written in it. Creates nothing.

    Writes (then removes) a probe file in the nearest folder that exists: a real write, unlike a permission
    check, also catches read-only file systems, and works for root.
    """
    existing = next(a for a in (folder.absolute(), *folder.absolute().parents) if a.exists())
    if not existing.is_dir():
        raise BadInput(f"{option} {given}: {existing} is a file, not a folder")
    probe = existing / f".write-probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise BadInput(f"{option} {given}: cannot write in {existing} ({error.strerror})") from error

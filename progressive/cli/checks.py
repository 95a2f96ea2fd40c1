"""What every command checks and how it reports it, kept free of heavy imports so a bad flag answers at once.

Every problem the user can fix is a `BadInput`, reported as one `error: ...` line on stderr with exit
code 2; outputs are checked to be writable before any work starts.
"""

from __future__ import annotations

from pathlib import Path

from progressive.errors import BadInput
from progressive.io import check_writable_folder

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_SIGNAL_BASE",
    "BadInput",
    "check_output_suffix",
    "check_writable_folder",
]

EXIT_FAILED = 1  # something went wrong that is not the input's fault (a full disk during a write)
EXIT_BAD_INPUT = 2
EXIT_SIGNAL_BASE = 128  # stopped by signal N after a checkpoint: exit 128 + N, what a shell reports for it


def check_output_suffix(path: str, suffixes: tuple[str, ...], option: str) -> Path:
    """`path` as a Path if it ends in one of `suffixes` and can be written; BadInput otherwise.

    Checked before any work, so a long evaluation or export never ends on an unwritable output.
    """
    if Path(path).suffix.lower() not in suffixes:
        raise BadInput(f"{option} {path}: expected a file ending in {' or '.join(suffixes)}")
    if Path(path).is_dir():
        raise BadInput(f"{option} {path} is a directory; give a file ending in {' or '.join(suffixes)}")
    check_writable_folder(Path(path).parent, option, path)
    return Path(path)

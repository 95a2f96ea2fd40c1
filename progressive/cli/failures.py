"""What a failure of a training session exits with: one table from the failure's type to the exit code, whether
every process reports it, and the one line it prints (the commands' exit codes: docs/training.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from datasets_prep.lmdb_format import DatasetFormatError
from progressive.cli.checks import EXIT_BAD_INPUT, EXIT_FAILED
from progressive.train.config import TrainConfig

EXIT_NONFINITE = 3  # stopped after repeated non-finite gradients


def failure_report(error: Exception, config: TrainConfig) -> tuple[int, bool, str]:
    """(exit code, whether every rank reports it, the line) for a failure of `TrainingSession.run`; re-raises a
    failure of no kind below (a bug: its traceback is the report).

    Every rank reports what only the rank that met it knows (a damaged image it read, its data worker that died);
    the main process alone what every rank meets at the same iteration."""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    from progressive.data import WorkerLost
    from progressive.train.loop import NonFiniteError

    def first_line(error: BaseException) -> str:
        return (str(error).strip().splitlines() or [""])[0]

    resume = "continue with --resume latest"
    kinds: list[tuple[type[BaseException], int, bool, Callable[[Any], str]]] = [
        (NonFiniteError, EXIT_NONFINITE, False, str),
        (DatasetFormatError, EXIT_BAD_INPUT, True, original_message),
        (
            FailOnRecompileLimitHit,  # --compile: a network needed more compilations than budgeted
            EXIT_FAILED,
            False,
            lambda e: (
                f"--compile {config.compile}: recompilation budget exhausted ({first_line(e)}); checkpoints "
                f"written are intact: {resume} --compile no"
            ),
        ),
        (WorkerLost, EXIT_FAILED, True, lambda e: f"{e}; {resume}"),
        # A full disk or a lost file system while writing; the last checkpoint is intact.
        (OSError, EXIT_FAILED, False, lambda e: f"{original_message(e)}; {resume}"),
    ]
    for kind, code, every_rank, describe in kinds:
        if isinstance(error, kind):
            return code, every_rank, describe(error)
    raise error


def is_main_process() -> bool:
    """Whether this is the main process (also before any Accelerator: Accelerate's PartialState)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def report(main_process: bool, message: str, code: int) -> int:
    """Print `error: message` once (from the main process) and return the exit code."""
    if main_process:
        print(f"error: {message}", file=sys.stderr)
    return code


def original_message(error: BaseException) -> str:
    """The message of `error`, without the worker traceback a DataLoader worker's exception carries in its text."""
    last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return last.removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")

"""Evaluating a trained run from Python: `evaluate_run(checkpoint_or_run, metrics=..., images=...)` -> the report.

The one implementation behind `triangle-evaluate` (progressive/cli/evaluate.py, which adds the flags and the JSON
file) and launch/benchmark_quality.py. From Python:

    from progressive.evaluation import evaluate_run
    report = evaluate_run("runs/00000-demo-32", metrics="recon,swd,energy", images=1000)

`report["metrics"]` holds the figures ({"recon/mse": ..., "swd/mean": ..., "energy/auroc_noise": ...}); the run is
a checkpoint file, a run directory, a root of runs (its newest checkpoint) or a run already opened with
`progressive.pretrained.open_trained`. `report_lines(report)` gives the lines triangle-evaluate prints.

Every knob is a field of `EvaluationOptions` (the command's flags, one for one; docs/evaluation.md). Problems the
caller can fix raise `BadInput` (progressive/errors.py) before any metric runs. The measuring itself is
progressive/eval/report.py's; this module adds opening the run, which sits above the training code.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from progressive.eval.report import PROTOCOLS, EvaluationOptions, evaluation_report, report_lines
from progressive.eval.sampling import ONE_PROCESS, Shard
from progressive.pretrained import TrainedRun, open_trained, pick_device

__all__ = ["PROTOCOLS", "EvaluationOptions", "evaluate_run", "report_lines"]


def _stdout(line: str) -> None:
    print(line, flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def evaluate_run(
    run: TrainedRun | str | Path,  # a checkpoint file, a run directory, a root of runs (its newest), or an opened run
    options: EvaluationOptions | None = None,  # what to measure (default: EvaluationOptions())
    *,
    progress: Callable[[str], None] | None = _stdout,  # status lines ("[1/4] recon ..."); None: quiet
    note: Callable[[str], None] | None = _stderr,  # what is skipped and why; None: quiet (still in the report)
    shard: Shard = ONE_PROCESS,  # this process's share when several evaluate together: Shard.of(accelerator)
    **changes,  # EvaluationOptions fields over `options`: evaluate_run(path, metrics="recon", images=500)
) -> dict:
    """The evaluation report of a trained run: {"metrics": {name: value}, "skipped": {...}, "settings": {...}, ...}.

    Auto metrics whose network or labels are missing are skipped (with a note); named ones raise BadInput. Under
    `accelerate launch` or `torchrun`, every process calls it with its shard (and its own `device`): each runs the
    networks on its batches, and every one returns the whole evaluation's report.
    """
    options = dataclasses.replace(options or EvaluationOptions(), **changes).resolved()  # checked before loading
    say = progress or (lambda line: None)
    if isinstance(run, str | Path):
        device = pick_device(options.device)  # BadInput for an unusable one, before the checkpoint is read
        run = open_trained(run, device, say)
    return evaluation_report(run, options, say, note, shard)

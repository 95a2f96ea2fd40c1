"""--compile: compiled networks train as eager ones; Accelerate's own dynamo backend and an exhausted
recompilation budget are one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, assert_same_training_state, final_checkpoint
from conftest import run_train_main as train


@pytest.mark.slow
def test_compiled_networks_train_as_eager_ones_through_every_stage(tmp_path, lmdb16):
    """--compile: three phases (4 stable, 8 fade, 8 stable) with snapshots and metrics stay compiled (an exhausted
    recompilation budget would end the run: it is an error, not a silent fall-back) and end where eager
    training ends. A separate process: dynamo's caches and limits are process-wide."""
    args = [*TINY, "--res", "8", "--checkpoint-kimg", "1", "--kimg", "0.144", "--metrics", "recon", "--metric-kimg",
            "0.096", "--metric-images", "8", "--data", str(lmdb16)]  # fmt: skip
    command = [sys.executable, str(ROOT / "launch" / "train.py"), *args, "--compile", "default"]
    compiled = subprocess.run([*command, "--out", str(tmp_path / "compiled")], capture_output=True, text=True,
                              cwd=ROOT, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert train([*args, "--out", str(tmp_path / "eager")]) == 0
    assert_same_training_state(final_checkpoint(tmp_path / "compiled"), final_checkpoint(tmp_path / "eager"), 1e-5)


def test_accelerates_own_dynamo_backend_is_refused_with_the_alternative(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    assert train([*TINY, "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "dynamo backend (inductor)" in error and "--compile" in error and error.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_an_exhausted_recompilation_budget_is_one_line_not_a_silent_fallback(tmp_path, capsys, monkeypatch):
    """With a budget of one compilation per function the second shape the energy model meets exhausts it: the run
    ends with one line naming the way on, where torch's default would have fallen back to eager silently."""
    import torch._dynamo

    import progressive.train.compile

    monkeypatch.setattr(progressive.train.compile, "GRAPHS_PER_PHASE", 0)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    args = [*TINY, "--res", "4", "--kimg", "0.008", "--out", str(tmp_path / "runs"), "--compile", "default"]
    assert train(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # (and dynamo's log)
    assert len(errors) == 1 and "recompilation budget exhausted" in errors[0] and "--compile no" in errors[0]

"""A build killed mid-way (SIGKILL, or Ctrl-C) resumes to exactly what an uninterrupted build writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import lmdb
import pytest
from conftest import lmdb_pairs

from datasets_prep.__main__ import main
from datasets_prep.lmdb_format import META_KEY
from datasets_prep.reader import LMDBImageDataset

SOURCE = "synthetic:shapes?n=1200&seed=5"
ARGUMENTS = ["--max-res", "16", "--holdout", "10", "--commit-every", "16", "--workers", "2", "--no-progress"]
KILL_AFTER = 64  # items committed before the kill: well inside the 1200


def committed_items(path) -> int:
    """Items of the source committed so far by a running build (0 before its first commit)."""
    if not (path / "data.mdb").exists():
        return 0
    env = lmdb.open(str(path), readonly=True)  # with the lock file: the writer is still running
    with env.begin() as txn:
        raw = txn.get(META_KEY)
    env.close()
    return json.loads(raw)["build"]["next_item"] if raw else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "reference"
    assert main(["build", SOURCE, str(out), *ARGUMENTS]) == 0
    return lmdb_pairs(out)


def start_and_stop_build(out, stop_signal: int) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "datasets_prep", "build", SOURCE, str(out), *ARGUMENTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a test run started as a background job ignores SIGINT, and so would the
        # build it starts (Python installs its KeyboardInterrupt handler only where SIGINT is not ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180  # a hang, not a busy machine, is what exceeds it
    while committed_items(out) < KILL_AFTER:
        assert process.poll() is None, f"build ended before it could be interrupted: {process.communicate()}"
        assert time.monotonic() < deadline, "build never committed anything"
        time.sleep(0.02)
    process.send_signal(stop_signal)
    stdout, stderr = process.communicate(timeout=180)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_interrupted_build_resumes_to_identical_contents(tmp_path, uninterrupted, stop_signal):
    out = tmp_path / "interrupted"
    stopped = start_and_stop_build(out, stop_signal)
    if stop_signal == signal.SIGKILL:
        assert stopped.returncode == -signal.SIGKILL
    else:
        assert stopped.returncode == 130 and "--resume" in stopped.stderr, stopped.stderr

    partial = json.loads(lmdb_pairs(out)[META_KEY])
    assert not partial["complete"] and KILL_AFTER <= partial["build"]["next_item"] < 1200
    with pytest.raises(ValueError, match="interrupted build"):
        LMDBImageDataset(out, resolution=16)
    assert main(["build", SOURCE, str(out), *ARGUMENTS]) == 2  # exists: needs --resume

    assert main(["build", SOURCE, str(out), *ARGUMENTS, "--resume"]) == 0
    resumed = lmdb_pairs(out)
    assert resumed.keys() == uninterrupted.keys()
    assert all(resumed[key] == value for key, value in uninterrupted.items())
    assert main(["verify", str(out), "--full", "--no-progress"]) == 0
    assert os.path.exists(out / "report.txt")

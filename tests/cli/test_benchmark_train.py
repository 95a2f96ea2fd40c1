"""launch/benchmark_train.py: operator counts per resolution and the speeds file the dry run projects from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_benchmark_train_counts_operator_calls_and_writes_its_speeds(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "launch" / "benchmark_train.py"), "--preset", "tiny", "--res", "8",
               "--iterations", "1", "--warmup", "0", "--count-ops", "--channels-last", "--json", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split() and line.split()[0] in ("4", "8")]
    calls = [(int(row[-2]), int(row[-1])) for row in rows]  # all ATen calls, the kernel-launching ones
    assert len(calls) == 2 and all(100 < launching < total for total, launching in calls), calls
    written = json.loads(out.read_text())
    assert set(written["images_per_second"]) == {"4", "8"} and written["channels_last"] is True

"""Run directories: numbering under simultaneous starts, the lock against two runs in one directory, and
what a resume finds there (temporary files of interrupted saves; a checkpoint kept outside any run)."""

import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from datasets_prep.locking import DirectoryBusy, DirectoryLock
from progressive.train.checkpoint import list_checkpoints
from progressive.train.run_directory import create_run_directory

TRAIN = [sys.executable, str(ROOT / "launch" / "train.py"), "--preset", "tiny", "--res", "8", "--workers", "0"]


def _create_several(root: str, start, count: int, made) -> None:
    start.wait()
    for _ in range(count):
        made.put(create_run_directory(Path(root), "race").name)


def test_simultaneous_starts_each_get_their_own_number(tmp_path):
    context = multiprocessing.get_context("fork")
    start, made = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_create_several, args=(str(tmp_path), start, 5, made)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    names = sorted(made.get(timeout=60) for _ in range(20))
    assert names == [f"{n:05d}-race" for n in range(20)]


def test_lock_refuses_a_second_holder_and_is_free_again_after_release(tmp_path):
    first, second = DirectoryLock(tmp_path), DirectoryLock(tmp_path)
    first.acquire()
    with pytest.raises(DirectoryBusy, match=f"in use by process {os.getpid()} on "):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


@pytest.mark.slow
def test_second_run_in_a_busy_directory_is_refused_and_a_dead_runs_lock_is_recovered(tmp_path):
    out = tmp_path / "runs"
    first = subprocess.Popen([*TRAIN, "--out", str(out), "--kimg", "100", "--checkpoint-kimg", "0.1"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        for line in first.stdout:
            if "checkpoint " in line:  # one checkpoint exists: `--resume latest` means this run
                break
        second = subprocess.run([*TRAIN, "--out", str(out), "--resume", "latest", "--kimg", "100"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 2
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(f"error: run directory {out / '00000-tiny-8'} is in use by process {first.pid} on ")
        assert not second.stdout
    finally:
        first.kill()
        first.wait(timeout=180)

    # kill -9 left its lock file (and here a temporary file of a save); the next resume takes over.
    run_dir = out / "00000-tiny-8"
    stale = run_dir / "checkpoints" / ".checkpoint-000000400.tmp-12345.pt"
    stale.write_bytes(b"half a checkpoint")
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    kimg = int(newest.name[11:20]) / 1000 + 0.008
    resumed = subprocess.run([*TRAIN, "--out", str(out), "--resume", "latest", "--kimg", str(kimg)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert not stale.exists() and f"removed {stale.name}" in resumed.stdout
    assert sorted(p.name for p in out.iterdir()) == ["00000-tiny-8"]


@pytest.mark.slow
def test_resume_from_a_checkpoint_outside_a_run_starts_a_run_under_out(tmp_path):
    out = tmp_path / "runs"
    assert subprocess.run([*TRAIN, "--out", str(out), "--kimg", "0.02"], cwd=ROOT, capture_output=True).returncode == 0
    kept = tmp_path / "kept" / "model.pt"
    kept.parent.mkdir()
    shutil.copy(list_checkpoints(out / "00000-tiny-8" / "checkpoints")[-1], kept)
    elsewhere = tmp_path / "elsewhere"
    resumed = subprocess.run([*TRAIN, "--out", str(elsewhere), "--resume", str(kept), "--kimg", "0.028"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"run directory {elsewhere / '00000-tiny-8'};" in resumed.stdout and f"resumed from {kept}" in resumed.stdout
    assert sorted(p.name for p in kept.parent.iterdir()) == ["model.pt"]  # nothing written beside the file
    assert list_checkpoints(elsewhere / "00000-tiny-8" / "checkpoints")

"""Failures end within seconds, with one line: training with DataLoader workers, damaged or truncated LMDBs.

Each run bounds its own time: a hang fails the test instead of stalling the suite. Commands that could
die of SIGBUS on a truncated file run as subprocesses, so a regression fails the test, not the suite.
"""

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
import torch
from conftest import ROOT

# Far above the few seconds these runs need to fail, also on a machine busy with another training (tenfold
# slower); a hang is what exceeds it.
DEADLINE_S = 180


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--res", "8", "--preset", "tiny", "--workers", "2", "--out", str(out), *extra]


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "launch/train.py", *train_args(data, out, *extra)]


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (a worker forked from a run shares its line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def finish(process: subprocess.Popen, marker: str) -> tuple[int, str]:
    """Wait for the run (at most DEADLINE_S), then check that neither it nor any of its workers is left."""
    try:
        _, stderr = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        for pid in processes_mentioning(marker):
            os.kill(pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the run did not exit within {DEADLINE_S} s")
    # Workers of a dead parent notice it within seconds (PyTorch checks every 5 s); one still there after
    # half a minute is left behind, also on a busy machine.
    deadline = time.monotonic() + 30
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(marker) == []
    return process.returncode, stderr


@pytest.fixture(scope="module")
def shapes8(build_shapes_lmdb, tmp_path_factory):
    return build_shapes_lmdb(tmp_path_factory.mktemp("data") / "shapes8", images=256, max_res=8, holdout=0)


@pytest.mark.slow
def test_damaged_image_ends_the_run_with_one_line(shapes8, tmp_path):
    data = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(shapes8), str(data)], check=True)
    with lmdb.open(str(data)).begin(write=True) as txn:
        txn.put(b"train/8/00000100", b"\x89PNG but not really")
    process = subprocess.Popen(train_command(data, tmp_path / "runs", "--kimg", "3"), cwd=ROOT, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    code, stderr = finish(process, str(tmp_path))
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train image 100 at 8x8" in last and "verify --full" in last


@pytest.mark.slow
def test_failed_checkpoint_write_ends_the_run(shapes8, tmp_path):
    def small_files_only():  # a disk that takes the logs and snapshots, but no checkpoint (about 110 kB here)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    command = train_command(
        shapes8, tmp_path / "runs", "--kimg", "3", "--checkpoint-kimg", "0.5", "--snapshot-kimg", "100"
    )
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=small_files_only)  # fmt: skip
    code, stderr = finish(process, str(tmp_path))
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "checkpoint-" in last and "--resume latest" in last
    assert not list((tmp_path / "runs").glob("*/checkpoints/*"))  # no partial file left behind


@pytest.mark.slow
def test_killed_worker_ends_the_run(shapes8, tmp_path):
    command = train_command(shapes8, tmp_path / "runs", "--kimg", "50", "--tick-kimg", "0.1")
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in process.stdout:  # a status line: training runs, its workers are up
        if " kimg " in line:
            break
    workers = children_of(process.pid)
    assert workers, "the run has no DataLoader workers"
    os.kill(workers[0], signal.SIGKILL)
    code, stderr = finish(process, str(tmp_path))
    # However the loss shows (PyTorch's watchdog, or a connection reset while a batch was being handed over): one line.
    assert code == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "DataLoader worker" in last and last.endswith("continue with --resume latest")
    assert any(how in last for how in ("exited unexpectedly", "killed by signal", "lost the connection to"))


@pytest.mark.slow
def test_killed_worker_of_one_rank_ends_every_rank(shapes8, tmp_path, accelerate_command):
    command, env = accelerate_command(train_args(shapes8, tmp_path / "runs", "--kimg", "50", "--tick-kimg", "0.1"))
    launcher = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in launcher.stdout:
        if " kimg " in line:
            break
    # The main rank printed its first tick; on a busy machine the other may start its workers a little later.
    deadline = time.monotonic() + 60
    while len(ranks := sorted(pid for pid in children_of(launcher.pid) if children_of(pid))) < 2:
        assert time.monotonic() < deadline, "expected two training processes with DataLoader workers"
        time.sleep(0.5)
    os.kill(children_of(ranks[-1])[0], signal.SIGKILL)
    code, _ = finish(launcher, str(tmp_path))
    assert code != 0


def run_tool(*args, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    command = [sys.executable, *[str(a) for a in args]]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.9, 40_000], ids=["90-percent", "40-kB"])
def test_truncated_lmdb_is_one_line_for_every_reader(shapes8, tmp_path, keep):
    data = tmp_path / "truncated"
    subprocess.run(["cp", "-r", str(shapes8), str(data)], check=True)
    size = (data / "data.mdb").stat().st_size
    os.truncate(data / "data.mdb", int(size * keep) if keep < 1 else keep)
    expected = f"data.mdb is truncated: {int(size * keep) if keep < 1 else keep} bytes, but its pages need {size}"

    info = run_tool("-m", "datasets_prep", "info", data)
    assert info.returncode == 2 and info.stderr.strip() == f"error: {data}/{expected}; copy it again or rebuild it"
    for full in ([], ["--full"]):
        verify = run_tool("-m", "datasets_prep", "verify", *full, data)
        assert verify.returncode == 1 and f"problem: {data}/{expected}" in verify.stdout
    train = run_tool("launch/train.py", *train_args(data, tmp_path / "runs", "--kimg", "0.1"))
    assert train.returncode == 2 and train.stderr.strip().splitlines()[-1].endswith("copy it again or rebuild it")
    assert not (tmp_path / "runs").exists()


def test_damaged_page_structure_is_a_listed_problem(shapes8, tmp_path):
    pages = (shapes8 / "data.mdb").stat().st_size // 4096
    # Damage everywhere hides the metadata; damage to some leaf pages only, images read through them.
    for damaged, seen in [(range(2, pages), " is damaged ("), (range(pages // 4, pages // 2), ": train image ")]:
        name = f"damaged-{damaged.start}"
        data = tmp_path / name
        subprocess.run(["cp", "-r", str(shapes8), str(data)], check=True)
        with open(data / "data.mdb", "r+b") as handle:
            for page in damaged:  # pages 0 and 1 are LMDB's meta pages; each other page begins with its header
                handle.seek(page * 4096 + 8)
                handle.write(b"\xff" * 8)
        verify = run_tool("-m", "datasets_prep", "verify", data)
        assert verify.returncode == 1, verify.stderr
        assert seen in verify.stdout and "1 problem(s)" in verify.stdout and not verify.stderr


class _DiesAtSecondBatch(torch.utils.data.Dataset):
    """Eight numbers; the worker that loads index 4 (the second batch of four) kills itself, a second after
    starting it, by when the first batch has left its queue's feeder thread."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 4:
            time.sleep(1)
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.tensor(float(index))


@pytest.mark.slow
def test_a_dead_worker_is_one_worker_lost_at_next():
    from progressive.data import WorkerLost, loader_batches

    loader = torch.utils.data.DataLoader(_DiesAtSecondBatch(), batch_size=4, num_workers=1)
    batches = loader_batches(loader)
    assert next(batches).tolist() == [0.0, 1.0, 2.0, 3.0]
    started = time.monotonic()
    with pytest.raises(WorkerLost, match="DataLoader worker"):
        next(batches)
    assert time.monotonic() - started < DEADLINE_S
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL  # nothing left to raise it again, elsewhere

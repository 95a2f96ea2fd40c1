"""Stopping on a signal (Ctrl-C, SIGTERM) with one process, two, or two simulated machines: a checkpoint where it
stopped, and a resume that continues exactly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, assert_same_training_state, final_checkpoint


@pytest.mark.slow
def test_ctrl_c_checkpoints_at_the_iteration_boundary_and_resume_is_exact(tmp_path, lmdb16):
    """SIGINT to the whole process group (as Ctrl-C sends it), DataLoader workers included."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    # Separate processes throughout: weights are compared bit for bit, and this test process's
    # threading differs from a fresh one's.
    command = [sys.executable, str(ROOT / "launch" / "train.py"), *TINY, "--data", str(lmdb16), "--kimg", "0.24",
               "--workers", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*command, "--out", str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT, start_new_session=True)  # fmt: skip
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "stage: 8 x 8" in line:
            os.killpg(process.pid, signal.SIGINT)
            break
    lines += process.stdout.readlines()
    output = "".join(lines)
    assert process.wait(timeout=300) == 128 + signal.SIGINT, output
    assert "stopped by SIGINT at" in output and "continue with --resume latest" in output
    state = final_checkpoint(stopped)
    assert 48 <= state["images_shown"] < 240  # a checkpoint where it stopped, not at the end
    assert f"checkpoint-{state['images_shown']:09d}.pt" in output

    for args in (["--out", str(stopped), "--resume", "latest"], ["--out", str(straight)]):
        subprocess.run([*command, *args], check=True, capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert_same_training_state(final_checkpoint(straight), final_checkpoint(stopped))


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_iteration(tmp_path, lmdb16, accelerate_command):
    out = tmp_path / "runs"
    command, env = accelerate_command([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.24"])
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=ROOT, start_new_session=True)  # fmt: skip
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "stage: 8 x 8" in line:
            # One worker of the torchrun agent (which runs inside the launcher) is signalled; the other
            # learns of it only through the per-iteration all-reduce.
            pgrep = ["pgrep", "-P", str(launcher.pid), "-f", "train.py"]
            workers = subprocess.run(pgrep, capture_output=True, text=True).stdout.split()
            assert len(workers) == 2, workers
            os.kill(int(workers[0]), signal.SIGTERM)
            break
    lines += launcher.stdout.readlines()
    launcher.wait(timeout=300)
    output = "".join(lines)
    assert output.count("stopped by SIGTERM at") == 1, output[-3000:]  # logged once, by rank 0
    state = final_checkpoint(out)
    assert 48 <= state["images_shown"] < 240
    digests = state["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks took part in the same final save


@pytest.mark.slow
def test_two_machines_simulated_on_one_stop_on_sigterm_and_resume(tmp_path, lmdb16):
    """Two `accelerate launch --num_machines 2` (one process each), as on two nodes of a cluster."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "runs"

    def launch(machine_rank: int, *args: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1", "--main_process_port",
                   str(port), "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
                   str(ROOT / "launch" / "train.py"), *TINY, "--data", str(lmdb16), "--out", str(out),
                   *args]  # fmt: skip
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    nodes = [launch(0, "--kimg", "100"), launch(1, "--kimg", "100")]
    for line in nodes[0].stdout:
        if "stage: 8 x 8" in line:
            break
    for node in nodes:  # what a scheduler does at the end of a job's time: SIGTERM to each node's launcher
        node.send_signal(signal.SIGTERM)
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert "stopped by SIGTERM at" in outputs[0], outputs[0][-3000:]
    stopped_at = final_checkpoint(out)["images_shown"]
    assert 48 <= stopped_at < 100_000

    nodes = [launch(rank, "--kimg", f"{(stopped_at + 8) / 1000}", "--resume", "latest") for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:]
    state = final_checkpoint(out)
    assert state["images_shown"] == stopped_at + 8 and len(state["rank_digests"]) == 2
    assert state["rank_digests"][0] == state["rank_digests"][1]
    assert sorted(p.name for p in out.iterdir()) == ["00000-tiny-16"]

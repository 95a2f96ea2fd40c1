"""Two processes (`accelerate launch` on CPU): in sync with each other and with one process, also through batch norm."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, TINY, assert_same_training_state, final_checkpoint
from conftest import run_train_main as train


def _accelerate(accelerate_command, args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    command, env = accelerate_command(args, processes)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path, lmdb16, accelerate_command):
    two, one = tmp_path / "two", tmp_path / "one"
    # Evaluated at the end by both processes, each on its share of the batches (and without touching training
    # state: the resumed run below still equals one trained straight through without evaluations).
    metrics = ["--metrics", "recon,energy,diversity", "--metric-kimg", "0.24"]
    args = [*TINY, "--data", str(lmdb16), "--out", str(two), "--kimg", "0.24", *metrics]
    result = _accelerate(accelerate_command, args)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = two.iterdir()
    assert list(run_dir.glob("tensorboard/events.out.tfevents.*")) and (run_dir / "snapshots" / "reals.png").exists()
    (evaluated,) = [line for line in (run_dir / "log.txt").read_text().splitlines() if "metrics at kimg" in line]
    assert "recon8/mse" in evaluated and "energy8/auroc_noise" in evaluated and "diversity8/ratio" in evaluated
    state = final_checkpoint(two)
    digests = state["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold identical weights
    assert "res   16" in (run_dir / "log.txt").read_text()
    # Resuming with two processes reads the checkpoint the main process wrote, on every rank.
    resumed = _accelerate(
        accelerate_command, [*TINY, "--data", str(lmdb16), "--out", str(two), "--kimg", "0.288", "--resume", "latest"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = final_checkpoint(two)
    assert state["images_shown"] == 288 and state["rank_digests"][0] == state["rank_digests"][1]
    straight = tmp_path / "two-straight"
    result = _accelerate(accelerate_command, [*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.288"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training_state(final_checkpoint(straight), state)  # exact: same processes, same reductions

    assert train([*TINY, "--data", str(lmdb16), "--out", str(one), "--kimg", "0.24"]) == 0
    # Compared after both fade-ins (192 images, 48 iterations). Float rounding differs between one global
    # batch and two all-reduced halves; the 16x16 stable phase of this tiny network amplifies any rounding
    # difference about tenfold every two iterations (two single-process runs with 1 and 2 threads end 5e-4
    # apart at 240 images), so the final weights are only checked for agreement between the ranks.
    assert_same_training_state(final_checkpoint(one, images=192), final_checkpoint(two, images=192), atol=1e-4)

    # A global batch that the processes cannot split is refused before anything is written. Each process
    # exits with 2; `accelerate launch` itself reports that in its summary and exits with 1.
    refused = _accelerate(
        accelerate_command, [*TINY, "--data", str(lmdb16), "--out", str(tmp_path / "odd"), "--batch", "3"]
    )
    assert refused.returncode != 0 and "exitcode  : 2" in refused.stderr
    assert refused.stderr.count("error: batch size 3 at 4x4 is not divisible by the 2 processes") == 1
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow
def test_batch_norm_statistics_cover_the_batch_of_every_process(tmp_path, build_shapes_lmdb, accelerate_command):
    """The cifar10 networks (batch norm in the generator): 2 processes train as 1 with the same global batch."""
    data = build_shapes_lmdb(tmp_path / "shapes32", 32, max_res=32, holdout=0)
    args = ["--preset", "cifar10-tiny", "--res", "32", "--batch", "8", "--workers", "0", "--kimg", "0.024",
            "--recipe", "reference", "--tick-kimg", "1", "--snapshot-kimg", "1", "--data", str(data)]  # fmt: skip
    command, env = accelerate_command([*args, "--out", str(tmp_path / "two")])
    two = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert train([*args, "--out", str(tmp_path / "one")]) == 0
    a, b = final_checkpoint(tmp_path / "two"), final_checkpoint(tmp_path / "one")
    assert any(key.endswith("running_var") for key in a["networks"]["generator"])
    assert_same_training_state(a, b, atol=2e-5)  # 3 iterations; per-process statistics drifted by 2e-3
    assert a["rank_digests"][0] == a["rank_digests"][1]  # parameters and running statistics equal on both ranks


@pytest.mark.slow
def test_reconstruction_negatives_train_alike_in_two_processes_and_one(tmp_path, lmdb16, accelerate_command):
    """With the option, the inference network's forward runs before the energy step (docs/objective.md): two
    processes still reduce each network once per iteration, stay equal and match one process."""
    args = [*TINY, "--data", str(lmdb16), "--kimg", "0.192", "--reconstruction-negatives", "1"]
    result = _accelerate(accelerate_command, [*args, "--out", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-3000:]
    two = final_checkpoint(tmp_path / "two")
    assert two["rank_digests"][0] == two["rank_digests"][1]
    assert train([*args, "--out", str(tmp_path / "one")]) == 0
    assert_same_training_state(two, final_checkpoint(tmp_path / "one"), atol=1e-4)  # as the test above, at 192

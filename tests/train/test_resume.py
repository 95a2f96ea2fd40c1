"""Resuming a run: exactly where it stopped (mid-fade), refused with what differs, or refused in one line for a
damaged checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY, assert_same_training_state, final_checkpoint
from conftest import run_train_main as train

from progressive.train.checkpoint import list_checkpoints, load_checkpoint


def test_resume_mid_fade_equals_an_uninterrupted_run(tmp_path, lmdb16):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.24"]) == 0
    # Stop at 168 images: half-way through the 16x16 fade-in.
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), "--kimg", "0.168"]) == 0
    assert final_checkpoint(interrupted)["images_shown"] == 168
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), "--kimg", "0.24", "--resume", "latest"]) == 0
    assert [p.name for p in interrupted.iterdir() if p.name[:5].isdigit()] == ["00000-tiny-16"]  # same run dir
    assert_same_training_state(final_checkpoint(straight), final_checkpoint(interrupted), optimizers=True)


def test_resume_with_another_moving_average_half_life_trains_the_same_networks(tmp_path, lmdb16):
    """The moving average feeds nothing back: a run resumed with another --ema-kimg trains the same networks and
    optimiser states as an uninterrupted one, and only its average differs."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.24"]) == 0
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), "--kimg", "0.168"]) == 0
    resume = ["--kimg", "0.24", "--resume", "latest", "--ema-kimg", "0.02", "--ema-rampup", "0.5"]
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), *resume]) == 0
    a, b = final_checkpoint(straight), final_checkpoint(interrupted)
    assert (json.loads(b["config"])["ema_kimg"], json.loads(b["config"])["ema_rampup"]) == (0.02, 0.5)
    assert_same_training_state(a, b, average=False, optimizers=True)
    assert any(not torch.equal(value, b["generator_ema"][key]) for key, value in a["generator_ema"].items())


def test_resume_with_another_configuration_or_dataset_says_what_differs(tmp_path, lmdb16, capsys):
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1"]) == 0
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--resume", "latest", "--weight-kl", "2"]) == 2
    assert "objective.weight_kl: 1.0 -> 2.0" in capsys.readouterr().err
    assert train([*TINY, "--out", str(out), "--resume", "latest"]) == 2  # synthetic data instead of the LMDB
    assert "was trained on dataset" in capsys.readouterr().err
    assert len(list(out.iterdir())) == 1  # nothing new was written
    # The same data under another path (moved, or spelled relative instead of absolute) is the same dataset.
    moved = shutil.copytree(lmdb16, tmp_path / "elsewhere" / "data")
    assert train([*TINY, "--data", str(moved), "--out", str(out), "--resume", "latest", "--kimg", "0.104"]) == 0


def test_a_ramp_down_not_yet_begun_may_be_added_on_resume_and_ends_where_it_would_from_the_start(
    tmp_path, lmdb16, capsys
):
    """Every step before a ramp-down's start has the same rates with it or without it: adding one that starts at or
    after the checkpoint resumes exactly into the run that had it from the start; one already begun is refused."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    ramp = ["--lr-rampdown-start-kimg", "0.168", "--lr-rampdown-kimg", "0.048"]
    assert train([*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.24", *ramp]) == 0
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), "--kimg", "0.168"]) == 0
    begun = ["--lr-rampdown-start-kimg", "0.1", "--lr-rampdown-kimg", "0.048"]
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), "--resume", "latest", *begun]) == 2
    assert "optimizer.lr_rampdown_start_kimg: 0.0 -> 0.1" in capsys.readouterr().err
    resume = ["--kimg", "0.24", "--resume", "latest", *ramp]
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), *resume]) == 0
    a, b = final_checkpoint(straight), final_checkpoint(interrupted)
    assert_same_training_state(a, b, optimizers=True)
    rates = [group["lr"] for group in b["optimizers"]["generator"]["param_groups"]]
    assert rates == pytest.approx([0.1 * 3e-4] * len(rates))  # the last steps (from 216 images) at the floor
    # Resumed without the ramp-down it has begun, the run is refused: its rates so far were ramped.
    assert train([*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.3", "--resume", "latest"]) == 2
    assert "optimizer.lr_rampdown_kimg: 0.048 -> 0.0" in capsys.readouterr().err


def test_resume_from_a_damaged_checkpoint_is_one_line_exit_2(tmp_path, lmdb16, capsys):
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1"]) == 0
    checkpoint = list_checkpoints(out / "00000-tiny-16" / "checkpoints")[-1]
    state = load_checkpoint(checkpoint)
    missing, reshaped = dict(state), dict(state)
    missing["networks"] = {k: v for k, v in state["networks"].items() if k != "energy"}
    reshaped["generator_ema"] = {k: v[..., :1] if v.ndim else v for k, v in state["generator_ema"].items()}
    capsys.readouterr()
    for name, damaged, kind in [("missing", missing, "KeyError"), ("reshaped", reshaped, "RuntimeError")]:
        path = tmp_path / f"{name}.pt"
        torch.save(damaged, path)
        assert train([*TINY, "--data", str(lmdb16), "--out", str(tmp_path / name), "--resume", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: checkpoint {path} is damaged or incomplete: {kind}: ") and "\n" not in err
        assert not (tmp_path / name).exists()


@pytest.mark.slow
def test_a_checkpoint_with_the_optimiser_under_objective_resumes(tmp_path, lmdb16):
    """Checkpoints written before the optimiser had its own configuration section (its learning rates, betas,
    decays and clipping under "objective") resume, and continue as the checkpoint would have."""
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.096"]) == 0
    checkpoint = list_checkpoints(out / "00000-tiny-16" / "checkpoints")[-1]
    state = load_checkpoint(checkpoint)
    config = json.loads(state["config"])
    config["objective"] |= config.pop("optimizer")
    state["config"] = json.dumps(config)
    torch.save(state, checkpoint)
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.24", "--resume", "latest"]) == 0
    straight = tmp_path / "straight"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.24"]) == 0
    assert_same_training_state(final_checkpoint(straight), final_checkpoint(out))

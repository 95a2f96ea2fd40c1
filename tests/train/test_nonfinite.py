"""Non-finite values in training: a NaN batch is skipped and counted, repeated ones stop the run."""

from __future__ import annotations

import torch
from conftest import TINY, final_checkpoint
from conftest import run_train_main as train

from progressive.train.checkpoint import list_checkpoints, load_checkpoint


def test_nan_batch_is_skipped_and_counted(tmp_path, lmdb16):
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1", "--debug-nan-iterations", "3"]) == 0
    state = final_checkpoint(out)
    assert state["skipped"] == {"energy": 1, "inference": 1, "generator": 1}
    for weights in state["networks"].values():
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_repeated_nans_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, lmdb16, capsys):
    out = tmp_path / "runs"
    args = [*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.24", "--checkpoint-kimg", "0.048"]
    assert train([*args, "--debug-nan-iterations", "20,21,22,23,24", "--max-nonfinite", "4"]) == 3
    assert "4 consecutive iterations with non-finite gradients" in capsys.readouterr().err
    (run_dir,) = out.iterdir()
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    assert checkpoints[-1].name == "checkpoint-000000048.pt"  # iteration 20 starts at 80 images
    state = load_checkpoint(checkpoints[-1])
    for weights in state["networks"].values():
        assert all(torch.isfinite(v).all() for v in weights.values())

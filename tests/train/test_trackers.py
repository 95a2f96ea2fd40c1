"""Experiment trackers: TensorBoard by default, --report-to none, wandb when installed, unknown ones refused."""

from __future__ import annotations

import pytest
from conftest import TINY
from conftest import run_train_main as train


def test_trackers_get_scalars_images_and_the_configuration(tmp_path, lmdb16, capsys, monkeypatch):
    """TensorBoard by default (scalars, image grids, hyperparameters); --report-to none writes no events; a
    tracker that is unknown or not installed is refused before anything is written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    args = [*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1"]
    assert train(args) == 0
    (run_dir,) = out.iterdir()
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"loss/energy", "terms/recon_inference", "health/sample_spread"} <= set(events.Tags()["scalars"])
    assert {"samples", "reconstructions", "reals"} <= set(events.Tags()["images"])
    (hparams,) = run_dir.glob("tensorboard/*/hparams.yml")
    assert "objective.weight_recon: 5.0" in hparams.read_text()
    log = (run_dir / "log.txt").read_text()
    assert "generator: " in log and " parameters (4: " in log and "generator average: half-life 10,000 images" in log

    assert train([*args, "--report-to", "none", "--out", str(tmp_path / "quiet")]) == 0
    (quiet,) = (tmp_path / "quiet").iterdir()
    assert not (quiet / "tensorboard").exists() and (quiet / "snapshots" / "reals.png").exists()

    capsys.readouterr()
    assert train([*args, "--report-to", "tensorbord", "--out", str(tmp_path / "typo")]) == 2
    assert "unknown tracker tensorbord" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    import accelerate.tracking

    monkeypatch.setattr(
        accelerate.tracking, "get_available_trackers", lambda: [accelerate.utils.LoggerType.TENSORBOARD]
    )
    assert train([*args, "--report-to", "tensorboard,wandb", "--out", str(tmp_path / "missing")]) == 2
    assert "the wandb package is not installed (pip install wandb)" in capsys.readouterr().err


def test_wandb_receives_the_image_grids(tmp_path, lmdb16, monkeypatch):
    """With wandb installed (not a dependency), an offline run logs every snapshot grid as a wandb image."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1", "--report-to", "wandb"]) == 0
    (run_dir,) = out.iterdir()
    images = {p.name.split("_")[0] for p in run_dir.glob("wandb/offline-run-*/files/media/images/*.png")}
    assert images == {"samples", "reconstructions", "reals"} and not (run_dir / "tensorboard").exists()

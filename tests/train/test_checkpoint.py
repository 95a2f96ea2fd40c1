"""Checkpoint files: a save interrupted half-way leaves the previous one, and pruning keeps the newest."""

from __future__ import annotations

import pytest
import torch

from progressive.train.checkpoint import list_checkpoints, load_checkpoint, prune_checkpoints, save_atomically


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    good = {"kind": "divergence-triangle-checkpoint", "version": 1, "weights": torch.arange(10.0)}
    save_atomically(good, directory / "checkpoint-000000100.pt")

    def torn_save(state, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted in the middle of writing

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({**good, "weights": torch.zeros(10)}, directory / "checkpoint-000000100.pt")
    monkeypatch.undo()
    assert [p.name for p in directory.iterdir()] == ["checkpoint-000000100.pt"]
    torch.testing.assert_close(load_checkpoint(directory / "checkpoint-000000100.pt")["weights"], torch.arange(10.0))
    for images in (200, 300, 400):
        save_atomically(good, directory / f"checkpoint-{images:09d}.pt")
    prune_checkpoints(directory, keep=2)
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-000000300.pt", "checkpoint-000000400.pt"]

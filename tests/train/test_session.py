"""A training session from Python (progressive/train/session.py): start, stop, resume, and typed refusals that write
nothing; without the command line."""

import dataclasses
import json
import signal

import pytest
from accelerate.state import AcceleratorState, GradientState, PartialState
from conftest import final_checkpoint

from progressive.errors import BadInput
from progressive.train.checkpoint import CheckpointError
from progressive.train.config import preset_config
from progressive.train.loop import Stopped
from progressive.train.schedule import ScheduleConfig
from progressive.train.session import open_run


def tiny_config(data, out, kimg):
    """The TINY flags of conftest as a configuration: 4 -> 16 in 240 images, a checkpoint every 96."""
    config = preset_config("tiny")
    schedule = dataclasses.replace(
        config.schedule, max_resolution=16, fade_images=48, stable_images=48, batch_size=4, batch_sizes={}
    )
    assert isinstance(schedule, ScheduleConfig)
    return dataclasses.replace(
        config,
        resolution=16,
        data=str(data),
        out=str(out),
        kimg=kimg,
        workers=0,
        report_to="none",
        tick_kimg=0.048,
        snapshot_kimg=0.096,
        checkpoint_kimg=0.096,
        schedule=schedule,
    )


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each session builds its Accelerator; Accelerate keeps process-wide state that a test must not inherit."""
    for state in (AcceleratorState, GradientState, PartialState):
        state._reset_state(**({"reset_partial_state": True} if state is AcceleratorState else {}))
    yield


@pytest.mark.slow
def test_start_stop_and_resume_from_python(lmdb16, tmp_path):
    out = tmp_path / "runs"
    with open_run(tiny_config(lmdb16, out, kimg=0.096)) as session:
        run_dir = session.run_dir
        assert json.loads((run_dir / "config.json").read_text())["kimg"] == 0.096
        session.run()
    assert final_checkpoint(out)["images_shown"] == 96

    # A stop request (what Ctrl-C or SIGTERM set) ends the run at the next iteration boundary with a checkpoint.
    with open_run(tiny_config(lmdb16, out, kimg=0.24), resume="latest") as session:
        assert session.run_dir == run_dir and session.trainer.state.images_shown == 96
        session.trainer.stop_signal = signal.SIGINT
        with pytest.raises(Stopped):
            session.run()
    stopped_at = final_checkpoint(out)["images_shown"]
    assert 96 <= stopped_at < 240

    with open_run(tiny_config(lmdb16, out, kimg=0.24), resume="latest") as session:
        assert session.trainer.state.images_shown == stopped_at
        session.run()
    assert final_checkpoint(out)["images_shown"] == 240
    assert sorted(p.name for p in out.iterdir()) == [run_dir.name]  # one run directory throughout


def test_refusals_are_typed_and_write_nothing(lmdb16, tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(BadInput, match="missing.lmdb"):
        open_run(tiny_config(tmp_path / "missing.lmdb", out, kimg=0.096))
    with pytest.raises(BadInput, match="--batch 'x' is not auto"):
        open_run(tiny_config(lmdb16, out, kimg=0.096), batch="x")
    with pytest.raises(CheckpointError, match="no checkpoint|no run"):
        open_run(tiny_config(lmdb16, out, kimg=0.096), resume="latest")
    assert not out.exists()

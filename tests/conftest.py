"""Shared test settings, helpers and fixtures.

One intra-op thread: tiny networks run fastest that way, and suites share 2 cores.

The tests sit in folders that mirror the package (tests/train/ for progressive/train/, tests/datasets_prep/ for
datasets_prep/, ...) and are imported with --import-mode=importlib (setup.cfg), so two folders may hold files of
the same name and no folder shadows the package it mirrors. Test modules import the helpers below as
`from conftest import ...`: pytest loads this file as `tests.conftest`, and it registers itself under the plain name
too, so there is one module, not two copies. Never `tests.*`: torch-fidelity installs a top-level package of that
name (docs/evaluation.md).

Tests that take more than about 5 s on 2 cores are marked `slow`: `python -m pytest -m "not slow"` is the quick
inner loop, `make test` runs everything.
"""

import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from torch import nn

from progressive.train.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

sys.modules.setdefault("conftest", sys.modules[__name__])

torch.set_num_threads(1)


def _build_shapes_lmdb(out: Path, images: int, max_res: int, holdout: int, seed: int = 0) -> Path:
    command = [sys.executable, "-m", "datasets_prep", "build", f"synthetic:shapes?n={images}&seed={seed}", str(out),
               "--max-res", str(max_res), "--holdout", str(holdout), "--workers", "1"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return out


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file (Fashion-MNIST's format): big-endian int32 magic and dimensions, then the uint8 values."""
    return np.array([magic, *array.shape], dtype=">i4").tobytes() + array.astype(np.uint8).tobytes()


def lmdb_pairs(path) -> dict[bytes, bytes]:
    """Every key and value of the LMDB at `path`: two builds are the same when these are."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        pairs = dict(txn.cursor())
    env.close()
    return pairs


@pytest.fixture(scope="session")
def build_shapes_lmdb():
    """build_shapes_lmdb(out, images, max_res, holdout, seed=0): a synthetic-shapes LMDB built by the real CLI."""
    return _build_shapes_lmdb


def _accelerate_command(args: list[str], processes: int = 2) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(ROOT / "launch" / "train.py"), *args]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return command, env


@pytest.fixture(scope="session")
def accelerate_command():
    """accelerate_command(args, processes=2): (`accelerate launch` of launch/train.py on CPU processes, its env)."""
    return _accelerate_command


# The tiny preset trained to 16x16: 4x4 stable, 8x8 fade + stable, 16x16 fade + stable, 48 images each, so two
# resolution changes in 240 images; a tick every 48 images, snapshots and checkpoints every 96. Tests add --data,
# --out and --kimg (and override other flags: the last one given counts).
TINY = [
    "--preset", "tiny", "--res", "16", "--fade-images", "48", "--stable-images", "48", "--batch", "4",
    "--workers", "0", "--tick-kimg", "0.048", "--snapshot-kimg", "0.096", "--checkpoint-kimg", "0.096",
]  # fmt: skip

# TINY trained to its end (240 images) with one tick, one snapshot and one checkpoint, all at the end: the trained
# run the export, evaluation, classifier and landscape tests read (checkpoint-000000240.pt is its only checkpoint).
TINY_RUN = [*TINY, "--tick-kimg", "0.24", "--snapshot-kimg", "1", "--checkpoint-kimg", "1", "--kimg", "0.24"]


@pytest.fixture(scope="session")
def lmdb16(tmp_path_factory) -> Path:
    """48 synthetic shapes up to 16x16, 8 of them held out: the data of the TINY runs. Built once per session;
    tests only read it (those that damage data copy it first)."""
    return _build_shapes_lmdb(tmp_path_factory.mktemp("data") / "shapes16.lmdb", 48, max_res=16, holdout=8)


@pytest.fixture(scope="session")
def unlabelled16(tmp_path_factory) -> Path:
    """12 synthetic shapes up to 16x16, 4 held out: a small dataset without class labels (read only)."""
    return _build_shapes_lmdb(tmp_path_factory.mktemp("data") / "unlabelled16.lmdb", 12, max_res=16, holdout=4)


@pytest.fixture(scope="session")
def unlabelled32(tmp_path_factory) -> Path:
    """12 synthetic shapes up to 32x32, 4 held out: a small dataset without class labels (read only)."""
    return _build_shapes_lmdb(tmp_path_factory.mktemp("data") / "unlabelled32.lmdb", 12, max_res=32, holdout=4)


def final_checkpoint(out: Path, images: int | None = None) -> dict:
    """The newest run's last checkpoint under the root of runs `out`, or its checkpoint at `images` images shown."""
    runs = sorted(p for p in out.iterdir() if p.is_dir() and p.name[:5].isdigit())
    if images is not None:
        return load_checkpoint(runs[-1] / "checkpoints" / f"checkpoint-{images:09d}.pt")
    return load_checkpoint(list_checkpoints(runs[-1] / "checkpoints")[-1])


def assert_same_training_state(
    a: dict,
    b: dict,
    atol: float = 0.0,  # largest difference allowed in any value
    average: bool = True,  # also the generator's moving average
    optimizers: bool = False,  # also every optimiser state (Adam's moments and steps)
) -> None:
    """Two checkpoints at the same image count with the same weights (and what is asked for besides, up to `atol`)."""
    assert a["images_shown"] == b["images_shown"]
    for group in ("networks",):
        for name in a[group]:
            for key, value in a[group][name].items():
                torch.testing.assert_close(value, b[group][name][key], rtol=0, atol=atol, msg=f"{group}.{name}.{key}")
    if average:
        for key, value in a["generator_ema"].items():
            torch.testing.assert_close(value, b["generator_ema"][key], rtol=0, atol=atol, msg=f"generator_ema.{key}")
    if optimizers:
        for name in a["optimizers"]:
            for index, state in a["optimizers"][name]["state"].items():
                for key, value in state.items():
                    other = b["optimizers"][name]["state"][index][key]
                    torch.testing.assert_close(value, other, rtol=0, atol=atol, msg=f"optimizers.{name}.{index}.{key}")


def is_gray(images: torch.Tensor) -> bool:
    """Whether images (B, 3, H, W) have three exactly equal channels."""
    assert images.ndim == 4 and images.shape[1] == 3, f"expected (B, 3, H, W), got {tuple(images.shape)}"
    return torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, lmdb16) -> Path:
    """The run directory of TINY_RUN trained once on lmdb16 (its only checkpoint: checkpoint-000000240.pt), the
    only run under its parent. Shared by the tests that read a trained run; exports may write beside it."""
    runs = tmp_path_factory.mktemp("tiny-run") / "runs"
    assert run_train_main([*TINY_RUN, "--data", str(lmdb16), "--out", str(runs)]) == 0
    return runs / "00000-tiny-16"


def run_train_main(args: list[str]) -> int:
    """The training program (`triangle-train`, `launch/train.py`) in this process, with Accelerate's process-wide
    state reset first so that several runs can share one test process."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from progressive.cli.train import main

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    return main(args)


class StandInInception(nn.Module):
    """Random small convolutional network with NVIDIA's TorchScript interface (0..255 pixels in)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 24, 3, stride=2)
        self.head = nn.Linear(24, 7)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        x = img.to(torch.float32) / 127.5 - 1.0
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        if return_features:
            return features
        return torch.softmax(self.head(features), dim=1)

"""Shared test settings, helpers and fixtures.

One intra-op thread: tiny networks run fastest that way, and suites share 2 cores.

The tests sit in folders that mirror the package (tests/train/ for progressive/train/, tests/datasets_prep/ for
datasets_prep/, ...) and are imported with --import-mode=importlib (setup.cfg), so two folders may hold files of
the same name and no folder shadows the package it mirrors. Test modules import the helpers below as
`from conftest import ...`: pytest loads this file as `tests.conftest`, and it registers itself under the plain name
too, so there is one module, not two copies. Never `tests.*`: torch-fidelity installs a top-level package of that
name (docs/evaluation.md).
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


# A 16x16 tiny run of 240 images (4x4, the 8x8 fade and stable phase, the 16x16 fade and stable phase), one tick
# and one checkpoint, at the end: the trained run the export, evaluation, classifier and landscape tests read.
TINY_RUN = [
    "--preset", "tiny", "--res", "16", "--fade-images", "48", "--stable-images", "48", "--batch", "4",
    "--workers", "0", "--tick-kimg", "0.24", "--snapshot-kimg", "1", "--checkpoint-kimg", "1", "--kimg", "0.24",
]  # fmt: skip


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

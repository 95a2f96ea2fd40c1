"""What the export and evaluation commands share: announcing a loaded run, writing PNGs, reporting errors.

Reading real images is progressive/eval/sources.py's; opening a run is progressive/pretrained.py's (`open_trained`).

Every problem the user can fix becomes `BadInput`, reported by `run_main` as one `error: ...` line on stderr
with exit code 2. Outputs are written to a temporary file and renamed, so a failure never damages a file
that was already there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from datasets_prep.lmdb_format import DatasetFormatError
from datasets_prep.pixels import signed_to_pixels
from progressive.cli.checks import EXIT_BAD_INPUT, EXIT_FAILED, BadInput
from progressive.eval.report import GENERATORS
from progressive.io import write_atomically
from progressive.pretrained import TrainedRun, open_trained

if TYPE_CHECKING:
    from progressive.eval.classifier import TrainedClassifier


def run_main(body: Callable[[], int]) -> int:
    """Run a command's body; BadInput or a damaged dataset becomes one `error: ...` line on stderr and exit code 2."""
    try:
        return body()
    except (BadInput, DatasetFormatError) as error:  # the second: a damaged image or LMDB found while reading
        # Loaders may quote multi-line library messages; the first line names the problem.
        lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # a write that failed after the checks (a full disk); earlier outputs are intact
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


def load_run(text: str, device: torch.device) -> TrainedRun:
    """The trained run of checkpoint (or run directory) `text`, networks on `device`, frozen; announced in one line."""
    return open_trained(text, device, say=lambda line: print(line, flush=True))


def load_classifier(source: str, cache: str | None, device: torch.device) -> TrainedClassifier:
    """The domain classifier of the LMDB `source`, from the cache or trained now (minutes on a CPU for
    Fashion-MNIST), announced in one line; ClassifierUnavailable when the dataset cannot give one (the caller
    skips or refuses), BadInput (ClassifierCacheError) for a cache entry whose weights do not match their SHA-256."""
    from progressive.eval.classifier import load_or_train_classifier

    classifier = load_or_train_classifier(source, cache, device=device)
    print(f"classifier {classifier.path}: test accuracy {classifier.test_accuracy:.4f}", flush=True)
    return classifier


# ----------------------------------------------------------------------------- writing


def save_png(image: np.ndarray | torch.Tensor, path: Path, channels: int = 3) -> None:
    """An image (H, W, 3) uint8, or (3, H, W) float in [-1, 1], written atomically as PNG: RGB, or with channels=1
    (a grayscale run's images, whose three channels are equal) single-channel, mode L."""
    if torch.is_tensor(image):
        assert image.ndim == 3 and image.shape[0] == 3, f"expected an image (3, H, W), got {tuple(image.shape)}"
        image = signed_to_pixels(image.cpu()).permute(1, 2, 0).numpy()
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, f"bad image {image.shape}"
    if channels == 1:
        # Equal up to one 8-bit level: resampling or blending equal channels may round them apart by an ulp.
        spread = int((image.max(axis=2).astype(np.int16) - image.min(axis=2)).max(initial=0))
        assert spread <= 1, f"a grayscale image's channels differ by up to {spread} levels"
        image = image[:, :, 0]
    write_atomically(path, lambda temporary: Image.fromarray(image).save(temporary, format="PNG"))


def add_sample_flags(parser: argparse.ArgumentParser) -> None:
    """How triangle-evaluate and triangle-export sample draw their samples: --generator, --temperature (latents
    scaled before g) and --sample-langevin-steps, -step-size, -temperature (the energy-guided sampler,
    progressive/eval/sampling.py EnergyGuidance; checked by check_sample_langevin)."""
    parser.add_argument("--generator", choices=GENERATORS, default="ema", help="default: ema (averaged)")
    parser.add_argument(
        "--temperature",
        type=positive(float, "--temperature"),
        default=1.0,
        help="scale every latent by this (below 1: truncation toward the mean image; default 1)",
    )
    parser.add_argument(
        "--sample-langevin-steps",
        type=int,
        default=0,
        help="energy-guided samples: Langevin steps on each latent down E(g(z)) + |z|^2/2 (default: 0, plain g(z))",
    )
    parser.add_argument("--sample-langevin-step-size", type=float, default=0.01, help="(default: 0.01)")
    parser.add_argument(
        "--sample-langevin-temperature", type=float, default=1.0, help="of the steps' noise; 0: descent (default: 1)"
    )


def positive(kind: type, name: str) -> Callable[[str], int | float]:
    """An argparse type accepting only numbers > 0 of `kind`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as error:
            raise ValueError(f"{name} must be a number") from error
        if not value > 0:
            raise ValueError(f"{name} must be positive")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse

"""What the export and evaluation commands share: loading a run, reading images, writing files, reporting errors.

Every problem the user can fix becomes `BadInput`, reported by `run_main` as one `error: ...` line on stderr
with exit code 2. Outputs are written to a temporary file and renamed, so a failure never damages a file
that was already there.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from datasets_prep.images import SkipImage, load_image
from datasets_prep.lmdb_format import DatasetFormatError
from datasets_prep.pixels import image_array_to_signed, signed_to_pixels
from progressive.cli.checks import EXIT_BAD_INPUT, EXIT_FAILED, BadInput
from progressive.io import write_atomically
from progressive.pretrained import TrainedRun, load_trained
from progressive.train.checkpoint import CheckpointError, find_checkpoint
from progressive.train.schedule import blend_reals

if TYPE_CHECKING:
    from progressive.eval.classifier import TrainedClassifier

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def pick_device(name: str) -> torch.device:
    """ "auto": the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise BadInput(f"--device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device is available")
    return device


def resolve_checkpoint(text: str) -> Path:
    """A checkpoint file; a run directory (its newest checkpoint); or a root of runs (the newest run's newest)."""
    try:
        return find_checkpoint(text)
    except CheckpointError as error:
        raise BadInput(str(error)) from error


def load_run(text: str, device: torch.device) -> TrainedRun:
    """The trained run of checkpoint (or run directory) `text`, networks on `device`, in no-gradient use."""
    path = resolve_checkpoint(text)
    started = time.perf_counter()
    try:
        run = load_trained(path, device)
    except CheckpointError as error:
        raise BadInput(str(error)) from error
    except (KeyError, RuntimeError, TypeError, ValueError, json.JSONDecodeError) as error:
        # A checkpoint of this project whose contents do not fit its own configuration.
        raise BadInput(f"{path} cannot be loaded: {type(error).__name__}: {str(error).splitlines()[0]}") from error
    for net in (*run.models.networks().values(), run.generator_ema):
        net.requires_grad_(False)
    print(
        f"loaded {path}: {run.resolution}x{run.resolution} at {run.images_shown / 1000:.1f} kimg, on {device} "
        f"({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    return run


def run_directory(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (the parent of checkpoints/)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def choose_generator(run: TrainedRun, which: str) -> torch.nn.Module:
    """ "ema": the moving average (smoother samples); "trained": the generator paired with the inference model."""
    if which == "ema":
        return run.generator_ema
    if which == "trained":
        return run.models.generator
    raise BadInput(f"generator must be 'ema' or 'trained', got {which!r}")


def load_classifier(source: str, cache: str | None, device: torch.device) -> TrainedClassifier:
    """The domain classifier of the LMDB `source`, from the cache or trained now (minutes on a CPU for
    Fashion-MNIST), announced in one line; ClassifierUnavailable when the dataset cannot give one (the caller
    skips or refuses), BadInput for a cache entry whose weights do not match their recorded SHA-256."""
    from progressive.eval.classifier import ClassifierCacheError, load_or_train_classifier

    try:
        classifier = load_or_train_classifier(source, cache, device=device)
    except ClassifierCacheError as error:
        raise BadInput(str(error)) from error
    print(f"classifier {classifier.path}: test accuracy {classifier.test_accuracy:.4f}", flush=True)
    return classifier


# ----------------------------------------------------------------------------- reading images


def read_image(path: Path, resolution: int, channels: int = 3) -> torch.Tensor:
    """One image file as (3, resolution, resolution) in [-1, 1], prepared exactly as the dataset builder does
    (transparency composited on white, EXIF orientation, centre crop, Lanczos resize); with channels=1 (a grayscale
    run) converted to gray and repeated to three equal channels, so the networks see what they were trained on."""
    try:
        pixels = load_image(path, resolution)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, SkipImage) as error:
        raise BadInput(f"{path} is not a readable image: {error}") from error
    if channels == 1:
        # Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B), rounded to 8 bits as a gray PNG stores it.
        gray = np.asarray(Image.fromarray(pixels).convert("L"))
        pixels = np.repeat(gray[:, :, None], 3, axis=2)
    return image_array_to_signed(pixels)


# Luma weights of Pillow's "L" conversion (ITU-R 601-2), for images that arrive as tensors (a colour LMDB given to a
# grayscale run); they sum to 1, and a gray image's equal channels are kept as they are.
LUMA = (0.299, 0.587, 0.114)


def as_gray(image: torch.Tensor) -> torch.Tensor:
    """An image (3, R, R) in [-1, 1] with three equal channels: itself if they already are, else its luma."""
    assert image.ndim == 3 and image.shape[0] == 3, f"expected an image (3, R, R), got {tuple(image.shape)}"
    if torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]):
        return image
    weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device)
    return (weights[:, None, None] * image).sum(0, keepdim=True).expand(3, -1, -1)


def image_files(folder: str) -> list[Path]:
    """Image files directly in `folder`, sorted by name; BadInput when there is none."""
    path = Path(folder)
    if not path.is_dir():
        raise BadInput(f"image folder {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInput(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
    return files


@dataclass
class RealImages:
    """A source of real images at the run's stage: names, and batches as the networks see them."""

    names: list[str]  # one per image, for per-image reports
    description: str  # what the images are (for the report)
    fingerprint: str  # identifies the images' dataset (cache key of real statistics)
    split: str  # "train", "holdout" or "folder"
    load: Callable[[int], torch.Tensor]  # index -> (3, R, R) in [-1, 1] at the stage resolution
    alpha: float  # fade-in blend applied to every batch (as in training)

    def __len__(self) -> int:
        return len(self.names)

    def batches(self, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
        """All images in order, `batch_size` at a time, blended like the training reals, on `device`."""
        for start in range(0, len(self), batch_size):
            images = torch.stack([self.load(i) for i in range(start, min(start + batch_size, len(self)))])
            yield blend_reals(images, self.alpha).to(device)


def folder_images(folder: str, run: TrainedRun) -> RealImages:
    """The images of a folder, resized to the run's resolution."""
    files = image_files(folder)
    for file in files:  # every file is checked before any work starts
        read_image(file, 4)
    return RealImages(
        names=[f.name for f in files],
        description=f"folder {folder}",
        fingerprint=f"folder:{Path(folder).resolve()}",
        split="folder",
        load=lambda i: read_image(files[i], run.resolution, run.models.image_channels),
        alpha=run.stage.alpha,
    )


def dataset_images(run: TrainedRun, data: str | None, split: str, limit: int | None) -> RealImages:
    """The first `limit` images (all if None) of `split` of the LMDB `data`, else of the run's own data.

    A run trained on the built-in synthetic shapes has no stored split: its "holdout" images are shapes
    drawn with another seed (never shown in training), its "train" images the training shapes themselves.
    """
    from datasets_prep.reader import LMDBImageDataset

    if split not in ("train", "holdout"):
        raise BadInput(f"--split must be 'train' or 'holdout', got {split!r}")
    source = data or run.config.data
    if source is None:
        from progressive.data import SyntheticShapesDataset

        seed = run.config.seed + (1 if split == "holdout" else 0)
        count = limit if split == "holdout" and limit else run.config.synthetic_images
        dataset = SyntheticShapesDataset(count, run.resolution, seed=seed)
        description = f"synthetic shapes (seed {seed}{', unseen in training' if split == 'holdout' else ''})"
    else:
        try:
            dataset = LMDBImageDataset(source, run.resolution, split=split)
        except ValueError as error:
            raise BadInput(str(error)) from error
        description = f"{source} ({split})"
    count = len(dataset) if limit is None else min(limit, len(dataset))
    # A grayscale run sees gray images only: those of another (colour) dataset are converted as they are read.
    load = dataset.__getitem__ if run.models.image_channels == 3 else lambda i: as_gray(dataset[i])
    if count == 0:
        raise BadInput(f"{description} has no images")
    return RealImages(
        names=[f"{split}/{i}" for i in range(count)],
        description=description,
        fingerprint=dataset.fingerprint,
        split=split,
        load=load,
        alpha=run.stage.alpha,
    )


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

"""Real images as the networks of a trained run see them: from a dataset split, a folder or one file.

One implementation for every reader of held-out images (triangle-evaluate, evaluate_run, the exports, the energy
landscape, the benchmark): the run's resolution, its channel mode (a grayscale run sees gray images only) and its
fade-in blend, as in training. Problems the user can fix raise `BadInput` (progressive/errors.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from datasets_prep.images import SkipImage, load_image
from datasets_prep.pixels import image_array_to_signed
from progressive.errors import BadInput
from progressive.eval.statistics import image_channels
from progressive.models import TriangleModels
from progressive.nets.layers import blend_reals


class EvaluatedRun(Protocol):
    """What evaluation reads of a trained run. progressive.pretrained.TrainedRun is one (`open_trained` loads it);
    named here by its shape, because evaluation sits below the training code that checkpoints come from."""

    models: TriangleModels  # generator, energy, inference at the run's stage
    generator_ema: torch.nn.Module  # the averaged generator (sampling)
    config: Any  # the run's TrainConfig (progressive/train/config.py): data, seed, objective
    stage: Any  # its Stage (progressive/train/schedule.py): resolution and alpha
    images_shown: int  # when the checkpoint was written
    dataset_fingerprint: str  # of the training data
    path: Path  # the checkpoint file

    @property
    def resolution(self) -> int: ...

    @property
    def run_directory(self) -> Path: ...  # the run directory of the checkpoint, else the folder that holds it


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
    gray: bool = False  # gray by their source: a grayscale dataset, or converted to gray for a grayscale run
    labels: torch.Tensor | None = None  # (N,) int64 class of each image, when the dataset has labels

    def __len__(self) -> int:
        return len(self.names)

    def batches(self, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
        """All images in order, `batch_size` at a time, blended like the training reals, on `device`."""
        for start in range(0, len(self), batch_size):
            images = torch.stack([self.load(i) for i in range(start, min(start + batch_size, len(self)))])
            yield blend_reals(images, self.alpha).to(device)

    def data_channels(self) -> int:
        """The images' mode, what a metric's own-mode negatives follow: 1 when gray by their source or when every
        one of the first 64 has three equal channels (a colour LMDB of gray pictures), else 3."""
        return 1 if self.gray else image_channels(next(self.batches(64, torch.device("cpu"))))


def folder_images(folder: str, run: EvaluatedRun) -> RealImages:
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


def dataset_images(
    run: EvaluatedRun, data: str | None, split: str, limit: int | None, *, with_labels: bool = False
) -> RealImages:
    """The first `limit` images (all if None) of `split` of the LMDB `data`, else of the run's own data; with
    `with_labels`, their class labels too (`.labels`) when the LMDB has labels.

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
    if len(dataset) == 0:
        raise BadInput(f"{description} has no images")
    images = stage_images(dataset, limit, run.stage.alpha, run.models.image_channels, split, description)
    if with_labels and source is not None:
        from datasets_prep.reader import read_labels

        try:
            labels = read_labels(source, split)  # None for an LMDB without labels
        except ValueError as error:  # a damaged label record: one line
            raise BadInput(str(error)) from error
        if labels is not None:
            images.labels = torch.as_tensor(labels[: len(images)], dtype=torch.int64)
    return images


def stage_images(
    dataset,  # LMDBImageDataset or SyntheticShapesDataset, at the stage's resolution
    limit: int | None,  # its first `limit` images; None: all
    alpha: float,  # the stage's fade-in blend
    channels: int = 3,  # the networks' mode: 1 converts colour images to gray as they are read
    split: str = "holdout",
    description: str = "",
) -> RealImages:
    """The first images of a dataset as networks at a stage see them: what the trainer's grids and metrics and the
    evaluation commands all read."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    # A grayscale run sees gray images only: those of another (colour) dataset are converted as they are read.
    load = dataset.__getitem__ if channels == 3 else lambda i: as_gray(dataset[i])
    return RealImages(
        names=[f"{split}/{i}" for i in range(count)],
        description=description or split,
        fingerprint=dataset.fingerprint,
        split=split,
        load=load,
        alpha=alpha,
        gray=channels == 1 or dataset.channels == 1,
    )

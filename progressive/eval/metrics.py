"""The evaluation metrics of the three models, and their registry.

Each metric runs the networks in batches (`progressive.eval.sampling`) and reduces what they give with the
arithmetic of `progressive.eval.statistics`. The trainer and `evaluate_run` (`triangle-evaluate`) both call
them through one registry (`METRICS`, `compute_metric`); docs/evaluation.md explains each number and how it
maps to the paper.

Several processes can share one evaluation (the trainer's, under DDP): each runs the networks on its `Shard` of
the batches, and the per-batch results are gathered in batch order before they are reduced, so the figures are
those of one process computing every batch.

Images are float tensors (B, 3, R, R) in [-1, 1], the scale the networks see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from progressive.eval.sampling import (
    ONE_PROCESS,
    Shard,
    batch_sizes,
    batches,
    energies,
    generate_images,
    reconstruct,
)
from progressive.eval.statistics import (
    FeatureStatistics,
    PatchSampler,
    StatisticsAccumulator,
    between_class_share,
    blur_images,
    blur_sigma,
    check_images,
    class_means,
    classifier_metrics,
    concatenated_levels,
    constant_images,
    diversity_from_spreads,
    energy_separation,
    feature_statistics,
    frechet_distance,
    image_channels,
    inception_score,
    kernel_inception_distance,
    noise_images,
    paired_share,
    per_image_mse,
    pixel_moments,
    pyramid_levels,
    reconstruction_classifier_metrics,
    reconstruction_summary,
    shuffle_pixels,
    spread_from_moments,
    swd_from_descriptors,
    within_class_auroc,
)
from progressive.models import bare
from progressive.objective import prior_mmd


def reconstruction_metrics(
    inference: nn.Module,  # q(z|x) at the stage evaluated
    generator: nn.Module,  # the generator trained with it (not the moving average)
    real_batches: Iterable[torch.Tensor],  # held-out images, on the networks' device: every batch
    shard: Shard = ONE_PROCESS,  # which batches this process reconstructs
) -> dict[str, float]:
    """reconstruction_summary of g(mu(x)) over all images."""
    own = shard.own(real_batches)
    errors = shard.join([per_image_mse(images, reconstruct(inference, generator, images)).cpu() for images in own])
    if not errors:
        raise ValueError("reconstruction error needs at least one image")
    return reconstruction_summary(torch.cat(errors))


# A latent unit is active when its posterior mean varies across images by more than this (Burda et al. 2016).
ACTIVE_UNIT_VARIANCE = 0.01
# posterior/prior_mmd compares at most this many codes with as many prior draws (its cost grows with the square).
PRIOR_MMD_CODES = 2000


def posterior_metrics(
    inference: nn.Module,  # q(z|x) at the stage evaluated
    real_batches: Iterable[torch.Tensor],  # held-out images, on the network's device: every batch
    shard: Shard = ONE_PROCESS,  # which batches this process encodes
) -> dict[str, float]:
    """How far the codes of held-out images lie from the prior N(0, I) that samples are drawn from.

    The Fréchet distance between the Gaussian fit of the posterior means mu(x) and N(0, I), the norm of their
    mean, the active units, and the MMD^2 between the first PRIOR_MMD_CODES means and as many prior draws (seed 0;
    the kernels of the objective's weight_prior_mmd), which sees what a Gaussian fit cannot (codes crowded into a
    cone or a few clusters). A generator reconstructs from codes like these but samples from the prior: when the
    two are far apart, prior samples land where reconstruction never trained it ("holes").
    """
    means = shard.join([inference(images)[0].float().cpu() for images in shard.own(real_batches)])
    if not means:
        raise ValueError("posterior statistics need at least one image")
    mu = torch.cat(means).double()
    if mu.shape[0] < 2:
        raise ValueError("posterior statistics need at least two images")
    prior = FeatureStatistics(np.zeros(mu.shape[1]), np.eye(mu.shape[1]), count=mu.shape[0])
    variances = mu.var(dim=0)
    return {
        "posterior/frechet_prior": frechet_distance(feature_statistics(mu), prior),
        "posterior/mean_norm": float(mu.mean(dim=0).norm()),
        "posterior/active_units": int((variances > ACTIVE_UNIT_VARIANCE).sum()),
        "posterior/largest_variance": float(variances.max()),
        "posterior/prior_mmd": _prior_mmd(mu[:PRIOR_MMD_CODES].float()),
    }


def _prior_mmd(codes: torch.Tensor) -> float:
    draws = torch.randn(codes.shape, generator=torch.Generator().manual_seed(0))
    return float(prior_mmd(codes, draws))


PAIRED = ("shuffled", "blurred")  # negatives made from each held-out image: also scored against their own image


def energy_metrics(
    energy: nn.Module,  # the energy network at the stage evaluated
    energy_form: str,  # run.config.objective.energy_form
    real_batches: Iterable[torch.Tensor],  # held-out images, on the network's device: every batch
    generated_batches: Iterable[torch.Tensor],  # generated images, on the network's device: the shard's batches
    seed: int = 0,  # noise images, constants and pixel permutations
    channels: int = 3,  # the data's mode: 1 for a grayscale set (its `noise` is gray noise), 3 for colour
    shard: Shard = ONE_PROCESS,  # which batches this process scores (every process draws every batch's negatives)
    labels: torch.Tensor | None = None,  # (N,) the held-out images' classes in batch order, when the data has them
) -> dict[str, float]:
    """energy_separation of held-out reals against generated images and five kinds of negatives, each drawn once
    per held-out image: uniform noise (gray and colour), constant images (gray; colour too for colour data),
    pixel-shuffled and Gaussian-blurred held-out images. `noise` repeats the noise of the data's own mode. The
    shuffled and blurred copies are also held against their own image (`paired_*`, statistics.paired_share).
    With `labels`, also within each class (`within_class_*`), the share of the real images' energy variance
    that lies between the classes (`between_class_share`) and each class's mean energy, real and blurred
    (`mean_real_class_K`, `mean_blurred_class_K`): where an AUROC over all images is lost."""
    # The colour noise and the permutations draw from `generator` as they always have, so earlier evaluations
    # of colour data reproduce; the negatives added later draw from their own generator.
    generator = torch.Generator().manual_seed(seed)
    added = torch.Generator().manual_seed(seed + 1_000_003)
    scored: list[dict[str, torch.Tensor]] = []  # per batch of this process: set name -> energies
    for index, images in enumerate(real_batches):
        count, side = images.shape[0], images.shape[-1]
        batch = {
            "noise_gray": noise_images(count, side, added, channels=1),
            "noise_colour": noise_images(count, side, generator),
            "constant": constant_images(count, side, added, channels=1),
            "shuffled": shuffle_pixels(images, generator),
        }
        colour = constant_images(count, side, added, channels=3) if channels == 3 else None
        if shard.owns(index):
            batch = {"real": images, **batch, "blurred": blur_images(images, blur_sigma(side))}
            if colour is not None:
                batch["constant_colour"] = colour
            scored.append({name: energies(energy, x.to(images.device), energy_form) for name, x in batch.items()})
    scored = shard.join(scored)
    generated = shard.join([energies(energy, images, energy_form) for images in generated_batches])
    if not scored or not generated:
        raise ValueError("energy separation needs real and generated images")
    sets = {name: torch.cat([batch[name] for batch in scored]) for name in scored[0]}
    real = sets.pop("real")
    results = energy_separation(real, {"generated": torch.cat(generated), **sets})
    for name in PAIRED:  # each held-out image against its own shuffled and blurred copy
        results[f"energy/paired_{name}"] = paired_share(real, sets[name])
    if labels is not None:
        assert labels.shape == real.shape, f"{tuple(labels.shape)} labels for {len(real)} held-out images"
        results["energy/between_class_share"] = between_class_share(real, labels)
        for name in PAIRED:
            results[f"energy/within_class_{name}"] = within_class_auroc(real, sets[name], labels)
        for name, values in (("real", real), ("blurred", sets["blurred"])):  # the level of each class
            for label, mean in class_means(values, labels).items():
                results[f"energy/mean_{name}_class_{label}"] = mean
    own = "noise_gray" if channels == 1 else "noise_colour"
    results["energy/auroc_noise"] = results[f"energy/auroc_{own}"]
    results["energy/mean_noise"] = results[f"energy/mean_{own}"]
    return results


# ----------------------------------------------------------------------------- the registry


@dataclass
class MetricInputs:
    """What the metrics read: the models at the stage evaluated, the images they compare, and the counts.

    The trainer (`evaluate_metric`) and `triangle-evaluate` both fill one and call `compute_metric`.
    """

    models: Any  # TriangleModels at the stage evaluated (set_stage done), on one device
    reals: Callable[[], Iterable[torch.Tensor]]  # every batch of held-out images on the device, as the networks see
    #                                              them (each process reads them all; the shard picks its own)
    generated: Callable[[int], Iterable[torch.Tensor]]  # count -> the shard's batches of samples from seeded latents
    resolution: int  # image side R
    samples: int  # generated images for swd, energy, diversity and classifier
    energy_form: str = "identity"  # run.config.objective.energy_form
    seed: int = 0  # noise images, pixel permutations, patch positions, KID subsets
    channels: int = 3  # the data's mode: 1 for a grayscale set (gray noise is its own-mode noise), 3 for colour
    labels: torch.Tensor | None = None  # (N,) classes of the held-out images in order, when the data has labels
    swd_patches: int = 128  # SWD descriptors per image and level
    inception: Any = None  # progressive.eval.inception.InceptionNetwork; needed by fid, kid and is
    fid_reals: Callable[[], Iterable[torch.Tensor]] | None = None  # reals for fid and kid; None: `reals`
    fid_real_statistics: Callable[[], FeatureStatistics] | None = None  # e.g. from a cache; None: computed
    fid_samples: int | None = None  # generated images for fid and kid; None: `samples`
    kid_subsets: int = 100  # KID's random subsets
    kid_subset_size: int = 1000  # features per KID subset
    is_samples: int | None = None  # generated images for is; None: `samples`
    is_splits: int = 10  # Inception Score splits
    classifier: Any = None  # progressive.eval.classifier.TrainedClassifier; needed by classifier
    classifier_train: Callable[[], Iterable[torch.Tensor]] | None = None  # training images: the Frechet floor
    batch_size: int = 64  # images per batch of `generated` (the shard splits batches, so it needs their sizes)
    shard: Shard = ONE_PROCESS  # the batches this process computes (`generated` yields only those)

    def real_features_source(self) -> Iterable[torch.Tensor]:
        return (self.fid_reals or self.reals)()


def _recon(m: MetricInputs) -> dict[str, float]:
    return reconstruction_metrics(bare(m.models.inference), bare(m.models.generator), m.reals(), m.shard)


def _posterior(m: MetricInputs) -> dict[str, float]:
    return posterior_metrics(bare(m.models.inference), m.reals(), m.shard)


def _swd(m: MetricInputs) -> dict[str, float]:
    """Multi-scale SWD (statistics.multiscale_swd) of the shard's batches, with every batch's patch positions
    drawn on every process: both sets take them from one seed, so a set compared with itself gives 0."""
    levels = pyramid_levels(m.resolution)

    def descriptors(sized_batches: Iterable[tuple[int, Callable[[], torch.Tensor]]]) -> list[torch.Tensor]:
        sampler = PatchSampler(m.resolution, levels, m.swd_patches, 7, m.seed)
        return concatenated_levels(m.shard.join(sampler.chosen_descriptors(sized_batches, m.shard.owns)))

    real = descriptors((len(images), lambda images=images: images) for images in m.reals())  # all read anyway
    fake = descriptors(_sized(m, m.samples))
    return swd_from_descriptors(real, fake, m.resolution, seed=m.seed + 1)


def _sized(m: MetricInputs, count: int) -> Iterator[tuple[int, Callable[[], torch.Tensor]]]:
    """(size, draw) of every batch of `count` samples, in order; call `draw` for the shard's batches only (in
    order): it draws the next of them."""
    own = iter(m.generated(count))
    return ((size, lambda: next(own)) for size in batch_sizes(count, m.batch_size))


def _energy(m: MetricInputs) -> dict[str, float]:
    energy = bare(m.models.energy)
    generated = m.generated(m.samples)
    return energy_metrics(energy, m.energy_form, m.reals(), generated, m.seed, m.channels, m.shard, m.labels)


def _diversity(m: MetricInputs) -> dict[str, float]:
    real = spread_from_moments(m.shard.join([pixel_moments(images) for images in m.shard.own(m.reals())]))
    generated = spread_from_moments(m.shard.join([pixel_moments(images) for images in m.generated(m.samples)]))
    return diversity_from_spreads(real, generated)


def _joined_features(m: MetricInputs, network: Callable, image_batches: Iterable[torch.Tensor]) -> list:
    """network(batch) of each of the shard's `image_batches` (on the CPU), every batch's in batch order."""
    return m.shard.join([network(images) for images in image_batches])


def _inception_features(m: MetricInputs, image_batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Inception pool features (float32, CPU) of every batch, in batch order, from the shard's `image_batches`."""
    return _joined_features(m, lambda x: m.inception.features(x).float().cpu(), image_batches)


def _statistics(m: MetricInputs, image_batches: Iterable[torch.Tensor]) -> FeatureStatistics:
    accumulator = StatisticsAccumulator()
    for features in _inception_features(m, image_batches):
        accumulator.update(features)
    return accumulator.result()


def _fid(m: MetricInputs) -> dict[str, float]:
    reals = m.shard.own(m.real_features_source())
    real = m.fid_real_statistics() if m.fid_real_statistics else _statistics(m, reals)
    fake = _statistics(m, m.generated(m.fid_samples or m.samples))
    return {"fid": frechet_distance(real, fake)}


def _kid(m: MetricInputs) -> dict[str, float]:
    real = torch.cat(_inception_features(m, m.shard.own(m.real_features_source())))
    fake = torch.cat(_inception_features(m, m.generated(m.fid_samples or m.samples)))
    mean, std = kernel_inception_distance(real, fake, m.kid_subsets, m.kid_subset_size, seed=m.seed)
    return {"kid/mean": mean, "kid/std": std}


def _inception_score(m: MetricInputs) -> dict[str, float]:
    logits_of = m.inception.classifier()  # InceptionUnavailable before any sample is drawn
    samples = m.generated(m.is_samples or m.samples)
    logits = torch.cat(_joined_features(m, lambda x: logits_of(x).float().cpu(), samples))
    mean, std = inception_score(logits, splits=min(m.is_splits, logits.shape[0]))
    return {"is/mean": mean, "is/std": std}


def _classifier_outputs(m: MetricInputs, image_batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of the classifier over every batch, in batch order, from the shard's `image_batches`."""
    parts = _joined_features(m, lambda x: m.classifier.outputs([x]), image_batches)
    return torch.cat([logits for logits, _ in parts]), torch.cat([features for _, features in parts])


def _classifier(m: MetricInputs) -> dict[str, float]:
    sample_logits, sample_features = _classifier_outputs(m, m.generated(m.samples))
    test_logits, test_features = _classifier_outputs(m, m.shard.own(m.reals()))
    train_features = _classifier_outputs(m, m.shard.own(m.classifier_train()))[1] if m.classifier_train else None
    return classifier_metrics(sample_logits, sample_features, test_logits, test_features, train_features)


def _recon_classifier(m: MetricInputs) -> dict[str, float]:
    """The classifier's verdict on g(mu(x)) of the held-out images: what the generator draws at the codes it was
    trained to decode, so that a gap between samples and reconstructions is the prior's, not the decoder's."""
    inference, generator = bare(m.models.inference), bare(m.models.generator)
    test_features = _classifier_outputs(m, m.shard.own(m.reals()))[1]
    reconstructions = (reconstruct(inference, generator, images) for images in m.shard.own(m.reals()))
    logits, features = _classifier_outputs(m, reconstructions)
    return reconstruction_classifier_metrics(logits, features, test_features, m.labels)


@dataclass(frozen=True)
class Metric:
    compute: Callable[[MetricInputs], dict[str, float]]  # {"group/key": value}
    needs_inception: bool = False
    needs_classifier: bool = False


# Every metric, by the name --metrics takes (docs/evaluation.md explains each).
METRICS: dict[str, Metric] = {
    "recon": Metric(_recon),
    "posterior": Metric(_posterior),
    "swd": Metric(_swd),
    "energy": Metric(_energy),
    "diversity": Metric(_diversity),
    "fid": Metric(_fid, needs_inception=True),
    "kid": Metric(_kid, needs_inception=True),
    "is": Metric(_inception_score, needs_inception=True),
    "classifier": Metric(_classifier, needs_classifier=True),
    "recon_classifier": Metric(_recon_classifier, needs_classifier=True),
}
METRIC_NAMES = tuple(METRICS)


def count_label(count: int) -> str:
    """How a metric's name states how many images it saw: 256 -> "256", 10000 -> "10k" (stylegan2-ada's fid50k)."""
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


def with_protocol(key: str, count: int) -> str:
    """A figure's key with the count of images it was measured on in its group's name: "fid" -> "fid256",
    "recon/mse" -> "recon256/mse". The trainer logs these, so that a 256-image FID is never read as a 10k one."""
    group, _, rest = key.partition("/")
    return f"{group}{count_label(count)}" + (f"/{rest}" if rest else "")


NEEDS_INCEPTION = tuple(name for name, metric in METRICS.items() if metric.needs_inception)
NEEDS_CLASSIFIER = tuple(name for name, metric in METRICS.items() if metric.needs_classifier)


@torch.no_grad()
def compute_metric(name: str, inputs: MetricInputs) -> dict[str, float]:
    """One metric as {"group/key": value}; ValueError for an unknown name or a missing Inception network or
    classifier."""
    if name not in METRICS:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {name!r}")
    if METRICS[name].needs_inception and inputs.inception is None:
        raise ValueError(f"metric {name!r} needs an Inception network (progressive.eval.inception.load_inception)")
    if METRICS[name].needs_classifier and inputs.classifier is None:
        raise ValueError(
            f"metric {name!r} needs a classifier (progressive.eval.classifier.load_or_train_classifier on a "
            "labelled dataset)"
        )
    return METRICS[name].compute(inputs)


def evaluate_metric(
    name: str,  # one of METRIC_NAMES
    models,  # TriangleModels at the stage to evaluate (set_stage done), on one device
    generator: nn.Module,  # generator for samples: the moving average (TrainedRun.generator_ema / Trainer.ema)
    real_images: torch.Tensor,  # (N, 3, R, R) in [-1, 1] as the networks see them (blend_reals applied), N >= 2
    *,
    energy_form: str = "identity",  # run.config.objective.energy_form
    samples: int | None = None,  # generated images for swd/energy/fid/is; default N
    batch_size: int = 64,  # images per forward
    seed: int = 0,  # latents, noise images, patch positions
    inception=None,  # progressive.eval.inception.InceptionNetwork; needed by "fid", "kid" and "is"
    inception_splits: int = 10,  # splits of the Inception Score
    classifier=None,  # progressive.eval.classifier.TrainedClassifier; needed by "classifier" (no floor here)
    shard: Shard = ONE_PROCESS,  # this process's share when several evaluate together (every one calls this)
) -> dict[str, float]:
    """One metric of the current models on a tensor of real images (what the trainer evaluates), through
    `compute_metric`. Runs under no_grad and leaves the networks' modes and stages as they are. With a shard of
    several processes, each runs the networks on its batches; all return the figures of the whole evaluation.
    """
    check_images(real_images, "real_images")
    # Unwrapped (DistributedDataParallel) networks: an evaluation forward must not arm a gradient reduction.
    generator = bare(generator)
    device = next(generator.parameters()).device
    inputs = MetricInputs(
        models=models,
        reals=lambda: (images.to(device) for images in batches(real_images, batch_size)),
        generated=lambda count: generate_images(generator, count, models.latent_dim, batch_size, seed, device, shard),
        resolution=real_images.shape[-1],
        samples=samples or real_images.shape[0],
        energy_form=energy_form,
        seed=seed,
        channels=image_channels(real_images),  # the trainer holds no metadata; the images say it
        inception=inception,
        is_splits=inception_splits,
        classifier=classifier,
        batch_size=batch_size,
        shard=shard,
    )
    return compute_metric(name, inputs)

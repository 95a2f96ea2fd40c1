"""Map a trained energy model's landscape: `triangle-energy-landscape CHECKPOINT` (launch/energy_landscape.py).

Starts from generated (or held-out) images, descends the energy to local minima, merges duplicates,
measures the barrier between every two minima with a nudged elastic band, groups minima into basins
and writes, into --out (default: RUN/landscape-IMAGES/):

    landscape.json           minima (energy, basin, members, class), the barrier matrix, the merge tree, the
                             settings; with class labels: the minima's names and the basins' purity
    minima.png               each minimum as an image, lowest energy first (latent space: g of the minimum)
    disconnectivity.png      the disconnectivity graph with each minimum's thumbnail (Figure 11; needs matplotlib:
                             pip install 'divergence-triangle[plots]')

When the dataset has class labels (Fashion-MNIST, CIFAR-10), a classifier trained on them (cached) names each
minimum, and --purity-images training images descend to the minima to measure how pure in class the basins are.

docs/landscape.md explains the method and every knob.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from datasets_prep.pixels import signed_to_pixels
from progressive.cli.checks import BadInput, check_writable_folder
from progressive.cli.common import (
    load_classifier,
    load_run,
    positive,
    run_main,
    save_png,
)
from progressive.eval.classifier import ClassifierUnavailable
from progressive.eval.landscape import (
    LandscapeSettings,
    barrier_matrix,
    basin_purity,
    class_histograms,
    clustering_view,
    descend_in_batches,
    kmeans_groups,
    merge_minima,
    merge_tree,
    naming_summary,
    nearest_minima,
    plot_disconnectivity,
    with_gaussian_prior,
)
from progressive.eval.sampling import seeded_latents
from progressive.eval.sources import dataset_images
from progressive.eval.statistics import CONFIDENT, confident_share
from progressive.nets.layers import as_rgb
from progressive.objective import energy_from_output
from progressive.pretrained import TrainedRun, pick_device

PLOTS_EXTRA = "pip install 'divergence-triangle[plots]'"
# The purity images' Langevin noise (batch k: seed + PURITY_SEED + k) is drawn apart from the starts' (seed + k).
PURITY_SEED = 1_000_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triangle-energy-landscape", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="checkpoint file, run directory, or root of runs (the newest checkpoint)")
    parser.add_argument("--out", help="output folder (default: RUN/landscape-IMAGES/)")
    parser.add_argument("--count", type=positive(int, "--count"), default=32, help="starting points (default: 32)")
    parser.add_argument(
        "--start", choices=("samples", "data"), default="samples", help="generated images, or held-out images"
    )
    parser.add_argument(
        "--data", help="dataset LMDB for --start data, the class labels and the purity images (default: the run's own)"
    )
    parser.add_argument("--space", choices=("image", "latent"), default="image", help="descend E(x), or E(g(z))")
    parser.add_argument(
        "--latent-prior", action="store_true",
        help="with --space latent: descend E(g(z)) + |z|^2/2, the energy of p(z) exp(-E(g(z))) (docs/landscape.md)",
    )  # fmt: skip
    parser.add_argument(
        "--max-minima", type=positive(int, "--max-minima"), default=16, help="lowest minima kept (paths: N(N-1)/2)"
    )
    parser.add_argument(
        "--purity-images", type=int, default=1000,
        help="labelled training images descended to measure the basins' purity; 0: none (default: 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--real-images", type=int, default=2000,
        help="held-out images the classifier names, for the confident share of real images (default: 2000)",
    )  # fmt: skip
    parser.add_argument("--classifier-cache", help="folder of trained classifiers (default: the evaluation cache)")
    parser.add_argument(
        "--batch", type=positive(int, "--batch"), default=256, help="points descended at a time (default: 256)"
    )
    parser.add_argument("--seed", type=int, default=0, help="latents of the starts and Langevin noise (default: 0)")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 ...")
    defaults = LandscapeSettings()
    for field in dataclasses.fields(LandscapeSettings):
        if field.name != "bounds":
            kind = int if isinstance(getattr(defaults, field.name), int) else float
            parser.add_argument(
                "--" + field.name.replace("_", "-"),
                dest=field.name,
                type=kind,
                default=getattr(defaults, field.name),
                help=f"default {getattr(defaults, field.name)}",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: map_landscape(args))


@dataclasses.dataclass
class Labels:
    """The class labels of the dataset the landscape is read against."""

    source: str  # the LMDB
    train: np.ndarray  # int64 label of each training image, by index
    class_names: list[str]  # one per class


def training_labels(run: TrainedRun, data: str | None) -> tuple[Labels | None, str]:
    """(the training split's labels of --data or the run's LMDB, ""), or (None, why there are none)."""
    from datasets_prep.lmdb_format import read_metadata
    from datasets_prep.reader import read_labels

    source = data or run.config.data
    if source is None:
        return None, "the run's synthetic shapes have no class labels; pass --data LABELLED.lmdb"
    train = read_labels(source, "train")  # None exactly when the metadata has no class_names
    if train is None:
        return None, f"{source} has no class labels"
    return Labels(source, train, list(read_metadata(source)["class_names"])), ""


def name_minima(classifier, pictures: torch.Tensor, run: TrainedRun, args, device: torch.device) -> dict:
    """The classifier's verdict on the minima's images beside its verdict on --real-images held-out images (at
    the run's resolution, as the minima): naming_summary plus confident_real and the per-minimum names."""
    from progressive.eval.classifier import name_classes

    named = name_classes(classifier, pictures)
    summary = naming_summary(named, CONFIDENT)
    real = dataset_images(run, args.data, "holdout", args.real_images)
    logits, _ = classifier.outputs(real.batches(args.batch, device))
    return {
        **summary,
        "confident_real": confident_share(logits, CONFIDENT),
        "real_images": len(real),
        "classifier": classifier.describe(),
        "named": named,
    }


def basins_of_training_images(
    energy,  # the energy the minima were found on
    to_space,  # a batch of images -> descent starts: the images themselves (image space) or mu(x) (latent)
    minima: torch.Tensor,  # (M, ...) the minima in the graph
    basins: list[int],  # each minimum's basin
    labels: Labels,
    settings: LandscapeSettings,
    run: TrainedRun,
    args,
    device: torch.device,
) -> dict:
    """--purity-images training images descended with the minima's settings, each joined to the basin of its
    nearest minimum (root-mean-square distance); the basins' purity and class histograms."""
    real = dataset_images(run, args.data, "train", args.purity_images)
    truth = labels.train[: len(real)]
    nearest, distances, gradients, starts, ends = [], [], [], [], []
    for k, images in enumerate(real.batches(args.batch, device)):
        seed = args.seed + PURITY_SEED + k  # one batch: descend_in_batches is descend itself
        start = to_space(images)
        end, _, gradient = descend_in_batches(energy, start, settings, len(images), seed=seed)
        index, distance = nearest_minima(end, minima)
        starts.append(clustering_view(start))
        ends.append(clustering_view(end))
        nearest.append(index)
        distances.append(distance)
        gradients.append(gradient)
    minimum_of = torch.cat(nearest).tolist()
    distance = torch.cat(distances)
    basin_of = [basins[m] for m in minimum_of]
    classes = len(labels.class_names)
    labelled = truth.tolist()
    # References with no energy in them: as many k-means clusters as basins (and as minima) of the same images,
    # before the descent (pixels, or mu(x) in latent space) and after it.
    clustered = {
        f"kmeans_{when}{suffix}": basin_purity(kmeans_groups(torch.cat(points), count, seed=args.seed), labelled)
        for when, points in (("starts", starts), ("ends", ends))
        for suffix, count in (("", len(set(basins))), ("_minima", len(minima)))
    }
    histograms = class_histograms(basin_of, labelled, classes)
    per_basin = []
    for basin in sorted(set(basins)):
        counts = histograms.get(basin, [0] * classes)
        size = sum(counts)
        per_basin.append({
            "basin": basin,  # named by its lowest minimum
            "minima": [i for i, b in enumerate(basins) if b == basin],
            "images": size,
            "majority": labels.class_names[int(np.argmax(counts))] if size else None,
            "purity": max(counts) / size if size else None,
            "counts": dict(zip(labels.class_names, counts, strict=True)),
        })  # fmt: skip
    return {
        "images": len(real),
        "split": "train",
        "assignment": "nearest minimum in the graph (root-mean-square distance after descent)",
        "purity": basin_purity(basin_of, labelled),
        "basins": len(set(basins)),
        "purity_minima": basin_purity(minimum_of, labelled),  # the finest partition: one group per minimum
        "one_basin": float(np.bincount(truth, minlength=classes).max() / len(truth)),  # purity's floor
        **clustered,
        "within_merge_distance": float((distance < settings.merge_distance).double().mean()),
        "median_distance": float(distance.median()),
        "median_gradient": float(torch.cat(gradients).median()),  # at the descents' ends: 0 where they converged
        "per_basin": per_basin,
        "images_per_minimum": [minimum_of.count(i) for i in range(len(minima))],
    }


def caption(name: str, confidence: float) -> str:
    """A thumbnail's caption: the class, wrapped at its first space or slash to fit its column, and the confidence."""
    return name.replace(" ", "\n", 1).replace("/", "/\n", 1) + f"\n{confidence:.2f}"


def summary_line(naming: dict | None, purity: dict | None, skipped: dict[str, str]) -> str:
    """The three figures of Figure 11 in one line: named share vs real, classes among minima, basin purity."""
    parts = []
    if naming:
        parts.append(
            f"named with confidence >= {naming['threshold']}: {naming['named_share']:.2f} of minima "
            f"({naming['confident']}/{naming['minima']}; real test images {naming['confident_real']:.2f}), "
            f"classes among minima {naming['classes']} ({naming['classes_confident']} confidently)"
        )
    else:
        parts.append(f"minima not named ({skipped.get('naming', 'no classifier')})")
    if purity:
        parts.append(
            f"basin purity {purity['purity']:.2f} over {purity['basins']} basins ({purity['images']} training "
            f"images; per minimum {purity['purity_minima']:.2f}, one basin {purity['one_basin']:.2f}, "
            f"k-means of the starts {purity['kmeans_starts']:.2f})"
        )
    else:
        parts.append(f"no basin purity ({skipped.get('purity', '--purity-images 0')})")
    return "figure 11: " + "; ".join(parts)


def map_landscape(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(LandscapeSettings) if f.name != "bounds"}
    if values["descent_steps"] < 0 or values["path_steps"] < 0 or values["path_points"] < 3:
        raise BadInput("--descent-steps and --path-steps must be >= 0 and --path-points >= 3")
    if args.purity_images < 0 or args.real_images < 1:
        raise BadInput("--purity-images must be >= 0 and --real-images >= 1")
    settings = LandscapeSettings(**values, bounds=(-1.0, 1.0) if args.space == "image" else None)
    if args.out:
        check_writable_folder(Path(args.out), "--out", args.out)
    if args.space == "latent" and args.start == "data":
        raise BadInput("--space latent starts from latents; use --start samples")
    if args.latent_prior and args.space != "latent":
        raise BadInput("--latent-prior is a term of the latent space's energy; add --space latent")
    device = pick_device(args.device)
    run = load_run(args.checkpoint, device)
    out = Path(args.out) if args.out else run.run_directory / f"landscape-{run.images_shown:09d}"
    form = run.config.objective.energy_form
    generator = run.generator_ema
    channels = run.models.image_channels
    latents = seeded_latents(range(args.seed, args.seed + args.count), run.models.latent_dim).to(device)
    labels, no_labels = training_labels(run, args.data)
    seconds: dict[str, float] = {}

    def image_energy(x: torch.Tensor) -> torch.Tensor:
        # A grayscale run's images are one channel repeated: its image space is that channel, so the descent and
        # the bands stay among gray images (E itself takes three channels).
        return energy_from_output(run.models.energy(as_rgb(x)), form)

    def as_images(points: torch.Tensor) -> torch.Tensor:
        """Points of the descent space as (B, 3, R, R) images: g(z) in latent space."""
        with torch.no_grad():
            return generator(points).float() if args.space == "latent" else as_rgb(points).float()

    def to_space(images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, R, R) as starting points: mu(x) of the inference model in latent space."""
        if args.space == "latent":
            with torch.no_grad():
                return run.models.inference(images)[0].float()
        return images[:, :channels]

    if args.space == "latent":
        energy, starts = (lambda z: image_energy(generator(z))), latents
        energy = with_gaussian_prior(energy) if args.latent_prior else energy
    elif args.start == "samples":
        with torch.no_grad():
            energy, starts = image_energy, to_space(generator(latents).float())
    else:
        real = dataset_images(run, args.data, "holdout", args.count)
        energy, starts = image_energy, to_space(torch.cat(list(real.batches(args.batch, device))))

    print(f"descending {len(starts)} starts ({args.space} space, {settings.descent_steps} steps) ...", flush=True)
    started = time.perf_counter()
    ends, end_energies, end_gradients = descend_in_batches(energy, starts, settings, args.batch, seed=args.seed)
    kept, owner = merge_minima(ends, end_energies, settings.merge_distance)
    distinct = len(kept)
    kept = kept[: args.max_minima]
    minima, energies = ends[kept], end_energies[kept]
    seconds["descent"] = time.perf_counter() - started
    pairs = len(kept) * (len(kept) - 1) // 2
    print(f"{distinct} distinct minima, the {len(kept)} lowest kept; barriers for {pairs} pairs ...", flush=True)
    started = time.perf_counter()
    barriers = barrier_matrix(energy, minima, settings)
    merges, basins = merge_tree(energies, barriers, settings.barrier_threshold)
    members = [sum(1 for o in owner if o == i) for i in range(len(kept))]
    seconds["barriers"] = time.perf_counter() - started
    pictures = as_images(minima)

    skipped: dict[str, str] = {}
    naming = purity = None
    if labels is None:
        skipped["naming"] = skipped["purity"] = no_labels
        print(f"note: minima not named, no basin purity: {no_labels}", file=sys.stderr)
    else:
        started = time.perf_counter()
        try:
            classifier = load_classifier(labels.source, args.classifier_cache, device)
        except ClassifierUnavailable as error:  # labels, but no holdout split or no 32x32 images to train it on
            skipped["naming"] = str(error)
            print(f"note: minima not named: {error}", file=sys.stderr)
        else:
            naming = name_minima(classifier, pictures, run, args, device)
        seconds["naming"] = time.perf_counter() - started
        if args.purity_images == 0:
            skipped["purity"] = "--purity-images 0"
        else:
            print(f"descending {args.purity_images} training images to measure the basins' purity ...", flush=True)
            started = time.perf_counter()
            purity = basins_of_training_images(energy, to_space, minima, basins, labels, settings, run, args, device)
            seconds["purity"] = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    named = naming.pop("named") if naming else None  # per minimum, below
    per_minimum = purity.pop("images_per_minimum") if purity else None
    report = {
        "checkpoint": str(run.path),
        "images_shown": run.images_shown,
        "space": args.space,
        "latent_prior": args.latent_prior,  # the energy is E(g(z)) + |z|^2/2
        "start": args.start,
        "starts": len(starts),
        "settings": dataclasses.asdict(settings),
        "distinct_minima": distinct,  # before --max-minima kept the lowest
        "median_gradient": float(end_gradients.median()),  # over every start's end: 0 where the descents converged
        "minima": [
            {
                "index": i,
                "energy": float(energies[i]),
                "basin": basins[i],
                "members": members[i],
                **({"class": named[i][0], "confidence": named[i][1]} if named else {}),
                **({"training_images": per_minimum[i]} if per_minimum else {}),  # descended into it
            }
            for i in range(len(kept))
        ],
        "barriers": barriers.tolist(),
        "merges": [dataclasses.asdict(m) for m in merges],
        "basins": len(set(basins)),
        "naming": naming,
        "purity": purity,
        "skipped": skipped,
        "seconds": seconds,
    }
    (out / "landscape.json").write_text(json.dumps(report, indent=2) + "\n")
    grid = make_grid(pictures.cpu(), nrow=min(8, len(pictures)), padding=1, pad_value=-1.0)
    save_png(grid, out / "minima.png", channels=channels)
    if importlib.util.find_spec("matplotlib") is None:
        print(f"note: disconnectivity.png needs matplotlib: {PLOTS_EXTRA}", file=sys.stderr)
    else:
        thumbnails = signed_to_pixels(pictures.cpu()).permute(0, 2, 3, 1).numpy()
        thumbnails = thumbnails[..., 0] if channels == 1 else thumbnails
        captions = [caption(*n) for n in named] if named else None
        path = str(out / "disconnectivity.png")
        plot_disconnectivity(energies.tolist(), merges, members, path, list(thumbnails), captions, basins)
    print(f"{len(kept)} minima in {len(set(basins))} basins (threshold {settings.barrier_threshold}); wrote {out}")
    print(summary_line(naming, purity, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())

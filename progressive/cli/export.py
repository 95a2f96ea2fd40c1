"""Export what a checkpoint's three models do: `triangle-export {sample,reconstruct,energy,pretrained} CHECKPOINT ...`.

  sample       N images (one PNG each, or one grid with --grid) from fixed seeds: image i uses seed S + i.
               A grayscale run's PNGs (samples, grids, reconstructions) are single-channel (mode L).
  reconstruct  encode images with mu(x), decode with the generator, write side-by-side grids (image | reconstruction).
  energy       score images with the energy model (low = likely); per-image lines or CSV, and a summary of
               real vs generated vs noise images with the AUROC of each separation.
  pretrained   the trained networks as config.json + model.safetensors (Hugging Face layout), which
               `progressive.hub.PretrainedTriangle.from_pretrained(DIR)` loads without the checkpoint format.

Images come from a folder (--images DIR) or a split of the dataset LMDB (--data, default the run's own; --split).
Exit codes: 0 done, 2 bad input (nothing written, earlier files kept).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from progressive.cli.checks import BadInput, check_output_suffix, check_writable_folder
from progressive.cli.common import (
    add_sample_flags,
    load_run,
    positive,
    run_main,
    save_png,
    write_atomically,
)
from progressive.eval.report import choose_generator, sample_guidance
from progressive.eval.sampling import (
    EXPORT_BATCH,
    check_sample_langevin,
    encode_and_reconstruct,
    energies,
    generate_from_seeds,
    generate_images,
)
from progressive.eval.sources import RealImages, dataset_images, folder_images
from progressive.eval.statistics import energy_separation, noise_images, per_image_mse, reconstruction_summary
from progressive.pretrained import pick_device


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint file, run directory, or root of runs (the newest checkpoint)")
    parser.add_argument(
        "--batch", type=positive(int, "--batch"), default=EXPORT_BATCH, help=f"images per forward ({EXPORT_BATCH})"
    )
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1 ...")


def _image_source(parser: argparse.ArgumentParser, default_count: int | None) -> None:
    parser.add_argument("--images", help="folder of images (resized to the checkpoint's resolution)")
    parser.add_argument("--data", help="dataset LMDB (default: the run's own data)")
    parser.add_argument("--split", default="holdout", help="train or holdout (default: holdout)")
    parser.add_argument(
        "--count",
        type=positive(int, "--count"),
        default=default_count,
        help=f"images at most (default: {default_count})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triangle-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="images from fixed seeds")
    _common(sample)
    sample.add_argument("--out", required=True, help="folder of PNGs, or a .png file with --grid")
    sample.add_argument("--count", type=positive(int, "--count"), default=16, help="images (default: 16)")
    sample.add_argument("--seed", type=int, default=0, help="image i uses latent seed SEED + i (default: 0)")
    sample.add_argument(
        "--seeds", type=seed_list, help="explicit seeds instead of --count/--seed, e.g. 0-63,100,200-205"
    )
    sample.add_argument("--grid", action="store_true", help="one grid PNG instead of one file per image")
    sample.add_argument("--columns", type=positive(int, "--columns"), help="grid columns (default: about square)")
    add_sample_flags(sample)

    recon = commands.add_parser("reconstruct", help="image | g(mu(x)) grids")
    _common(recon)
    _image_source(recon, default_count=32)
    recon.add_argument("--out", required=True, help="folder for reconstructions-NNN.png")
    recon.add_argument("--pairs-per-grid", type=positive(int, "--pairs-per-grid"), default=16, help="default: 16")
    recon.add_argument("--save-latents", help="also write each image's mu(x) and log-variance to this .npz file")

    energy = commands.add_parser("energy", help="energies of images, and real vs generated vs noise")
    _common(energy)
    _image_source(energy, default_count=None)
    energy.add_argument("--csv", help="write name,energy per image to this CSV instead of printing them")
    energy.add_argument("--samples", type=int, help="generated and noise images for the summary (default: as real)")
    energy.add_argument("--seed", type=int, default=0, help="latents and noise of the summary (default: 0)")

    pretrained = commands.add_parser("pretrained", help="config.json + model.safetensors for from_pretrained")
    pretrained.add_argument("checkpoint", help="checkpoint file, run directory, or root of runs (the newest)")
    pretrained.add_argument(
        "--out", required=True, help="folder (created): config.json and model.safetensors, a README.md if none"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "sample": export_samples,
        "reconstruct": export_reconstructions,
        "energy": export_energies,
        "pretrained": export_pretrained,
    }
    return run_main(lambda: commands[args.command](args))


def _real_images(args: argparse.Namespace, run) -> RealImages:
    if args.images is not None and args.data is not None:
        raise BadInput("--images and --data are alternatives; give one")
    if args.images is not None:
        images = folder_images(args.images, run)
        return images if args.count is None else _first(images, args.count)
    return dataset_images(run, args.data, args.split, args.count)


def _first(images: RealImages, count: int) -> RealImages:
    images.names = images.names[:count]
    return images


def _grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    return make_grid(images.cpu(), nrow=columns, padding=1, pad_value=-1.0)


def export_samples(args: argparse.Namespace) -> int:
    langevin = (args.sample_langevin_steps, args.sample_langevin_step_size, args.sample_langevin_temperature)
    check_sample_langevin(*langevin)
    out = check_output_suffix(args.out, (".png",), "--out") if args.grid else Path(args.out)
    if not args.grid and out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder (or --grid with a .png file)")
    if not args.grid:
        check_writable_folder(out, "--out", args.out)
    seeds = args.seeds or list(range(args.seed, args.seed + args.count))
    device = pick_device(args.device)
    run = load_run(args.checkpoint, device)
    generator = choose_generator(run, args.generator)
    guidance = sample_guidance(run, *langevin)
    parts = generate_from_seeds(
        generator, seeds, run.models.latent_dim, args.batch, device, args.temperature, guidance=guidance
    )
    described = f"seeds {seeds[0]}..{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else "seeds as given"
    temperature = f", temperature {args.temperature:g}" if args.temperature != 1 else ""
    if guidance is not None:
        temperature += f", {guidance.steps} Langevin steps on E(g(z)) + |z|^2/2"
    channels = run.models.image_channels
    if args.grid:
        images = torch.cat([part.cpu() for part in parts])
        save_png(_grid(images, args.columns or math.ceil(math.sqrt(len(seeds)))), out, channels)
        print(f"wrote {out}: {len(seeds)} samples, {described}{temperature}")
        return 0
    for seed, image in zip(seeds, (image for part in parts for image in part), strict=True):
        save_png(image, out / f"sample-seed{seed:06d}.png", channels)
    print(f"wrote {len(seeds)} samples to {out} ({described}{temperature})")
    return 0


def seed_list(text: str) -> list[int]:
    """'0-3,10,20-21' -> [0, 1, 2, 3, 10, 20, 21] (argparse type; ranges inclusive, as in stylegan2-ada)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            seeds += list(range(int(first), int(last or first) + 1))
    except ValueError as error:
        raise ValueError(f"--seeds {text!r} is not a list of N or N-M") from error
    if not seeds:
        raise ValueError(f"--seeds {text!r} names no seed")
    return seeds


def export_reconstructions(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder")
    check_writable_folder(out, "--out", args.out)
    latents_path = check_output_suffix(args.save_latents, (".npz",), "--save-latents") if args.save_latents else None
    device = pick_device(args.device)
    run = load_run(args.checkpoint, device)
    real = _real_images(args, run)
    channels = run.models.image_channels  # 1: the grids are written as single-channel PNGs
    errors, pending, grid_index, mus, logvars = [], [], 0, [], []
    for images in real.batches(args.batch, device):
        mu, logvar, reconstructions = encode_and_reconstruct(run.models.inference, run.models.generator, images)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
        errors.append(per_image_mse(images, reconstructions).cpu())
        pending.extend(torch.stack([images.cpu(), reconstructions.cpu()], dim=1))
        while len(pending) >= args.pairs_per_grid:
            _save_pairs(pending[: args.pairs_per_grid], out / f"reconstructions-{grid_index:03d}.png", channels)
            pending, grid_index = pending[args.pairs_per_grid :], grid_index + 1
    if pending:
        _save_pairs(pending, out / f"reconstructions-{grid_index:03d}.png", channels)
        grid_index += 1
    summary = reconstruction_summary(torch.cat(errors))
    print(f"wrote {grid_index} grid(s) to {out}: {len(real)} images of {real.description}")
    if latents_path is not None:  # like stylegan2-ada's projected_w.npz: one row per image, in `names` order
        arrays = {"names": np.array(real.names), "mu": torch.cat(mus).numpy(), "logvar": torch.cat(logvars).numpy()}
        write_atomically(latents_path, lambda temporary: np.savez(temporary, **arrays))
        print(f"wrote {latents_path}: mu and log-variance of {len(real)} images ({run.models.latent_dim} dims)")
    print(f"mse {summary['recon/mse']:.6f} ([-1, 1] scale), {summary['recon/mse_01']:.6f} ([0, 1]), ", end="")
    print(f"psnr {summary['recon/psnr']:.2f} dB")
    return 0


def _save_pairs(pairs: list[torch.Tensor], path: Path, channels: int) -> None:
    # Each pair (2, 3, R, R) becomes two neighbouring cells: four pairs per row.
    images = torch.stack(pairs).flatten(0, 1)
    save_png(_grid(images, columns=2 * min(4, len(pairs))), path, channels)


def export_energies(args: argparse.Namespace) -> int:
    csv_path = check_output_suffix(args.csv, (".csv",), "--csv") if args.csv else None
    if args.samples is not None and args.samples < 1:
        raise BadInput(f"--samples must be positive, got {args.samples}")
    device = pick_device(args.device)
    run = load_run(args.checkpoint, device)
    real = _real_images(args, run)
    form = run.config.objective.energy_form
    real_energy = torch.cat([energies(run.models.energy, images, form) for images in real.batches(args.batch, device)])
    count = args.samples or len(real)
    generated = generate_images(run.generator_ema, count, run.models.latent_dim, args.batch, args.seed, device)
    generated_energy = torch.cat([energies(run.models.energy, images, form) for images in generated])
    noise_generator = torch.Generator().manual_seed(args.seed)
    # Noise in the run's own mode (gray for a grayscale run), as triangle-evaluate's energy/auroc_noise: colour noise
    # differs from every image a grayscale run has seen by its colour alone. A colour run draws what it always drew.
    channels = run.models.image_channels
    noise_energy = torch.cat(
        [
            energies(
                run.models.energy, noise_images(len(part), run.resolution, noise_generator, channels).to(device), form
            )
            for part in torch.arange(count).split(args.batch)
        ]
    )

    rows = [(name, float(value)) for name, value in zip(real.names, real_energy, strict=True)]
    if csv_path is not None:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["image", "energy"])
        writer.writerows((name, f"{value:.6g}") for name, value in rows)
        write_atomically(csv_path, lambda temporary: temporary.write_text(text.getvalue()))
        print(f"wrote {csv_path}: energies of {len(rows)} images of {real.description}")
    else:
        for name, value in rows:
            print(f"{name}\t{value:.6g}")
    print(f"\n{'set':<10} {'count':>6} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}   (energy form {form})")
    for name, values in (("real", real_energy), ("generated", generated_energy), ("noise", noise_energy)):
        values = values.double()
        spread = float(values.std()) if len(values) > 1 else 0.0
        print(
            f"{name:<10} {len(values):6d} {float(values.mean()):10.4g} {spread:10.4g} "
            f"{float(values.min()):10.4g} {float(values.max()):10.4g}"
        )
    separation = energy_separation(real_energy, {"generated": generated_energy, "noise": noise_energy})
    print(
        f"AUROC real < generated {separation['energy/auroc_generated']:.4f}, "
        f"real < noise {separation['energy/auroc_noise']:.4f}"
    )
    return 0


# The files save_pretrained writes that the export replaces, weights first: a crash between the two renames leaves
# new weights beside the old configuration of the same preset, never a configuration without its weights.
PRETRAINED_FILES = ("model.safetensors", "config.json")


def export_pretrained(args: argparse.Namespace) -> int:
    from progressive.hub import PretrainedTriangle

    out = Path(args.out).absolute()
    check_writable_folder(out, "--out", args.out)
    model = PretrainedTriangle.from_trained(load_run(args.checkpoint, torch.device("cpu")))
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pretrained-", dir=out))  # same file system: renames are atomic
    try:
        model.save_pretrained(staging)
        for name in PRETRAINED_FILES:
            (staging / name).replace(out / name)
        if not (out / "README.md").exists():  # a model card already there (a Hub repository's) is the user's
            (staging / "README.md").replace(out / "README.md")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stage = f"{model.resolution}x{model.resolution} (alpha {model.alpha:g})"
    print(f"wrote {out}: {model.preset} at {stage}, {model.images_shown / 1000:.1f} kimg; "
          f"load with PretrainedTriangle.from_pretrained({str(out)!r})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Map a trained energy model's landscape: `triangle-energy-landscape CHECKPOINT` (launch/energy_landscape.py).

Starts from generated (or held-out) images, descends the energy to local minima, merges duplicates,
measures the barrier between every two minima with a nudged elastic band, groups minima into basins
and writes, into --out (default: RUN/landscape-IMAGES/):

    landscape.json           minima (energy, basin, members), the barrier matrix, the merge tree, the settings
    minima.png               each minimum as an image, lowest energy first (latent space: g of the minimum)
    disconnectivity.png      the disconnectivity graph (needs matplotlib: pip install 'divergence-triangle[plots]')

docs/landscape.md explains the method and every knob.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid

from progressive.cli.checks import BadInput, check_writable_folder
from progressive.cli.common import dataset_images, load_run, pick_device, positive, run_directory, run_main, save_png
from progressive.eval.landscape import (
    LandscapeSettings,
    barrier_matrix,
    descend,
    energy_and_gradient,
    merge_minima,
    merge_tree,
    plot_disconnectivity,
)
from progressive.eval.metrics import seeded_latents
from progressive.objective import energy_from_output

PLOTS_EXTRA = "pip install 'divergence-triangle[plots]'"


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
    parser.add_argument("--data", help="dataset LMDB for --start data (default: the run's own)")
    parser.add_argument("--space", choices=("image", "latent"), default="image", help="descend E(x), or E(g(z))")
    parser.add_argument(
        "--max-minima", type=positive(int, "--max-minima"), default=16, help="lowest minima kept (paths: N(N-1)/2)"
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


def map_landscape(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(LandscapeSettings) if f.name != "bounds"}
    if values["descent_steps"] < 0 or values["path_steps"] < 0 or values["path_points"] < 3:
        raise BadInput("--descent-steps and --path-steps must be >= 0 and --path-points >= 3")
    settings = LandscapeSettings(**values, bounds=(-1.0, 1.0) if args.space == "image" else None)
    if args.out:
        check_writable_folder(Path(args.out), "--out", args.out)
    device = pick_device(args.device)
    run = load_run(args.checkpoint, device)
    out = Path(args.out) if args.out else run_directory(run.path) / f"landscape-{run.images_shown:09d}"
    form = run.config.objective.energy_form
    generator = run.generator_ema
    latents = seeded_latents(range(args.seed, args.seed + args.count), run.models.latent_dim).to(device)

    def image_energy(x: torch.Tensor) -> torch.Tensor:
        return energy_from_output(run.models.energy(x), form)

    if args.space == "latent":
        if args.start == "data":
            raise BadInput("--space latent starts from latents; use --start samples")
        energy, starts = (lambda z: image_energy(generator(z))), latents
    elif args.start == "samples":
        with torch.no_grad():
            energy, starts = image_energy, generator(latents).float()
    else:
        real = dataset_images(run, args.data, "holdout", args.count)
        energy, starts = image_energy, torch.cat(list(real.batches(args.count, device)))

    print(f"descending {len(starts)} starts ({args.space} space, {settings.descent_steps} steps) ...", flush=True)
    ends = descend(energy, starts, settings, seed=args.seed)
    end_energies, _ = energy_and_gradient(energy, ends)
    kept, owner = merge_minima(ends, end_energies, settings.merge_distance)
    kept = kept[: args.max_minima]
    minima, energies = ends[kept], end_energies[kept]
    print(f"{len(kept)} distinct minima; barriers for {len(kept) * (len(kept) - 1) // 2} pairs ...", flush=True)
    barriers = barrier_matrix(energy, minima, settings)
    merges, basins = merge_tree(energies, barriers, settings.barrier_threshold)
    members = [sum(1 for o in owner if o == i) for i in range(len(kept))]

    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(run.path),
        "images_shown": run.images_shown,
        "space": args.space,
        "start": args.start,
        "starts": len(starts),
        "settings": dataclasses.asdict(settings),
        "minima": [
            {"index": i, "energy": float(energies[i]), "basin": basins[i], "members": members[i]}
            for i in range(len(kept))
        ],
        "barriers": barriers.tolist(),
        "merges": [dataclasses.asdict(m) for m in merges],
        "basins": len(set(basins)),
    }
    (out / "landscape.json").write_text(json.dumps(report, indent=2) + "\n")
    with torch.no_grad():
        pictures = generator(minima).float() if args.space == "latent" else minima.float()
    save_png(make_grid(pictures.cpu(), nrow=min(8, len(pictures)), padding=1, pad_value=-1.0), out / "minima.png")
    if importlib.util.find_spec("matplotlib") is None:
        print(f"note: disconnectivity.png needs matplotlib: {PLOTS_EXTRA}", file=sys.stderr)
    else:
        plot_disconnectivity(energies.tolist(), merges, members, str(out / "disconnectivity.png"))
    print(f"{len(kept)} minima in {len(set(basins))} basins (threshold {settings.barrier_threshold}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU demo of the divergence triangle at a fixed 32x32 resolution (the `cifar10` reference networks).

Trains for a few minutes on procedurally rendered shapes (no download) and writes a sample grid and
a reconstruction grid under runs/NNNNN-demo-cifar10/.

    python launch/demo.py [--minutes 3] [--batch 16] [--preset cifar10] [--out runs]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torchvision.utils import save_image

from progressive.presets import build_models
from progressive.synthetic import shapes_tensor
from progressive.triangle import (
    TriangleConfig,
    apply_learning_rates,
    build_optimizers,
    learning_rates,
    stats_to_dict,
    triangle_step,
)


def next_run_dir(root: Path, name: str) -> Path:
    """root/NNNNN-name with NNNNN one above the highest number already there."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-", 1)[0]) for p in root.iterdir() if p.name.split("-", 1)[0].isdigit()]
    run_dir = root / f"{max(numbers, default=-1) + 1:05d}-{name}"
    run_dir.mkdir()
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    parser.add_argument("--batch", type=int, default=16, help="real images per iteration")
    parser.add_argument("--preset", default="cifar10", help="fixed-resolution preset to train")
    parser.add_argument("--images", type=int, default=1024, help="size of the synthetic training set")
    parser.add_argument("--seed", type=int, default=0, help="global seed")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="root of the run directories")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    models = build_models(args.preset)
    config = TriangleConfig()
    optimizers = build_optimizers(models, config)
    data = shapes_tensor(args.images, models.resolution, seed=args.seed)
    fixed_z = torch.randn(64, models.latent_dim, generator=torch.Generator().manual_seed(args.seed))
    run_dir = next_run_dir(args.out, f"demo-{args.preset}")
    (run_dir / "config.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "objective": asdict(config)}, indent=2)
    )

    images_shown, iteration, start = 0, 0, time.time()
    while time.time() - start < args.minutes * 60:
        apply_learning_rates(optimizers, learning_rates(config, images_shown))
        batch = data[torch.randint(len(data), (args.batch,))]
        stats = triangle_step(models, optimizers, batch, config=config, check_range=iteration == 0)
        images_shown += args.batch
        iteration += 1
        if iteration % 10 == 0:
            values = stats_to_dict(stats)
            print(
                f"it {iteration:5d}  kimg {images_shown / 1000:7.2f}  recon {values['recon']:8.2f}  "
                f"E(real) {values['energy_real']:+.3f}  E(fake) {values['energy_fake']:+.3f}  "
                f"{time.time() - start:6.0f}s",
                flush=True,
            )

    with torch.no_grad():  # networks stay in training mode, as during the iteration (batch statistics)
        save_image(models.generator(fixed_z), run_dir / "samples.png", nrow=8, normalize=True, value_range=(-1, 1))
        real = data[:32]
        mu, _ = models.inference(real)
        pairs = torch.stack([real, models.generator(mu)], dim=1).flatten(0, 1)
        save_image(pairs, run_dir / "reconstructions.png", nrow=8, normalize=True, value_range=(-1, 1))
    print(f"{iteration} iterations, {images_shown} images; wrote {run_dir}/samples.png and reconstructions.png")


if __name__ == "__main__":
    main()

